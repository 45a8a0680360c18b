package nvme

import "fmt"

// Status is an NVMe status field without the phase tag: the status code
// (SC) in bits 7:0, the status code type (SCT) in bits 10:8, Command Retry
// Delay in bits 12:11, More in bit 13 and Do Not Retry in bit 14 (the CQE's
// DW3 bits 31:17, shifted down by one).
type Status uint16

// Status code types.
const (
	SCTGeneric         = 0x0
	SCTCommandSpecific = 0x1
	SCTMediaError      = 0x2
	SCTPath            = 0x3
)

// Status bits.
const (
	statusMore Status = 1 << 13
	statusDNR  Status = 1 << 14
)

// Generic command statuses (SCT 0).
const (
	StatusSuccess            Status = 0x00
	StatusInvalidOpcode      Status = 0x01
	StatusInvalidField       Status = 0x02
	StatusCIDConflict        Status = 0x03
	StatusDataTransferError  Status = 0x04
	StatusPowerLoss          Status = 0x05
	StatusInternal           Status = 0x06
	StatusAbortRequested     Status = 0x07
	StatusAbortSQDeleted     Status = 0x08
	StatusAbortFailedFused   Status = 0x09
	StatusAbortMissingFused  Status = 0x0a
	StatusInvalidNamespace   Status = 0x0b
	StatusCommandSequence    Status = 0x0c
	StatusInvalidSGLSegment  Status = 0x0d
	StatusInvalidSGLCount    Status = 0x0e
	StatusDataSGLLength      Status = 0x0f
	StatusMetadataSGLLength  Status = 0x10
	StatusSGLTypeInvalid     Status = 0x11
	StatusSGLOffsetInvalid   Status = 0x16
	StatusHostIDInconsistent Status = 0x18
	StatusKeepAliveExpired   Status = 0x19
	StatusKeepAliveInvalid   Status = 0x1a
	StatusNSWriteProtected   Status = 0x20
	StatusCommandInterrupted Status = 0x21
	StatusTransientTransport Status = 0x22
	StatusLBAOutOfRange      Status = 0x80
	StatusCapacityExceeded   Status = 0x81
	StatusNamespaceNotReady  Status = 0x82
)

// Command specific statuses (SCT 1).
const (
	StatusInvalidQueueID          Status = SCTCommandSpecific<<8 | 0x01
	StatusInvalidQueueSize        Status = SCTCommandSpecific<<8 | 0x02
	StatusAbortLimitExceeded      Status = SCTCommandSpecific<<8 | 0x03
	StatusAsyncEventLimitExceeded Status = SCTCommandSpecific<<8 | 0x05
	StatusInvalidLogPage          Status = SCTCommandSpecific<<8 | 0x09
	StatusFeatureNotSaveable      Status = SCTCommandSpecific<<8 | 0x0d
	StatusFeatureNotChangeable    Status = SCTCommandSpecific<<8 | 0x0e
	StatusAttributeConflict       Status = SCTCommandSpecific<<8 | 0x80 // NVM command set: Conflicting Attributes
	StatusConnectIncompatible     Status = SCTCommandSpecific<<8 | 0x80 // Fabrics Connect: Incompatible Format
	StatusConnectControllerBusy   Status = SCTCommandSpecific<<8 | 0x81
	StatusConnectInvalidParam     Status = SCTCommandSpecific<<8 | 0x82
	StatusConnectRestartDiscovery Status = SCTCommandSpecific<<8 | 0x83
	StatusConnectInvalidHost      Status = SCTCommandSpecific<<8 | 0x84
)

// Media and data integrity statuses (SCT 2).
const (
	StatusWriteFault             Status = SCTMediaError<<8 | 0x80
	StatusUnrecoveredRead        Status = SCTMediaError<<8 | 0x81
	StatusCompareFailure         Status = SCTMediaError<<8 | 0x85
	StatusAccessDenied           Status = SCTMediaError<<8 | 0x86
	StatusDeallocatedOrUnwritten Status = SCTMediaError<<8 | 0x87
)

// WithDNR returns s with Do Not Retry set: the same command would fail the
// same way again.
func (s Status) WithDNR() Status { return s | statusDNR }

// DNR reports whether Do Not Retry is set.
func (s Status) DNR() bool { return s&statusDNR != 0 }

// SCT is the status code type.
func (s Status) SCT() uint8 { return uint8(s>>8) & 0x7 }

// SC is the status code.
func (s Status) SC() uint8 { return uint8(s) }

// OK reports whether s is Successful Completion.
func (s Status) OK() bool { return s.SCT() == 0 && s.SC() == 0 }

func (s Status) String() string {
	dnr := ""
	if s.DNR() {
		dnr = " dnr"
	}
	return fmt.Sprintf("sct=%#x sc=%#02x%s", s.SCT(), s.SC(), dnr)
}
