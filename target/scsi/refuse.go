package scsi

// Refusal is why a transport fails a command before the device server
// sees it. The task manager turns it into the status and sense data, in
// the format the logical unit's control mode page selects (D_SENSE), so
// a transport never builds sense data itself.
type Refusal uint8

// Transport refusals.
const (
	// RefuseInvalidField: a command the transport cannot carry, such as a
	// bidirectional one or one longer than its maximum transfer length
	// (ILLEGAL REQUEST, INVALID FIELD IN CDB).
	RefuseInvalidField Refusal = iota + 1
	// RefuseTaskSetFull: no room for the command's data (TASK SET FULL
	// status, no sense data).
	RefuseTaskSetFull
	// RefuseDataSequence: a data PDU out of sequence, taken as a lost
	// (digest-failed) PDU (ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR).
	RefuseDataSequence
	// RefuseDataOffset: data at the wrong offset (ABORTED COMMAND, DATA
	// OFFSET ERROR).
	RefuseDataOffset
	// RefuseBadTransferTag: data for a transfer tag never issued (ABORTED
	// COMMAND, INVALID TARGET PORT TRANSFER TAG RECEIVED).
	RefuseBadTransferTag
	// RefuseUnexpectedData: data the target did not ask for (ABORTED
	// COMMAND, UNEXPECTED UNSOLICITED DATA).
	RefuseUnexpectedData
	// RefuseDataAmount: more or less data than asked for (ABORTED
	// COMMAND, NOT ENOUGH UNSOLICITED DATA / incorrect amount).
	RefuseDataAmount
)

// refusalSense maps a refusal to its check condition (SPC-4 tables 48/50;
// RFC 7143 11.4.7.2 for the data sequence errors).
var refusalSense = map[Refusal]*checkCondition{
	RefuseInvalidField:   newCC(SenseIllegalRequest, ascInvalidFieldInCDB),
	RefuseDataSequence:   newCC(SenseAbortedCommand, 0x4705),
	RefuseDataOffset:     newCC(SenseAbortedCommand, 0x4b05),
	RefuseBadTransferTag: newCC(SenseAbortedCommand, 0x4b01),
	RefuseUnexpectedData: newCC(SenseAbortedCommand, 0x0c0c),
	RefuseDataAmount:     newCC(SenseAbortedCommand, 0x0c0d),
}

// Refuse returns the result of a command to lun that the transport
// refuses for why.
func (m *TaskManager) Refuse(lun uint64, why Refusal) Result {
	if why == RefuseTaskSetFull {
		return Result{Status: StatusTaskSetFull}
	}
	cc, ok := refusalSense[why]
	if !ok {
		cc = errInternal
	}
	return Result{Status: StatusCheckCondition, Sense: cc.sense(m.ds.DescriptorSense(lun))}
}
