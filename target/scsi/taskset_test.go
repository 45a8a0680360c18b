package scsi

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// recDevice is a DeviceServer that runs every command with GOOD status
// (or exec's result, when set) and records the resets it is asked to
// apply. LUNs 0 and 1 are mapped.
type recDevice struct {
	mu     sync.Mutex
	resets []TMF
	exec   func(*Command) Result
}

func (d *recDevice) Execute(_ context.Context, cmd *Command) Result {
	if d.exec != nil {
		return d.exec(cmd)
	}
	return Result{}
}
func (d *recDevice) HasLUN(lun uint64) bool      { return lun < 2 }
func (d *recDevice) NexusLoss(*Nexus)            {}
func (d *recDevice) DescriptorSense(uint64) bool { return false }
func (d *recDevice) Reset(_ *Nexus, fn TMF, _ uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resets = append(d.resets, fn)
	return nil
}

func (d *recDevice) resetCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.resets)
}

// testTask is a Task as a transport would keep it, with channels that
// tell when the task manager starts or aborts it.
type testTask struct {
	Task
	name    string
	started chan struct{}
	aborted chan bool
}

// submit adds and delivers a task, as a transport does when a command
// arrives in order.
func submit(t *testing.T, tm *TaskManager, name string, n *Nexus, lun uint64, attr TaskAttr) *testTask {
	t.Helper()
	tt := &testTask{name: name, started: make(chan struct{}, 1), aborted: make(chan bool, 1)}
	tt.Task = Task{Nexus: n, LUN: lun, Attr: attr,
		Start:   func() { tt.started <- struct{}{} },
		Aborted: func(running bool) { tt.aborted <- running },
	}
	tm.Add(context.Background(), &tt.Task)
	if !tm.Deliver(&tt.Task) {
		t.Fatalf("%s: not delivered", name)
	}
	return tt
}

// finish completes and releases a task that ran.
func finish(t *testing.T, tm *TaskManager, tt *testTask) {
	t.Helper()
	if !tm.Complete(&tt.Task, nil) {
		t.Fatalf("%s: Complete reported it aborted", tt.name)
	}
	tm.Release(&tt.Task)
}

// expectStarted waits for the task manager to start a held-back task.
func expectStarted(t *testing.T, tt *testTask) {
	t.Helper()
	select {
	case <-tt.started:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s was never started", tt.name)
	}
}

// expectHeld fails unless tt is held back by the task attribute rules.
func expectHeld(t *testing.T, tt *testTask) {
	t.Helper()
	if !tt.Gated() {
		t.Fatalf("%s is not held back", tt.name)
	}
}

// expectAborted fails unless the task manager aborted tt (running tells
// whether it had started); expectNotAborted the opposite.
func expectAborted(t *testing.T, tt *testTask, running bool) {
	t.Helper()
	select {
	case r := <-tt.aborted:
		if r != running {
			t.Fatalf("%s aborted with running=%v, want %v", tt.name, r, running)
		}
	default:
		t.Fatalf("%s was not aborted", tt.name)
	}
}

func expectNotAborted(t *testing.T, tt *testTask) {
	t.Helper()
	select {
	case <-tt.aborted:
		t.Fatalf("%s was aborted", tt.name)
	default:
	}
}

// closedCh is a stop channel that has already fired: Wait with it tells
// whether the aborted tasks have all stopped by now.
func closedCh() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

var (
	nexusA = &Nexus{InitiatorPort: "iqn.a,i,0x1"}
	nexusB = &Nexus{InitiatorPort: "iqn.b,i,0x1"}
)

