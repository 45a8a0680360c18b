package scsi

import (
	"encoding/binary"
	"fmt"
)

// Sense keys (SPC-4 table 48).
const (
	SenseNoSense        byte = 0x0
	SenseRecoveredError byte = 0x1
	SenseNotReady       byte = 0x2
	SenseMediumError    byte = 0x3
	SenseHardwareError  byte = 0x4
	SenseIllegalRequest byte = 0x5
	SenseUnitAttention  byte = 0x6
	SenseDataProtect    byte = 0x7
	SenseAbortedCommand byte = 0xb
	SenseMiscompare     byte = 0xe
)

// Additional sense codes and qualifiers used by the command core, packed as
// ASC<<8 | ASCQ.
const (
	ascNoAdditionalSense       uint16 = 0x0000
	ascLUNotReady              uint16 = 0x0400
	ascWriteError              uint16 = 0x0c00
	ascUnrecoveredReadError    uint16 = 0x1100
	ascParameterListLength     uint16 = 0x1a00
	ascInvalidOpcode           uint16 = 0x2000
	ascLBAOutOfRange           uint16 = 0x2100
	ascInvalidFieldInCDB       uint16 = 0x2400
	ascLUNotSupported          uint16 = 0x2500
	ascInvalidFieldInParamList uint16 = 0x2600
	ascParameterNotSupported   uint16 = 0x2601
	ascWriteProtected          uint16 = 0x2700
	ascSoftwareWriteProtected  uint16 = 0x2702
	ascSpaceAllocFailedWP      uint16 = 0x2707
	ascSoftThresholdReached    uint16 = 0x3807
	ascPowerOnReset            uint16 = 0x2900
	ascPowerOnOccurred         uint16 = 0x2901
	ascBusReset                uint16 = 0x2902
	ascBusDeviceReset          uint16 = 0x2903
	ascNexusLoss               uint16 = 0x2907
	ascModeParametersChanged   uint16 = 0x2a01
	ascCapacityDataChanged     uint16 = 0x2a09
	ascSavingNotSupported      uint16 = 0x3900
	ascReportedLUNsChanged     uint16 = 0x3f0e
	ascMiscompareDuringVerify  uint16 = 0x1d00
	ascInternalTargetFailure   uint16 = 0x4400
)

// checkCondition is the error a command handler returns to finish the
// command with CHECK CONDITION. It carries everything sense data can hold;
// the logical unit renders it in fixed or descriptor format.
type checkCondition struct {
	key byte
	asc uint16 // ASC<<8 | ASCQ

	// info is the INFORMATION field (e.g. the miscompare offset), valid
	// when hasInfo is set.
	info    uint64
	hasInfo bool

	// Sense-key specific field pointer (SKSV=1) for ILLEGAL REQUEST: the
	// byte (and, when bit >= 0, the bit) of the CDB (inCDB) or of the
	// parameter list that is wrong.
	sksv  bool
	inCDB bool
	field uint16
	bit   int
}

func (c *checkCondition) Error() string {
	return fmt.Sprintf("scsi: check condition key=%#x asc=%#02x ascq=%#02x", c.key, c.asc>>8, c.asc&0xff)
}

// newCC returns a check condition without a field pointer.
func newCC(key byte, asc uint16) *checkCondition {
	return &checkCondition{key: key, asc: asc, bit: -1}
}

// invalidCDB reports INVALID FIELD IN CDB pointing at byte b, bit bit of the
// CDB (bit < 0: the whole byte).
func invalidCDB(b, bit int) *checkCondition {
	return &checkCondition{key: SenseIllegalRequest, asc: ascInvalidFieldInCDB, sksv: true, inCDB: true, field: uint16(b), bit: bit}
}

// invalidParam reports INVALID FIELD IN PARAMETER LIST pointing at byte b,
// bit bit of the parameter list.
func invalidParam(b, bit int) *checkCondition {
	return &checkCondition{key: SenseIllegalRequest, asc: ascInvalidFieldInParamList, sksv: true, field: uint16(b), bit: bit}
}

var (
	errInvalidOpcode = newCC(SenseIllegalRequest, ascInvalidOpcode)
	errLBARange      = newCC(SenseIllegalRequest, ascLBAOutOfRange)
	errParamLength   = newCC(SenseIllegalRequest, ascParameterListLength)
	errLUNotSupp     = newCC(SenseIllegalRequest, ascLUNotSupported)
	errWriteProtect  = newCC(SenseDataProtect, ascWriteProtected)
	errSWP           = newCC(SenseDataProtect, ascSoftwareWriteProtected)
	errNoSpace       = newCC(SenseDataProtect, ascSpaceAllocFailedWP)
	errReadMedium    = newCC(SenseMediumError, ascUnrecoveredReadError)
	errWriteMedium   = newCC(SenseMediumError, ascWriteError)
	errInternal      = newCC(SenseHardwareError, ascInternalTargetFailure)
	errSavingNotSupp = newCC(SenseIllegalRequest, ascSavingNotSupported)
	errNotReady      = newCC(SenseNotReady, ascLUNotReady)
)

// senseKeySpecific encodes the three sense-key specific bytes (SPC-4
// 4.5.2.4.2, field pointer).
func (c *checkCondition) senseKeySpecific() [3]byte {
	var s [3]byte
	if !c.sksv {
		return s
	}
	s[0] = 0x80
	if c.inCDB {
		s[0] |= 0x40
	}
	if c.bit >= 0 {
		s[0] |= 0x08 | byte(c.bit&7)
	}
	binary.BigEndian.PutUint16(s[1:], c.field)
	return s
}

// fixedSenseLen is the length of fixed-format sense data we produce.
const fixedSenseLen = 18

// sense renders the condition as sense data, fixed format (response code
// 0x70) or descriptor format (0x72).
func (c *checkCondition) sense(descriptor bool) []byte {
	if !descriptor {
		b := make([]byte, fixedSenseLen)
		b[0] = 0x70
		b[2] = c.key & 0x0f
		// Fixed format holds a 32-bit INFORMATION field; a larger value
		// is left out with VALID=0 (SPC-4 4.5.3), descriptor format
		// carries all 64 bits.
		if c.hasInfo && c.info <= 0xffffffff {
			b[0] |= 0x80 // VALID: INFORMATION is meaningful
			binary.BigEndian.PutUint32(b[3:], uint32(c.info))
		}
		b[7] = fixedSenseLen - 8
		b[12] = byte(c.asc >> 8)
		b[13] = byte(c.asc)
		sks := c.senseKeySpecific()
		copy(b[15:], sks[:])
		return b
	}
	n := 8
	if c.hasInfo {
		n += 12
	}
	if c.sksv {
		n += 8
	}
	b := make([]byte, n)
	b[0] = 0x72
	b[1] = c.key & 0x0f
	b[2] = byte(c.asc >> 8)
	b[3] = byte(c.asc)
	b[7] = byte(n - 8)
	p := 8
	if c.hasInfo {
		b[p] = 0x00 // information descriptor
		b[p+1] = 0x0a
		b[p+2] = 0x80 // VALID
		binary.BigEndian.PutUint64(b[p+4:], c.info)
		p += 12
	}
	if c.sksv {
		b[p] = 0x02 // sense key specific descriptor
		b[p+1] = 0x06
		sks := c.senseKeySpecific()
		copy(b[p+4:], sks[:])
	}
	return b
}
