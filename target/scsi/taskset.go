package scsi

import (
	"context"
	"log/slog"
	"sync"
)

// DeviceServer is what a TaskManager needs of a SCSI target device: it
// executes commands and applies the state changes (unit attentions,
// reservation release, mode defaults) of the task management functions
// that reset something. *Target implements it; transport tests supply a
// fake.
type DeviceServer interface {
	// Execute runs one command; ctx is cancelled when the task is aborted.
	// It must not keep cmd.DataOut after it returns.
	Execute(ctx context.Context, cmd *Command) Result
	// Reset applies the side effects of fn (see Target.Reset) once the
	// affected tasks have stopped.
	Reset(n *Nexus, fn TMF, lun uint64) error
	// HasLUN reports whether lun is mapped.
	HasLUN(lun uint64) bool
	// NexusLoss forgets what the device holds for an I_T nexus that ended.
	NexusLoss(n *Nexus)
	// DescriptorSense reports whether the logical unit at lun asks for
	// descriptor-format sense data (control mode page D_SENSE).
	DescriptorSense(lun uint64) bool
}

// taskState is a Task's place in its life cycle; it changes under the
// task set's lock.
type taskState uint8

const (
	taskWaiting    taskState = iota // added: waiting for its turn and/or its data
	taskRunning                     // started: executing
	taskCompleting                  // its status is being sent: no longer abortable
	taskLeft                        // status sent: out of the task set
	taskAborted                     // aborted by a task management function
)

// Task is one command in a task set, from the moment a transport receives
// it until its status is sent or it is aborted. The transport fills in
// the exported fields before TaskManager.Add and then moves the task along
// with Deliver, Ready, Execute, Complete and Release.
type Task struct {
	// Nexus is the I_T nexus the command arrived on.
	Nexus *Nexus
	// LUN is the decoded logical unit number (DecodeLUN).
	LUN uint64
	// Attr is the task attribute (SAM-5 8.6).
	Attr TaskAttr
	// Start runs a task that Ready held back by the task attribute rules,
	// once they let it go. It is called on a new goroutine.
	Start func()
	// Aborted is called once, outside the task set's lock, when a task
	// management function (or the end of the nexus) aborts the task,
	// after its context is cancelled. running tells whether the task had
	// started: a running task still returns from Execute and calls
	// Complete (which then reports false); a task that had not started
	// is the transport's to Release. Either way the transport sends no
	// response for it (TAS = 0).
	Aborted func(running bool)

	ctx    context.Context
	cancel context.CancelFunc
	set    *taskSet
	seq    uint64 // delivery order, 0 until Deliver
	state  taskState
	gated  bool
	done   chan struct{}
	once   sync.Once
}

// Context returns the task's context, cancelled when it is aborted or
// released.
func (t *Task) Context() context.Context { return t.ctx }

// Waiting reports whether the task has neither started nor been aborted:
// it may still take data from the initiator.
func (t *Task) Waiting() bool {
	t.set.mu.Lock()
	defer t.set.mu.Unlock()
	return t.state == taskWaiting
}

// Gated reports whether the task has all it needs to run but the task
// attribute rules hold it back.
func (t *Task) Gated() bool {
	t.set.mu.Lock()
	defer t.set.mu.Unlock()
	return t.gated && t.state == taskWaiting
}

// taskSet is the task set of one logical unit as one target reaches it:
// every task the transports added for that LUN, in delivery order.
type taskSet struct {
	mu    sync.Mutex
	tasks map[*Task]struct{} // added and neither left nor aborted
	// seq numbers delivered tasks; live holds delivered tasks that are
	// still in the set (what the attribute rules look at); orderedLive
	// counts the ORDERED ones among them; gated holds tasks ready to run
	// but held back.
	seq         uint64
	live        map[*Task]struct{}
	orderedLive int
	gated       []*Task
}

// TaskManager is the task manager of one SCSI target device (SAM-5 4.6):
// it keeps a task set per LUN, applies the SIMPLE / ORDERED / HEAD OF
// QUEUE rules to decide when a task may run, and carries out the task
// management functions on those sets, whichever transport session the
// tasks came from. It does not know transport tags or command numbers.
type TaskManager struct {
	ds   DeviceServer
	sets sync.Map // uint64 LUN -> *taskSet
}

// NewTaskManager returns a task manager that runs its tasks on ds.
func NewTaskManager(ds DeviceServer) *TaskManager { return &TaskManager{ds: ds} }