// An ORDERED task waits for every task delivered before it, and a SIMPLE
// task delivered after an ORDERED one waits for it, whichever nexus
// either came from: the logical unit keeps one task set for all nexuses
// (TST=000b in the control mode page). Another LUN's task set is not held.
func TestTaskSetOrdered(t *testing.T) {
	tm := NewTaskManager(&recDevice{})
	a := submit(t, tm, "SIMPLE a", nexusA, 0, TaskSimple)
	b := submit(t, tm, "ORDERED b", nexusA, 0, TaskOrdered)
	c := submit(t, tm, "SIMPLE c", nexusB, 0, TaskSimple)
	other := submit(t, tm, "SIMPLE on LUN 1", nexusA, 1, TaskSimple)
	if !tm.Ready(&a.Task) {
		t.Fatal("the first SIMPLE task may not run")
	}
	if tm.Ready(&b.Task) {
		t.Fatal("ORDERED ran while an older SIMPLE task was in the task set")
	}
	expectHeld(t, b)
	if tm.Ready(&c.Task) {
		t.Fatal("SIMPLE ran before the older ORDERED task completed")
	}
	expectHeld(t, c)
	if !tm.Ready(&other.Task) {
		t.Fatal("a task on LUN 1 is held by LUN 0's ORDERED task")
	}
	finish(t, tm, other)

	finish(t, tm, a)
	expectStarted(t, b)
	expectHeld(t, c)
	finish(t, tm, b)
	expectStarted(t, c)
	finish(t, tm, c)
}

// A HEAD OF QUEUE task runs at once, ahead of tasks delivered before it
// and held back, even while an ORDERED task runs.
func TestTaskSetHeadOfQueue(t *testing.T) {
	tm := NewTaskManager(&recDevice{})
	o := submit(t, tm, "ORDERED o", nexusA, 0, TaskOrdered)
	s := submit(t, tm, "SIMPLE s", nexusA, 0, TaskSimple)
	h := submit(t, tm, "HEAD OF QUEUE h", nexusB, 0, TaskHeadOfQueue)
	if !tm.Ready(&o.Task) {
		t.Fatal("the first ORDERED task may not run")
	}
	if tm.Ready(&s.Task) {
		t.Fatal("SIMPLE ran before the older ORDERED task completed")
	}
	if !tm.Ready(&h.Task) {
		t.Fatal("HEAD OF QUEUE was held back")
	}
	finish(t, tm, h)
	expectHeld(t, s)
	finish(t, tm, o)
	expectStarted(t, s)
	finish(t, tm, s)
}

// ABORT TASK SET aborts the tasks of its own I_T nexus on its LUN, running
// or not, and no others; it answers once they have stopped and resets
// nothing.
func TestAbortTaskSetOnlyItsNexus(t *testing.T) {
	dev := &recDevice{}
	tm := NewTaskManager(dev)
	mine := submit(t, tm, "nexus A LUN 0 running", nexusA, 0, TaskSimple)
	mineWaiting := submit(t, tm, "nexus A LUN 0 waiting for data", nexusA, 0, TaskSimple)
	theirs := submit(t, tm, "nexus B LUN 0", nexusB, 0, TaskSimple)
	otherLUN := submit(t, tm, "nexus A LUN 1", nexusA, 1, TaskSimple)
	for _, tt := range []*testTask{mine, theirs, otherLUN} {
		if !tm.Ready(&tt.Task) {
			t.Fatalf("%s may not run", tt.name)
		}
	}

	r := tm.Manage(TMFRequest{Function: TMFAbortTaskSet, Nexus: nexusA, LUN: 0})
	expectAborted(t, mine, true)
	expectAborted(t, mineWaiting, false)
	expectNotAborted(t, theirs)
	expectNotAborted(t, otherLUN)
	if _, ok := r.Wait(closedCh()); ok {
		t.Fatal("ABORT TASK SET answered before its tasks stopped")
	}
	if tm.Complete(&mine.Task, nil) {
		t.Fatal("an aborted task would still send its status")
	}
	tm.Release(&mine.Task)
	tm.Release(&mineWaiting.Task)
	if resp, ok := r.Wait(nil); !ok || resp != TMFComplete {
		t.Fatalf("ABORT TASK SET = %v, %v; want FUNCTION COMPLETE", resp, ok)
	}
	if n := dev.resetCount(); n != 0 {
		t.Fatalf("ABORT TASK SET applied %d resets", n)
	}
	finish(t, tm, theirs)
	finish(t, tm, otherLUN)

	if r := tm.Manage(TMFRequest{Function: TMFAbortTaskSet, Nexus: nexusA, LUN: 7}); r.Pending() {
		t.Fatal("ABORT TASK SET on an unmapped LUN is pending")
	} else if resp, _ := r.Wait(nil); resp != TMFNoLUN {
		t.Fatalf("ABORT TASK SET on an unmapped LUN = %v, want TMFNoLUN", resp)
	}
}

