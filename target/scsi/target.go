package scsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/anvilproject/anvil/engine"
)

// maxLUN is the largest LUN that single-level flat addressing (SAM-5
// 4.7.7.4) can express, which is what REPORT LUNS encodes.
const maxLUN = 0x3fff

// Target is one SCSI target device: a set of logical units addressed by LUN.
// Its Execute method is safe for concurrent use; LUN changes are published
// by swapping an immutable map, so the I/O path never takes a lock to find
// its logical unit.
type Target struct {
	name string

	mu   sync.Mutex // serializes AddLUN/RemoveLUN
	luns atomic.Pointer[map[uint64]*LogicalUnit]

	// anon is the nexus used for commands that arrive without one.
	anon Nexus

	// tasks is the target's task manager: its task sets and task
	// management functions.
	tasks *TaskManager
}

// NewTarget returns an empty target named name (for iSCSI, the target IQN).
func NewTarget(name string) *Target {
	t := &Target{name: name}
	m := map[uint64]*LogicalUnit{}
	t.luns.Store(&m)
	t.tasks = NewTaskManager(t)
	return t
}

// Tasks returns the target's task manager, through which transports
// submit commands and carry out task management functions.
func (t *Target) Tasks() *TaskManager { return t.tasks }

// DescriptorSense reports whether the unit at lun asks for descriptor
// format sense data (control mode page D_SENSE); false for an unmapped LUN.
func (t *Target) DescriptorSense(lun uint64) bool {
	lu := t.lookup(lun)
	return lu != nil && lu.dsense.Load()
}

// Name returns the target's name.
func (t *Target) Name() string { return t.name }