func (m *TaskManager) setFor(lun uint64) *taskSet {
	if v, ok := m.sets.Load(lun); ok {
		return v.(*taskSet)
	}
	v, _ := m.sets.LoadOrStore(lun, &taskSet{tasks: map[*Task]struct{}{}, live: map[*Task]struct{}{}})
	return v.(*taskSet)
}

// Add enters t into the task set of t.LUN, where task management
// functions find it, with a context derived from parent. It does not
// order it yet: see Deliver.
func (m *TaskManager) Add(parent context.Context, t *Task) {
	t.ctx, t.cancel = context.WithCancel(parent)
	t.done = make(chan struct{})
	t.set = m.setFor(t.LUN)
	t.set.mu.Lock()
	t.set.tasks[t] = struct{}{}
	t.set.mu.Unlock()
}

// Deliver gives t its place in the order the attribute rules follow; the
// transport calls it in command order (for iSCSI, CmdSN order). It
// reports false if t was aborted before.
func (m *TaskManager) Deliver(t *Task) bool {
	s := t.set
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.state != taskWaiting {
		return false
	}
	s.seq++
	t.seq = s.seq
	s.live[t] = struct{}{}
	if t.Attr == TaskOrdered {
		s.orderedLive++
	}
	return true
}

// Ready tells the task manager that t has all its data. It reports true
// if t may run now (the caller then runs it); otherwise t is held back
// and Start will be called once it may run, or t is not delivered yet,
// aborted or already started.
func (m *TaskManager) Ready(t *Task) bool {
	s := t.set
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.state != taskWaiting || t.seq == 0 {
		return false
	}
	if !s.mayStart(t) {
		if !t.gated {
			t.gated = true
			s.gated = append(s.gated, t)
		}
		return false
	}
	t.state = taskRunning
	return true
}

// mayStart applies the task attribute rules (SAM-5 8.6) to a task whose
// data is complete: HEAD OF QUEUE runs at once, ORDERED waits for every
// task delivered before it, and SIMPLE (and ACA, untagged) waits only for
// earlier ORDERED tasks. Called with s.mu held.
func (s *taskSet) mayStart(t *Task) bool {
	switch t.Attr {
	case TaskHeadOfQueue:
		return true
	case TaskOrdered:
		for o := range s.live {
			if o.seq < t.seq {
				return false
			}
		}
		return true
	default:
		if s.orderedLive == 0 {
			return true
		}
		for o := range s.live {
			if o.Attr == TaskOrdered && o.seq < t.seq {
				return false
			}
		}
		return true
	}
}

// leave takes t out of the live set and starts held-back tasks that may
// now run. Called with s.mu held.
func (s *taskSet) leave(t *Task) {
	delete(s.tasks, t)
	if _, ok := s.live[t]; !ok {
		return
	}
	delete(s.live, t)
	if t.Attr == TaskOrdered {
		s.orderedLive--
	}
	if len(s.gated) == 0 {
		return
	}
	kept := s.gated[:0]
	for _, g := range s.gated {
		switch {
		case g.state != taskWaiting:
		case s.mayStart(g):
			g.state = taskRunning
			go g.Start()
		default:
			kept = append(kept, g)
		}
	}
	clear(s.gated[len(kept):])
	s.gated = kept
}

// Execute runs a started task's command on the device server. cmd's
// Nexus, LUN and Attr are taken from t. When the command asks for task
// sets to be aborted (PERSISTENT RESERVE OUT PREEMPT AND ABORT), Execute
// aborts them, sparing t, and returns once their tasks have stopped or t
// itself was aborted.
func (m *TaskManager) Execute(t *Task, cmd *Command) Result {
	cmd.Nexus, cmd.LUN, cmd.Attr = t.Nexus, t.LUN, t.Attr
	res := m.ds.Execute(t.ctx, cmd)
	if len(res.AbortTaskSets) > 0 {
		m.abortTaskSets(t, res.AbortTaskSets)
	}
	return res
}