// CLEAR TASK SET aborts the tasks of every nexus on its LUN, and only
// once they have stopped does the device server apply it.
func TestClearTaskSetAcrossNexuses(t *testing.T) {
	dev := &recDevice{}
	tm := NewTaskManager(dev)
	mine := submit(t, tm, "nexus A LUN 0", nexusA, 0, TaskSimple)
	theirs := submit(t, tm, "nexus B LUN 0", nexusB, 0, TaskOrdered)
	theirsHeld := submit(t, tm, "nexus B LUN 0 held", nexusB, 0, TaskSimple)
	otherLUN := submit(t, tm, "nexus B LUN 1", nexusB, 1, TaskSimple)
	for _, tt := range []*testTask{mine, otherLUN} {
		if !tm.Ready(&tt.Task) {
			t.Fatalf("%s may not run", tt.name)
		}
	}
	tm.Ready(&theirs.Task)
	tm.Ready(&theirsHeld.Task)
	expectHeld(t, theirs)

	r := tm.Manage(TMFRequest{Function: TMFClearTaskSet, Nexus: nexusA, LUN: 0})
	expectAborted(t, mine, true)
	expectAborted(t, theirs, false)
	expectAborted(t, theirsHeld, false)
	expectNotAborted(t, otherLUN)
	if _, ok := r.Wait(closedCh()); ok {
		t.Fatal("CLEAR TASK SET answered before its tasks stopped")
	}
	if n := dev.resetCount(); n != 0 {
		t.Fatal("CLEAR TASK SET applied before its tasks stopped")
	}
	for _, tt := range []*testTask{mine, theirs, theirsHeld} {
		tm.Release(&tt.Task)
	}
	if resp, ok := r.Wait(nil); !ok || resp != TMFComplete {
		t.Fatalf("CLEAR TASK SET = %v, %v; want FUNCTION COMPLETE", resp, ok)
	}
	if dev.resetCount() != 1 || dev.resets[0] != TMFClearTaskSet {
		t.Fatalf("device server resets %v, want one CLEAR TASK SET", dev.resets)
	}
	finish(t, tm, otherLUN)
	select {
	case <-theirs.started:
		t.Fatal("an aborted held-back task was started")
	default:
	}
}

// LOGICAL UNIT RESET aborts every nexus's tasks on its LUN and, once they
// have stopped, establishes BUS DEVICE RESET FUNCTION OCCURRED (29/03)
// for every I_T nexus: the other nexus learns of the reset from its next
// command, and so does the one that asked.
func TestLogicalUnitResetUnitAttentions(t *testing.T) {
	f := newFixture(t)
	tm := f.tgt.Tasks()
	victim := submit(t, tm, "nexus 2 LUN 0", f.n2, 0, TaskSimple)
	if !tm.Ready(&victim.Task) {
		t.Fatal("task may not run")
	}

	r := tm.Manage(TMFRequest{Function: TMFLogicalUnitReset, Nexus: f.n1, LUN: 0})
	expectAborted(t, victim, true)
	if _, ok := r.Wait(closedCh()); ok {
		t.Fatal("LOGICAL UNIT RESET answered before its tasks stopped")
	}
	tm.Release(&victim.Task)
	if resp, ok := r.Wait(nil); !ok || resp != TMFComplete {
		t.Fatalf("LOGICAL UNIT RESET = %v, %v; want FUNCTION COMPLETE", resp, ok)
	}
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascBusDeviceReset)
	expectGood(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil))
	expectSense(t, f.run(cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascBusDeviceReset)
	expectGood(t, f.run(cdb(opTestUnitReady, 6), nil))

	if r := tm.Manage(TMFRequest{Function: TMFLogicalUnitReset, Nexus: f.n1, LUN: 9}); r.Pending() {
		t.Fatal("reset of an unmapped LUN is pending")
	} else if resp, _ := r.Wait(nil); resp != TMFNoLUN {
		t.Fatalf("reset of an unmapped LUN = %v, want TMFNoLUN", resp)
	}
	expectGood(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil))
}

