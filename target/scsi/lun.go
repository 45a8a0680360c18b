package scsi

// NoLUN is what DecodeLUN returns for an address it cannot decode: a LUN
// no target maps, so the command gets LOGICAL UNIT NOT SUPPORTED.
const NoLUN = ^uint64(0)

// DecodeLUN turns an 8-byte SAM LUN (big-endian in a uint64) into the
// flat LUN number. Single-level peripheral device addressing (bus 0) and
// flat space addressing are supported (SAM-5 4.7.7); anything else,
// including multi-level LUNs, decodes to NoLUN.
func DecodeLUN(raw uint64) uint64 {
	if raw&0x0000ffffffffffff != 0 {
		return NoLUN
	}
	hi := uint16(raw >> 48)
	switch hi >> 14 {
	case 0:
		if hi>>8 != 0 {
			return NoLUN
		}
		return uint64(hi & 0xff)
	case 1:
		return uint64(hi & 0x3fff)
	}
	return NoLUN
}

// EncodeLUN returns the 8-byte SAM LUN for lun as REPORT LUNS lists it,
// single level: peripheral device addressing below 256 (what every
// initiator understands), flat space addressing above. lun must be at
// most 0x3fff.
func EncodeLUN(lun uint64) uint64 {
	if lun < 256 {
		return lun << 48
	}
	return uint64(0x4000|uint16(lun&0x3fff)) << 48
}
