// Package scsi is Anvil's SCSI target device (SAM-5, SPC-4, SBC-3): the
// device server that turns CDBs into engine.Volume calls and answers with
// status, sense and data, and the task manager in front of it.
//
// It knows nothing of TCP or iSCSI PDUs. What SAM gives a target device
// lives here so that every transport shares it: the task set of each LUN
// with its SIMPLE / ORDERED / HEAD OF QUEUE rules and the task management
// functions across I_T nexuses (TaskManager, taskset.go), LUN addressing
// (DecodeLUN, EncodeLUN), and all sense data, built in one place (sense.go)
// in the format the control mode page's D_SENSE selects, including for
// commands a transport refuses (TaskManager.Refuse). A transport
// (target/iscsi) adds each command to Target.Tasks as a Task, gathers its
// data-out, runs it with TaskManager.Execute, and moves the Result's
// data-in and status back to the initiator, computing residuals from
// Result.TransferLength against its own expected length; a task management
// request becomes one TaskManager.Manage call.
//
// Commands: TEST UNIT READY, REQUEST SENSE, INQUIRY (VPD 0x00, 0x80, 0x83,
// 0x8F, 0xB0, 0xB1, 0xB2), REPORT LUNS, REPORT SUPPORTED OPERATION CODES,
// MODE SENSE/SELECT (6)/(10) (caching, control, informational exceptions),
// READ CAPACITY (10)/(16), READ/WRITE (6)/(10)/(12)/(16), VERIFY and WRITE
// AND VERIFY (10)/(12)/(16), WRITE ATOMIC(16), ORWRITE(16), COMPARE AND
// WRITE, WRITE SAME (10)/(16), UNMAP, GET LBA STATUS, SYNCHRONIZE CACHE
// (10)/(16), PRE-FETCH (10)/(16), START STOP UNIT, PREVENT ALLOW MEDIUM
// REMOVAL, READ DEFECT DATA (10)/(12), RESERVE/RELEASE (6)/(10), PERSISTENT
// RESERVE IN/OUT, EXTENDED COPY (LID1) and RECEIVE COPY RESULTS. WRITE
// ATOMIC and UNMAP are offered only when the engine backs them (Limits).
//
// Concurrency: Target.Execute runs commands concurrently. The LUN map is an
// immutable map behind an atomic pointer, per-nexus unit attention state
// sits in a sync.Map with an atomic "pending" count, and reservation checks
// read atomic flags first, so an ordinary READ takes no lock of the command
// core. Commands that write the medium hold the blocks they write in the
// unit's striped range locks (shared, exclusive for COMPARE AND WRITE and
// ORWRITE), which costs an uncontended write one atomic add per 1 MiB
// region it touches.
package scsi

// Status is a SCSI status byte (SAM-5).
type Status byte

// SCSI status codes.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

// TaskAttr is a command's task attribute (SAM-5).
type TaskAttr uint8

// Task attributes as iSCSI encodes them in the SCSI Command PDU's ATTR field.
const (
	TaskUntagged    TaskAttr = 0
	TaskSimple      TaskAttr = 1
	TaskOrdered     TaskAttr = 2
	TaskHeadOfQueue TaskAttr = 3
	TaskACA         TaskAttr = 4
)

// Nexus identifies an I_T nexus: one initiator port talking to one target
// port. Unit attentions and reservations are kept per nexus. Transports must
// build one Nexus per session and pass the same pointer with every command of
// that session.
type Nexus struct {
	// InitiatorPort is the SCSI initiator port name, e.g. for iSCSI
	// "iqn.1993-08.org.debian:01:abcd,i,0x23d000000001".
	InitiatorPort string
	// InitiatorName is the initiator device name without the ISID part.
	InitiatorName string
	// TargetPort is the SCSI target port name, e.g. "iqn.2026-11.io.anvil:demo,t,0x0001".
	TargetPort string
	// RelativeTargetPortID is the target port's relative identifier (1-based).
	RelativeTargetPortID uint16
	// TargetPortGroup is the target port group (the iSCSI TPGT).
	TargetPortGroup uint16
}

// Command is one SCSI command as delivered by a transport.
type Command struct {
	// Nexus is the I_T nexus the command arrived on.
	Nexus *Nexus
	// LUN is the logical unit number (the flat 14-bit space of SAM-5
	// single-level LUN addressing, decoded by the transport).
	LUN uint64
	// CDB is the command descriptor block (6 to 32 bytes; transports
	// concatenate extended CDB AHS bytes).
	CDB []byte
	// Attr is the task attribute.
	Attr TaskAttr
	// DataOut holds every byte the initiator sent for this command (at most
	// the transport's expected data transfer length).
	DataOut []byte
	// ExpectedDataIn is the transport's expected data-in transfer length in
	// bytes. Commands never produce more than the CDB asks for; the
	// transport truncates to this length and reports a residual.
	ExpectedDataIn int
}

// Result is the outcome of a Command.
type Result struct {
	// Status is the SCSI status.
	Status Status
	// Sense holds the sense data for CHECK CONDITION (fixed or descriptor
	// format, as the logical unit's control mode page selects).
	Sense []byte
	// DataIn is the data the command returns, as long as the CDB asks for
	// (e.g. the allocation length, or transfer length × block size). The
	// transport sends at most ExpectedDataIn bytes of it.
	DataIn []byte
	// TransferLength is the number of bytes the CDB asked to transfer, in
	// either direction. Transports compare it with their expected data
	// transfer length to compute overflow/underflow residuals.
	TransferLength int
	// AbortTaskSets, when not empty, lists task sets the transport must
	// abort, as ABORT TASK SET would, before it completes this command:
	// every task of each I_T nexus at its LUN except this command itself.
	// PERSISTENT RESERVE OUT PREEMPT AND ABORT asks for it for the nexuses
	// it preempted (SPC-4 5.13.11.2.6). The control mode page reports TAS
	// = 0, so the aborted tasks get no response; their initiators learn of
	// it from the REGISTRATIONS PREEMPTED unit attention.
	AbortTaskSets []TaskSet
}

// TaskSet names the tasks of one I_T nexus addressed to one LUN of the
// nexus's target.
type TaskSet struct {
	// Nexus is the I_T nexus whose tasks are meant.
	Nexus *Nexus
	// LUN is the LUN of the unit in the nexus's target.
	LUN uint64

	// tm is the task manager of the nexus's target, when the unit found
	// it (a unit may be mapped by several targets); nil means the one
	// executing the command.
	tm *TaskManager
}

// TMF is a task management function (SAM-5).
type TMF uint8

// Task management functions, numbered as iSCSI encodes them.
const (
	TMFAbortTask        TMF = 1
	TMFAbortTaskSet     TMF = 2
	TMFClearACA         TMF = 3
	TMFClearTaskSet     TMF = 4
	TMFLogicalUnitReset TMF = 5
	TMFTargetWarmReset  TMF = 6
	TMFTargetColdReset  TMF = 7
	TMFTaskReassign     TMF = 8
)