// A transport's refusal carries the sense data the logical unit's control
// mode page selects: fixed format, byte for byte what iSCSI always sent,
// until D_SENSE=1 asks for descriptor format.
func TestRefusalSenseFollowsDSense(t *testing.T) {
	f := newFixture(t)
	tm := f.tgt.Tasks()
	cases := []struct {
		why Refusal
		key byte
		asc uint16
	}{
		{RefuseInvalidField, SenseIllegalRequest, ascInvalidFieldInCDB},
		{RefuseDataSequence, SenseAbortedCommand, 0x4705},
		{RefuseDataOffset, SenseAbortedCommand, 0x4b05},
		{RefuseBadTransferTag, SenseAbortedCommand, 0x4b01},
		{RefuseUnexpectedData, SenseAbortedCommand, 0x0c0c},
		{RefuseDataAmount, SenseAbortedCommand, 0x0c0d},
	}
	for _, tc := range cases {
		r := tm.Refuse(0, tc.why)
		want := make([]byte, 18)
		want[0], want[2], want[7], want[12], want[13] = 0x70, tc.key, 10, byte(tc.asc>>8), byte(tc.asc)
		if r.Status != StatusCheckCondition || !bytes.Equal(r.Sense, want) {
			t.Errorf("refusal %d with D_SENSE=0: status %#x sense % x, want CHECK CONDITION % x", tc.why, r.Status, r.Sense, want)
		}
	}
	if r := tm.Refuse(0, RefuseTaskSetFull); r.Status != StatusTaskSetFull || r.Sense != nil {
		t.Errorf("TASK SET FULL refusal: status %#x sense % x", r.Status, r.Sense)
	}

	ctl := f.lu.modePage(pageControl, pcCurrent)
	ctl[2] |= 0x04 // D_SENSE
	c, pl := modeSelect6(ctl, false)
	expectGood(t, f.run(c, pl))
	for _, tc := range cases {
		r := tm.Refuse(0, tc.why)
		if p := expectSense(t, r, tc.key, tc.asc); p.format != 0x72 {
			t.Errorf("refusal %d with D_SENSE=1: sense format %#x, want descriptor (0x72)", tc.why, p.format)
		}
	}
	if r := tm.Refuse(0, RefuseTaskSetFull); r.Status != StatusTaskSetFull || r.Sense != nil {
		t.Errorf("TASK SET FULL refusal with D_SENSE=1: status %#x sense % x", r.Status, r.Sense)
	}
	// A LUN that is not mapped has no control mode page: fixed format.
	if p := expectSense(t, tm.Refuse(5, RefuseDataOffset), SenseAbortedCommand, 0x4b05); p.format != 0x70 {
		t.Errorf("refusal on an unmapped LUN: format %#x, want fixed", p.format)
	}
}