// abortTaskSets aborts the tasks of the task sets a command asked to abort
// (PREEMPT AND ABORT), sparing the command itself, and waits for them to
// leave. It is kept out of Execute, which every command runs on a fresh
// goroutine: its locals would otherwise enlarge Execute's frame enough to
// make that goroutine grow its stack on every write.
//
//go:noinline
func (m *TaskManager) abortTaskSets(t *Task, abort []TaskSet) {
	byTM := map[*TaskManager][]TaskSet{}
	for _, ts := range abort {
		tm := ts.tm
		if tm == nil {
			tm = m
		}
		byTM[tm] = append(byTM[tm], ts)
	}
	var waits Aborts
	for tm, sets := range byTM {
		waits = append(waits, tm.Abort(func(o *Task) bool {
			if o == t {
				return false
			}
			for _, ts := range sets {
				if o.Nexus == ts.Nexus && o.LUN == ts.LUN {
					return true
				}
			}
			return false
		})...)
	}
	waits.Wait(t.ctx.Done())
}

// ReleaseDataIn hands a Result.DataIn buffer back to the device server
// once the transport has sent it, if the device server recycles them.
func (m *TaskManager) ReleaseDataIn(b []byte) {
	if r, ok := m.ds.(interface{ ReleaseDataIn([]byte) }); ok && len(b) > 0 {
		r.ReleaseDataIn(b)
	}
}

// Complete finishes a task that ran: unless it was aborted meanwhile (then
// it reports false and does nothing), send is called to queue its status,
// and only then does the task leave the task set, so that a task ordered
// behind it answers after it. send may be nil.
func (m *TaskManager) Complete(t *Task, send func()) bool {
	s := t.set
	s.mu.Lock()
	if t.state == taskAborted {
		s.mu.Unlock()
		return false
	}
	t.state = taskCompleting
	s.mu.Unlock()
	if send != nil {
		send()
	}
	s.mu.Lock()
	t.state = taskLeft
	s.leave(t)
	s.mu.Unlock()
	return true
}

// Release tells the task manager the transport is done with t (its
// buffers returned): whoever waits for t's abort stops waiting. It is
// called exactly once per added task, after Complete or Aborted.
func (m *TaskManager) Release(t *Task) {
	t.once.Do(func() {
		t.cancel()
		s := t.set
		s.mu.Lock()
		if t.state == taskWaiting || t.state == taskRunning {
			// Released without Complete or abort (the session ended
			// before delivery, or a panic): take it out of the set.
			t.state = taskLeft
			s.leave(t)
		}
		s.mu.Unlock()
		close(t.done)
	})
}

// Aborts are the tasks an abort hit, each as a channel that closes when
// the task has stopped (Release).
type Aborts []<-chan struct{}

// Wait returns true once every aborted task has stopped, or false as soon
// as stop closes.
func (a Aborts) Wait(stop <-chan struct{}) bool {
	for _, w := range a {
		select {
		case <-w:
		case <-stop:
			return false
		}
	}
	return true
}

// Abort aborts every task of every task set that match selects: each is
// cancelled, leaves its task set (letting tasks held behind it go) and
// gets no response. Tasks whose status is already on its way are left
// alone. The tasks of one set are all marked aborted before any of them
// leaves it, so that a held-back task about to be aborted too is never
// started on the way.
func (m *TaskManager) Abort(match func(*Task) bool) Aborts {
	var hit []*Task
	var running []bool
	m.sets.Range(func(_, v any) bool {
		s := v.(*taskSet)
		s.mu.Lock()
		first := len(hit)
		for t := range s.tasks {
			if match(t) && (t.state == taskWaiting || t.state == taskRunning) {
				hit, running = append(hit, t), append(running, t.state == taskRunning)
				t.state = taskAborted
			}
		}
		for _, t := range hit[first:] {
			s.leave(t)
		}
		s.mu.Unlock()
		return true
	})
	waits := make(Aborts, 0, len(hit))
	for i, t := range hit {
		waits = append(waits, t.stop(running[i]))
	}
	return waits
}

// abort aborts one task; nil if it was no longer abortable.
func (m *TaskManager) abort(t *Task) <-chan struct{} {
	s := t.set
	s.mu.Lock()
	if t.state != taskWaiting && t.state != taskRunning {
		s.mu.Unlock()
		return nil
	}
	running := t.state == taskRunning
	t.state = taskAborted
	s.leave(t)
	s.mu.Unlock()
	return t.stop(running)
}

// stop cancels a task just marked aborted and tells its transport, outside
// the task set's lock; the returned channel closes on Release.
func (t *Task) stop(running bool) <-chan struct{} {
	t.cancel()
	if t.Aborted != nil {
		t.Aborted(running)
	}
	return t.done
}