// AddLUN maps lu at lun. The other logical units report REPORTED LUNS DATA
// HAS CHANGED to every nexus that knows them.
func (t *Target) AddLUN(lun uint64, lu *LogicalUnit) error {
	if lu == nil {
		return fmt.Errorf("scsi: target %s: add LUN %d: nil logical unit", t.name, lun)
	}
	if lun > maxLUN {
		return fmt.Errorf("scsi: target %s: add LUN %d: LUN above %d", t.name, lun, maxLUN)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.luns.Load()
	if _, ok := old[lun]; ok {
		return fmt.Errorf("scsi: target %s: LUN %d is already mapped", t.name, lun)
	}
	m := maps.Clone(old)
	m[lun] = lu
	t.luns.Store(&m)
	for _, other := range old {
		other.broadcastUA(nil, ascReportedLUNsChanged)
	}
	return nil
}

// RemoveLUN unmaps lun. The remaining logical units report REPORTED LUNS
// DATA HAS CHANGED.
func (t *Target) RemoveLUN(lun uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.luns.Load()
	if _, ok := old[lun]; !ok {
		return fmt.Errorf("scsi: target %s: LUN %d is not mapped", t.name, lun)
	}
	m := maps.Clone(old)
	delete(m, lun)
	t.luns.Store(&m)
	for _, other := range m {
		other.broadcastUA(nil, ascReportedLUNsChanged)
	}
	return nil
}

// LUNs returns the mapped LUNs in ascending order.
func (t *Target) LUNs() []uint64 {
	return slices.Sorted(maps.Keys(*t.luns.Load()))
}

// HasLUN reports whether lun is mapped.
func (t *Target) HasLUN(lun uint64) bool {
	_, ok := (*t.luns.Load())[lun]
	return ok
}

func (t *Target) lookup(lun uint64) *LogicalUnit {
	return (*t.luns.Load())[lun]
}

// Reset applies the side effects of a task management function that resets
// state (SAM-5 7.x); TaskManager.Manage calls it once the affected tasks
// have stopped: LOGICAL UNIT RESET resets the unit at lun, TARGET WARM
// RESET and TARGET COLD RESET reset every unit. Resets release RESERVE
// reservations and establish a unit attention for every nexus (BUS
// DEVICE RESET FUNCTION OCCURRED for a unit reset, SCSI BUS RESET OCCURRED
// for a warm reset, POWER ON OCCURRED for a cold reset); target resets also
// return mode parameters to their defaults, as a hard reset does. CLEAR TASK
// SET and the abort functions change no state here: aborting the commands
// themselves is the task manager's job (it cancels their contexts).
//
// n is the nexus the function arrived on; SAM-5 gives it no special
// treatment for these functions, so it does not change the outcome.
func (t *Target) Reset(n *Nexus, fn TMF, lun uint64) error {
	switch fn {
	case TMFLogicalUnitReset:
		lu := t.lookup(lun)
		if lu == nil {
			return fmt.Errorf("scsi: target %s: reset LUN %d: %w", t.name, lun, errNoSuchLUN)
		}
		lu.reset(ascBusDeviceReset, false)
	case TMFTargetWarmReset, TMFTargetColdReset:
		asc := ascBusReset
		if fn == TMFTargetColdReset {
			asc = ascPowerOnOccurred
		}
		for _, lu := range *t.luns.Load() {
			lu.reset(asc, true)
		}
	case TMFAbortTask, TMFAbortTaskSet, TMFClearTaskSet, TMFClearACA:
		if !t.HasLUN(lun) {
			return fmt.Errorf("scsi: target %s: TMF %d on LUN %d: %w", t.name, fn, lun, errNoSuchLUN)
		}
	default:
		return fmt.Errorf("scsi: target %s: TMF %d: %w", t.name, fn, errTMFNotSupported)
	}
	return nil
}

var (
	errNoSuchLUN       = errors.New("logical unit not mapped")
	errTMFNotSupported = errors.New("task management function not supported")
)

// NexusLoss forgets what the target's logical units hold for n: its unit
// attentions and any RESERVE reservation it held (persistent reservation
// registrations survive, as SPC-4 requires). Transports call it when an
// I_T nexus ends (session closed or dropped). If the same initiator port
// comes back through the same target port, its first command reports I_T
// NEXUS LOSS OCCURRED, followed by anything that happened meanwhile (for
// example REGISTRATIONS PREEMPTED); an unknown initiator port starts with
// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
func (t *Target) NexusLoss(n *Nexus) {
	if n == nil {
		return
	}
	for _, lu := range *t.luns.Load() {
		lu.forget(n)
	}
}

// Execute runs one command and returns its outcome. It is safe to call from
// many goroutines at once. Cancelling ctx aborts the command between steps;
// the result is then TASK ABORTED.
func (t *Target) Execute(ctx context.Context, cmd *Command) (res Result) {
	defer func() {
		// A handler bug must fail one command, never the daemon.
		if r := recover(); r != nil {
			slogFor(t.lookup(cmd.LUN)).Error("scsi: panic executing command", "target", t.name, "lun", cmd.LUN, "cdb", fmt.Sprintf("% x", cmd.CDB), "panic", r)
			res = Result{Status: StatusCheckCondition, Sense: errInternal.sense(t.DescriptorSense(cmd.LUN))}
		}
	}()
	n := cmd.Nexus
	if n == nil {
		n = &t.anon
	}
	lu := t.lookup(cmd.LUN)
	x := &task{ctx: ctx, t: t, lu: lu, cmd: cmd, cdb: cmd.CDB, n: n}
	err := x.run()
	if err != nil {
		return x.fail(err)
	}
	return x.res
}

// task is one command in execution.
type task struct {
	ctx context.Context
	t   *Target
	lu  *LogicalUnit // nil when the LUN is not mapped
	cmd *Command
	cdb []byte
	n   *Nexus
	st  *itNexusState
	res Result
}

// lookupOp finds the table entry for the CDB: nil with an error for an
// unknown operation code or service action.
func lookupOp(cdb []byte) (*opInfo, error) {
	if len(cdb) == 0 {
		return nil, errInvalidOpcode
	}
	op := opcodes[cdb[0]]
	if op == nil {
		return nil, errInvalidOpcode
	}
	if op.serviceActions != nil {
		if len(cdb) < 2 {
			return nil, invalidCDB(1, 4)
		}
		sa := op.serviceActions[cdb[1]&0x1f]
		if sa == nil {
			return nil, invalidCDB(1, 4)
		}
		op = sa
	}
	return op, nil
}

// run validates and dispatches the command in the order SAM-5 and SPC-4
// give: an unmapped LUN first, then a pending unit attention (which beats
// even an invalid CDB), then the CDB itself, reservations, and finally the
// command.
func (x *task) run() error {
	op, opErr := lookupOp(x.cdb)
	if x.lu == nil {
		if op == nil || op.flags&opNoLU == 0 {
			return errLUNotSupp
		}
	} else {
		x.st = x.lu.nexusState(x.t, x.n)
		if op == nil || op.flags&opNoUA == 0 {
			if asc, ok := x.st.pop(); ok {
				return newCC(SenseUnitAttention, asc)
			}
		}
	}
	if opErr != nil {
		return opErr
	}
	if !op.supported(x.lu) {
		return errInvalidOpcode
	}
	cdbLen := op.cdbLen()
	if len(x.cdb) < cdbLen {
		return invalidCDB(len(x.cdb), -1)
	}
	x.cdb = x.cdb[:cdbLen]
	// NACA (control byte bit 2) asks for ACA, which we do not support
	// (INQUIRY NORMACA=0).
	if x.cdb[cdbLen-1]&0x04 != 0 {
		return invalidCDB(cdbLen-1, 2)
	}
	if x.lu != nil {
		if op.flags&opNoConflict == 0 && x.lu.reservationConflict(x.n) {
			x.res.Status = StatusReservationConflict
			return nil
		}
		if x.lu.prConflict(x.n, op.access) {
			x.res.Status = StatusReservationConflict
			return nil
		}
	}
	if err := x.ctx.Err(); err != nil {
		return err
	}
	return op.run(x)
}

// fail turns err into the command's result.
func (x *task) fail(err error) Result {
	var cc *checkCondition
	switch {
	case errors.As(err, &cc):
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return Result{Status: StatusTaskAborted, TransferLength: x.res.TransferLength}
	case engine.IsNoSpace(err):
		// A thin volume's file system is full (SBC-4 4.7.3.7): not a
		// medium fault, and the initiator can tell the two apart.
		cc = errNoSpace
	case errors.Is(err, engine.ErrReadOnly):
		cc = errWriteProtect
	case errors.Is(err, engine.ErrOutOfRange):
		cc = errLBARange
	case errors.Is(err, engine.ErrClosed):
		// The volume is going away under a mapped LUN (deletion,
		// shutdown): not a medium fault, the unit is just not ready.
		cc = errNotReady
	default:
		// ErrMedium and anything unexpected: the backing store
		// failed us. Reads report an unrecovered read error, everything
		// else a write error.
		cc = errWriteMedium
		if x.isRead() {
			cc = errReadMedium
		}
		if !errors.Is(err, engine.ErrMedium) {
			slogFor(x.lu).Warn("scsi: command failed", "target", x.t.name, "lun", x.cmd.LUN, "opcode", fmt.Sprintf("%#02x", x.cdb[0]), "err", err)
		}
	}
	desc := x.lu != nil && x.lu.dsense.Load()
	return Result{Status: StatusCheckCondition, Sense: cc.sense(desc), TransferLength: x.res.TransferLength}
}

// writeProtectErr is the DATA PROTECT a read-only volume answers writes
// with: SPACE ALLOCATION FAILED WRITE PROTECT when a commit that ran out of
// space froze it, WRITE PROTECTED otherwise.
func writeProtectErr(vol engine.Volume) *checkCondition {
	if err := engine.FrozenErr(vol); err != nil && engine.IsNoSpace(err) {
		return errNoSpace
	}
	return errWriteProtect
}

// isRead reports whether the command only reads the medium, so that a
// backing-store failure is an unrecovered read error rather than a write
// error.
func (x *task) isRead() bool {
	switch x.cdb[0] {
	case opRead6, opRead10, opRead12, opRead16, opVerify10, opVerify12, opVerify16,
		opPreFetch10, opPreFetch16, opServiceActionIn16:
		return true
	}
	return false
}

// dataIn sets the command's data-in, truncated to the allocation length
// alloc the CDB gave. The transfer length is what the device server has to
// send (SPC-4 4.2.5.6): the transport reports an underflow when that is
// less than the initiator expected, and an overflow when it is more.
func (x *task) dataIn(b []byte, alloc int) error {
	if len(b) > alloc {
		b = b[:alloc]
	}
	x.res.DataIn = b
	x.res.TransferLength = len(b)
	return nil
}

func slogFor(lu *LogicalUnit) *slog.Logger {
	if lu != nil {
		return lu.log
	}
	return slog.Default()
}