// A command whose result asks for task sets to be aborted (PERSISTENT
// RESERVE OUT PREEMPT AND ABORT) aborts them through the task manager,
// sparing itself, and returns only once the aborted tasks have stopped:
// only then may its status say the preempted initiator can no longer
// touch the medium.
func TestPreemptAndAbortWaitsForTaskSets(t *testing.T) {
	dev := &recDevice{exec: func(*Command) Result {
		return Result{AbortTaskSets: []TaskSet{{Nexus: nexusB, LUN: 0}, {Nexus: nexusA, LUN: 0}}}
	}}
	tm := NewTaskManager(dev)
	victim := submit(t, tm, "nexus B LUN 0", nexusB, 0, TaskSimple)
	ownOther := submit(t, tm, "nexus A LUN 0, not the preempting one", nexusA, 0, TaskSimple)
	bystander := submit(t, tm, "nexus B LUN 1", nexusB, 1, TaskSimple)
	self := submit(t, tm, "PREEMPT AND ABORT", nexusA, 0, TaskSimple)
	for _, tt := range []*testTask{victim, ownOther, bystander, self} {
		if !tm.Ready(&tt.Task) {
			t.Fatalf("%s may not run", tt.name)
		}
	}
	done := make(chan Result, 1)
	go func() { done <- tm.Execute(&self.Task, &Command{CDB: []byte{0x5f}}) }()
	deadline := time.After(5 * time.Second)
	for _, tt := range []*testTask{victim, ownOther} {
		select {
		case running := <-tt.aborted:
			if !running {
				t.Fatalf("%s aborted as not running", tt.name)
			}
		case <-deadline:
			t.Fatalf("%s was not aborted", tt.name)
		}
	}
	expectNotAborted(t, bystander)
	expectNotAborted(t, self)
	select {
	case <-done:
		t.Fatal("PREEMPT AND ABORT returned before the aborted tasks stopped")
	case <-time.After(50 * time.Millisecond):
	}
	tm.Release(&victim.Task)
	tm.Release(&ownOther.Task)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("PREEMPT AND ABORT never returned")
	}
	finish(t, tm, self)
	finish(t, tm, bystander)
}

// A command that fails by a panic below the core answers in the sense
// format D_SENSE selects, like every other CHECK CONDITION.
func TestPanicSenseFollowsDSense(t *testing.T) {
	tgt := NewTarget("t")
	lu := NewLogicalUnit(&panicVolume{newMemVolume(16, 512)}, LUConfig{})
	if err := tgt.AddLUN(0, lu); err != nil {
		t.Fatal(err)
	}
	lu.dsense.Store(true)
	// The power-on unit attention first.
	tgt.Execute(context.Background(), &Command{CDB: cdb(opTestUnitReady, 6)})
	r := tgt.Execute(context.Background(), &Command{CDB: rw(opRead10, 10, 0, 1), ExpectedDataIn: 512})
	if p := expectSense(t, r, SenseHardwareError, ascInternalTargetFailure); p.format != 0x72 {
		t.Fatalf("panic with D_SENSE=1: sense format %#x, want descriptor (0x72)", p.format)
	}
}

func TestDecodeLUN(t *testing.T) {
	cases := []struct {
		raw uint64
		lun uint64
	}{
		{0, 0},
		{0x0005000000000000, 5},
		{0x4123000000000000, 0x123},
		{0x0105000000000000, NoLUN}, // bus 1
		{0x0000000000000001, NoLUN}, // second level
		{0xc000000000000000, NoLUN}, // extended addressing
	}
	for _, tc := range cases {
		if got := DecodeLUN(tc.raw); got != tc.lun {
			t.Errorf("DecodeLUN(%#x) = %#x, want %#x", tc.raw, got, tc.lun)
		}
	}
	for _, lun := range []uint64{0, 1, 255, 256, 0x3fff} {
		if got := DecodeLUN(EncodeLUN(lun)); got != lun {
			t.Errorf("DecodeLUN(EncodeLUN(%d)) = %d", lun, got)
		}
	}
	if EncodeLUN(5) != 0x0005000000000000 || EncodeLUN(0x123) != 0x4123000000000000 {
		t.Errorf("EncodeLUN(5) = %#x, EncodeLUN(0x123) = %#x", EncodeLUN(5), EncodeLUN(0x123))
	}
}