// EndNexus aborts every task of n, waits until they have stopped and then
// tells the device server that the nexus is gone (NexusLoss): a transport
// calls it when a session ends.
func (m *TaskManager) EndNexus(n *Nexus) {
	m.Abort(func(t *Task) bool { return t.Nexus == n }).Wait(nil)
	m.ds.NexusLoss(n)
}

// HasLUN reports whether lun is mapped.
func (m *TaskManager) HasLUN(lun uint64) bool { return m.ds.HasLUN(lun) }

// TMFResponse is the outcome of a task management function (SAM-5 7.x
// service responses).
type TMFResponse uint8

// Task management function responses.
const (
	// TMFComplete: FUNCTION COMPLETE.
	TMFComplete TMFResponse = iota
	// TMFNoTask: the task to abort does not exist (or already completed).
	TMFNoTask
	// TMFNoLUN: INCORRECT LOGICAL UNIT NUMBER.
	TMFNoLUN
	// TMFNotSupported: FUNCTION NOT SUPPORTED.
	TMFNotSupported
	// TMFRejected: FUNCTION REJECTED (the reset itself failed).
	TMFRejected
)

// TMFRequest is one task management function as a transport received it.
type TMFRequest struct {
	// Function is the task management function.
	Function TMF
	// Nexus is the I_T nexus it arrived on.
	Nexus *Nexus
	// LUN is the decoded LUN it names (ignored by target resets).
	LUN uint64
	// Task is the task ABORT TASK names, nil if the transport knows none
	// by that tag.
	Task *Task
}

// TMFResult is a task management function in progress: the affected
// tasks are already aborted; Wait waits for them to stop and applies the
// function's side effects.
type TMFResult struct {
	resp    TMFResponse
	pending bool
	waits   Aborts
	after   func() TMFResponse
}

// Pending reports whether the response has to wait for aborted tasks;
// when false, Wait returns at once.
func (r *TMFResult) Pending() bool { return r.pending }

// Wait returns the function's response once every task it aborted has
// stopped and its side effects are applied, or false if stop closes first.
func (r *TMFResult) Wait(stop <-chan struct{}) (TMFResponse, bool) {
	if !r.waits.Wait(stop) {
		return 0, false
	}
	if r.after != nil {
		return r.after(), true
	}
	return r.resp, true
}

// Manage carries out a task management function (SAM-5 7): ABORT TASK
// aborts req.Task, ABORT TASK SET the tasks of req.Nexus at req.LUN, CLEAR
// TASK SET and LOGICAL UNIT RESET the tasks of every nexus at req.LUN, the
// target resets every task; the resets then apply their side effects
// (unit attentions and more, see Target.Reset). Tasks are aborted before
// Manage returns, so that a transport processes no more data for them.
func (m *TaskManager) Manage(req TMFRequest) *TMFResult {
	done := func(r TMFResponse) *TMFResult { return &TMFResult{resp: r} }
	reset := func(lun uint64) func() TMFResponse {
		return func() TMFResponse {
			if err := m.ds.Reset(req.Nexus, req.Function, lun); err != nil {
				slog.Warn("scsi: task management reset failed", "function", int(req.Function), "lun", lun, "err", err.Error())
				return TMFRejected
			}
			return TMFComplete
		}
	}
	switch req.Function {
	case TMFAbortTask, TMFAbortTaskSet, TMFClearTaskSet, TMFLogicalUnitReset:
		if !m.ds.HasLUN(req.LUN) {
			return done(TMFNoLUN)
		}
	}
	lun := req.LUN
	switch req.Function {
	case TMFAbortTask:
		if req.Task == nil || req.Task.LUN != lun {
			return done(TMFNoTask)
		}
		w := m.abort(req.Task)
		if w == nil {
			return done(TMFNoTask)
		}
		return &TMFResult{pending: true, waits: Aborts{w}}
	case TMFAbortTaskSet:
		return &TMFResult{pending: true, waits: m.Abort(func(t *Task) bool { return t.Nexus == req.Nexus && t.LUN == lun })}
	case TMFClearTaskSet, TMFLogicalUnitReset:
		return &TMFResult{pending: true, waits: m.Abort(func(t *Task) bool { return t.LUN == lun }), after: reset(lun)}
	case TMFTargetWarmReset, TMFTargetColdReset:
		return &TMFResult{pending: true, waits: m.Abort(func(*Task) bool { return true }), after: reset(0)}
	default:
		// CLEAR ACA: ACA (NACA=1) is not supported, so there is never
		// an ACA to clear.
		return done(TMFNotSupported)
	}
}
