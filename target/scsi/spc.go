package scsi

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Primary commands (SPC-4).

func (x *task) testUnitReady() error { return nil }

// requestSense returns the nexus's oldest unit attention as parameter data
// (clearing it), or NO SENSE. Every other condition is reported with the
// command that caused it (autosense), so nothing else is ever pending.
func (x *task) requestSense() error {
	desc := x.cdb[1]&0x01 != 0
	alloc := int(x.cdb[4])
	if x.cdb[1]&0xfe != 0 {
		return invalidCDB(1, -1)
	}
	var cc *checkCondition
	switch {
	case x.lu == nil:
		cc = errLUNotSupp
	default:
		if asc, ok := x.st.pop(); ok {
			cc = newCC(SenseUnitAttention, asc)
		} else {
			cc = newCC(SenseNoSense, ascNoAdditionalSense)
		}
	}
	return x.dataIn(cc.sense(desc), alloc)
}

// T10 version descriptors (SPC-4 table 49) reported in standard INQUIRY.
var versionDescriptors = []uint16{
	0x00a0, // SAM-5 (no version claimed)
	0x0960, // iSCSI (no version claimed)
	0x0460, // SPC-4 (no version claimed)
	0x04c0, // SBC-3 (no version claimed)
}

// Peripheral device type and qualifier.
const (
	devTypeDisk  = 0x00
	pqNotPresent = 0x03 << 5 // peripheral qualifier 011b: no LU at this LUN
	devTypeNone  = 0x1f
)

func (x *task) inquiry() error {
	evpd := x.cdb[1]&0x01 != 0
	if x.cdb[1]&0xfe != 0 { // CMDDT (obsolete) and reserved bits
		return invalidCDB(1, -1)
	}
	page := x.cdb[2]
	alloc := int(binary.BigEndian.Uint16(x.cdb[3:]))
	if !evpd {
		if page != 0 {
			return invalidCDB(2, -1)
		}
		return x.dataIn(x.standardInquiry(), alloc)
	}
	if x.lu == nil {
		return errLUNotSupp
	}
	var b []byte
	switch page {
	case 0x00:
		b = vpdPage(0x00, supportedVPDPages)
	case 0x80:
		b = vpdPage(0x80, []byte(x.lu.serial))
	case 0x83:
		b = vpdPage(0x83, x.deviceIdentification())
	case 0xb0:
		b = vpdPage(0xb0, x.lu.blockLimits())
	case 0xb1:
		bdc := make([]byte, 0x3c)
		binary.BigEndian.PutUint16(bdc[0:], 1) // non-rotating medium
		b = vpdPage(0xb1, bdc)
	case 0xb2:
		b = vpdPage(0xb2, x.lu.provisioning())
	case 0x8f:
		b = vpdPage(0x8f, thirdPartyCopyVPD())
	default:
		return invalidCDB(2, -1)
	}
	return x.dataIn(b, alloc)
}

var supportedVPDPages = []byte{0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2}

// vpdPage wraps a VPD page's body in its 4-byte header.
func vpdPage(code byte, body []byte) []byte {
	b := make([]byte, 4+len(body))
	b[0] = devTypeDisk
	b[1] = code
	binary.BigEndian.PutUint16(b[2:], uint16(len(body)))
	copy(b[4:], body)
	return b
}

// padASCII copies s into a field of n bytes padded with spaces, as INQUIRY's
// identification fields require.
func padASCII(dst []byte, s string) {
	for i := range dst {
		if i < len(s) && s[i] >= 0x20 && s[i] < 0x7f {
			dst[i] = s[i]
		} else {
			dst[i] = ' '
		}
	}
}

func (x *task) standardInquiry() []byte {
	b := make([]byte, 96)
	if x.lu == nil {
		b[0] = pqNotPresent | devTypeNone
	} else {
		b[0] = devTypeDisk
	}
	b[2] = 0x06        // VERSION: SPC-4
	b[3] = 0x10 | 0x02 // HISUP, RESPONSE DATA FORMAT 2
	b[4] = byte(len(b) - 5)
	b[5] = 0x08 // 3PC: EXTENDED COPY is supported
	b[7] = 0x02 // CMDQUE
	cfg := LUConfig{VendorID: "ANVIL", ProductID: "Anvil Volume", Revision: "0001"}
	if x.lu != nil {
		cfg = x.lu.cfg
	}
	padASCII(b[8:16], cfg.VendorID)
	padASCII(b[16:32], cfg.ProductID)
	padASCII(b[32:36], cfg.Revision)
	for i, v := range versionDescriptors {
		binary.BigEndian.PutUint16(b[58+2*i:], v)
	}
	return b
}

// Designation descriptor fields (SPC-4 7.8.6.1).
const (
	codeSetBinary = 0x1
	codeSetASCII  = 0x2
	codeSetUTF8   = 0x3

	assocLU         = 0x0 << 4
	assocTargetPort = 0x1 << 4
	assocTarget     = 0x2 << 4

	desigT10Vendor  = 0x1
	desigNAA        = 0x3
	desigRelTgtPort = 0x4
	desigTPG        = 0x5
	desigSCSIName   = 0x8

	protoISCSI = 0x5 << 4
	piv        = 0x80
)

func designator(proto, codeSet, flags byte, d []byte) []byte {
	return append([]byte{proto | codeSet, flags, 0, byte(len(d))}, d...)
}

// scsiNameString encodes a SCSI name string designator: null-terminated
// and padded with nulls to a multiple of four bytes.
func scsiNameString(s string) []byte {
	n := len(s) + 1
	n = (n + 3) &^ 3
	if n > 252 {
		n = 252
		s = s[:251]
	}
	b := make([]byte, n)
	copy(b, s)
	return b
}

func (x *task) deviceIdentification() []byte {
	var b []byte
	lu := x.lu
	if len(lu.cfg.NAA) > 0 {
		b = append(b, designator(0, codeSetBinary, assocLU|desigNAA, lu.cfg.NAA)...)
	}
	b = append(b, designator(0, codeSetASCII, assocLU|desigT10Vendor, lu.t10Designator())...)
	if x.n.TargetPort != "" {
		b = append(b, designator(protoISCSI, codeSetUTF8, piv|assocTargetPort|desigSCSIName, scsiNameString(x.n.TargetPort))...)
	}
	var rel [4]byte
	binary.BigEndian.PutUint16(rel[2:], x.n.RelativeTargetPortID)
	b = append(b, designator(protoISCSI, codeSetBinary, piv|assocTargetPort|desigRelTgtPort, rel[:])...)
	var tpg [4]byte
	binary.BigEndian.PutUint16(tpg[2:], x.n.TargetPortGroup)
	b = append(b, designator(protoISCSI, codeSetBinary, piv|assocTargetPort|desigTPG, tpg[:])...)
	if x.t.name != "" {
		b = append(b, designator(protoISCSI, codeSetUTF8, piv|assocTarget|desigSCSIName, scsiNameString(x.t.name))...)
	}
	return b
}

// maxTransferBytes caps a single command's transfer so that one CDB cannot
// make us allocate gigabytes. It matches the iSCSI transport's default
// limit on a command's expected data transfer length.
const maxTransferBytes = 32 << 20

// maxTransferBlocks is the largest transfer length, in blocks, that a read
// or write may ask for (MAXIMUM TRANSFER LENGTH).
func (lu *LogicalUnit) maxTransferBlocks() uint64 {
	return max(uint64(maxTransferBytes)/uint64(lu.vol.BlockSize()), 1)
}

// atomicWrites reports whether WRITE ATOMIC(16) is offered: only when the
// engine makes more than a single block all-or-nothing, which every write
// already is.
func (lu *LogicalUnit) atomicWrites() bool {
	return lu.vol.Limits().AtomicWriteMax > int64(lu.vol.BlockSize())
}

// maxAtomicBlocks is the MAXIMUM ATOMIC TRANSFER LENGTH: what the engine
// writes all-or-nothing in one call (at least one block, which every
// engine write is).
func (lu *LogicalUnit) maxAtomicBlocks() uint64 {
	bs := uint64(lu.vol.BlockSize())
	n := max(uint64(max(lu.vol.Limits().AtomicWriteMax, 0))/bs, 1)
	return min(n, lu.maxTransferBlocks(), 0xffff)
}

// maxWriteSameBlocks is the MAXIMUM WRITE SAME LENGTH: the same 32 MiB a
// single transfer may span. Initiators (and libiscsi's tests) size the
// ordinary writes they pair with WRITE SAME by it, and deallocating more at
// once is what UNMAP, with its own larger limit, is for.
func (lu *LogicalUnit) maxWriteSameBlocks() uint64 { return lu.maxTransferBlocks() }

// maxUnmapDescriptors bounds an UNMAP parameter list.
const maxUnmapDescriptors = 256

// maxCompareAndWriteBlocks is the MAXIMUM COMPARE AND WRITE LENGTH.
const maxCompareAndWriteBlocks = 255

func (lu *LogicalUnit) thin() bool { return lu.vol.Limits().MaxUnmap > 0 }

// maxUnmapLBACount caps the MAXIMUM UNMAP LBA COUNT we advertise. Initiators
// (and libiscsi's sanity check) expect an explicit limit of at most 1M
// blocks; larger requests are split by the initiator, and each UNMAP stays
// short enough to answer promptly.
const maxUnmapLBACount = 1 << 20

// maxUnmapBlocks is the most blocks one UNMAP command may deallocate.
func (lu *LogicalUnit) maxUnmapBlocks() uint64 {
	n := uint64(lu.vol.Limits().MaxUnmap) / uint64(lu.vol.BlockSize())
	return max(min(n, maxUnmapLBACount), 1)
}

// blockLimits builds the Block Limits VPD page body (SBC-3 6.5.3).
func (lu *LogicalUnit) blockLimits() []byte {
	b := make([]byte, 0x3c)
	bs := int64(lu.vol.BlockSize())
	lim := lu.vol.Limits()
	b[1] = maxCompareAndWriteBlocks
	binary.BigEndian.PutUint16(b[2:], 1) // OPTIMAL TRANSFER LENGTH GRANULARITY
	binary.BigEndian.PutUint32(b[4:], uint32(lu.maxTransferBlocks()))
	if opt := lim.OptimalTransfer; opt > 0 {
		binary.BigEndian.PutUint32(b[8:], uint32(min(max(uint64(opt/bs), 1), lu.maxTransferBlocks())))
	}
	binary.BigEndian.PutUint32(b[12:], uint32(lu.maxTransferBlocks())) // MAXIMUM PREFETCH LENGTH
	if lim.MaxUnmap > 0 {
		binary.BigEndian.PutUint32(b[16:], uint32(lu.maxUnmapBlocks()))
		binary.BigEndian.PutUint32(b[20:], maxUnmapDescriptors)
		binary.BigEndian.PutUint32(b[24:], 1) // OPTIMAL UNMAP GRANULARITY
	}
	binary.BigEndian.PutUint64(b[32:], lu.maxWriteSameBlocks())
	if lu.atomicWrites() {
		// The atomic fields describe WRITE ATOMIC(16); they must be zero
		// when it is not offered.
		binary.BigEndian.PutUint32(b[40:], uint32(lu.maxAtomicBlocks())) // MAXIMUM ATOMIC TRANSFER LENGTH
		binary.BigEndian.PutUint32(b[44:], 1)                            // ATOMIC ALIGNMENT
		binary.BigEndian.PutUint32(b[48:], 1)                            // ATOMIC TRANSFER LENGTH GRANULARITY
	}
	return b
}

// provisioning builds the Logical Block Provisioning VPD page body (SBC-3
// 6.5.4).
func (lu *LogicalUnit) provisioning() []byte {
	b := make([]byte, 4)
	if lu.thin() {
		// LBPU (UNMAP), LBPWS (WRITE SAME(16) UNMAP), LBPWS10, LBPRZ:
		// unmapped blocks read as zeroes.
		b[1] = 0x80 | 0x40 | 0x20 | 0x04
		b[2] = 0x02 // PROVISIONING TYPE: thin
	}
	return b
}

// reportLUNs answers REPORT LUNS (SPC-4 6.33). Select reports 0 (all
// logical units), 1 (well-known: none) and 2 (all) are supported.
func (x *task) reportLUNs() error {
	sel := x.cdb[2]
	alloc := int(binary.BigEndian.Uint32(x.cdb[6:]))
	if alloc < 16 {
		return invalidCDB(6, -1)
	}
	var luns []uint64
	switch sel {
	case 0x00, 0x02:
		luns = x.t.LUNs()
	case 0x01:
	default:
		return invalidCDB(2, -1)
	}
	b := make([]byte, 8+8*len(luns))
	binary.BigEndian.PutUint32(b, uint32(8*len(luns)))
	for i, l := range luns {
		binary.BigEndian.PutUint64(b[8+8*i:], EncodeLUN(l))
	}
	if x.st != nil {
		x.st.remove(ascReportedLUNsChanged)
	}
	return x.dataIn(b, alloc)
}

// reserve handles RESERVE(6) and RESERVE(10) (SPC-2 7.21): a whole-unit
// reservation for the nexus. Extents and third-party reservations are not
// supported.
func (x *task) reserve() error {
	return x.reservation(opReserve6, func(lu *LogicalUnit) {
		if lu.reservedBy != nil && lu.reservedBy != x.n {
			x.res.Status = StatusReservationConflict
			return
		}
		lu.reservedBy = x.n
		lu.resHeld.Store(true)
	})
}

// release handles RELEASE(6) and RELEASE(10). Releasing a reservation held
// by another nexus, or none, succeeds without effect.
func (x *task) release() error {
	return x.reservation(opRelease6, func(lu *LogicalUnit) {
		if lu.reservedBy == x.n {
			lu.reservedBy = nil
			lu.resHeld.Store(false)
		}
	})
}

// reservation checks a RESERVE or RELEASE CDB (op6 is the 6-byte opcode of
// the pair) and runs change with the unit's reservation lock held, unless
// persistent reservations are in use.
func (x *task) reservation(op6 byte, change func(*LogicalUnit)) error {
	if x.cdb[0] == op6 {
		if x.cdb[1]&0x01 != 0 {
			return invalidCDB(1, 0) // EXTENT
		}
	} else if x.cdb[1]&0x12 != 0 {
		return invalidCDB(1, 4) // 3RDPTY / LONGID
	}
	lu := x.lu
	if lu.pr.active.Load() {
		// SPC-4 5.12.3: RESERVE/RELEASE conflict while persistent
		// reservation registrations exist.
		x.res.Status = StatusReservationConflict
		return nil
	}
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	change(lu)
	return nil
}

// startStopUnit handles START STOP UNIT (SBC-3 5.25). The medium is not
// removable (INQUIRY RMB=0) and always ready: LOEJ asks for something a
// fixed disk cannot do and is rejected, as real fixed disks do; START and
// the power conditions change nothing, but a stop without NO_FLUSH writes
// the cache back as a real disk would before spinning down.
func (x *task) startStopUnit() error {
	pc := x.cdb[4] >> 4
	switch pc {
	case 0x0, 0x1, 0x2, 0x3, 0x5, 0x7, 0xa, 0xb:
	default:
		return invalidCDB(4, 7)
	}
	start := x.cdb[4]&0x01 != 0
	loej := x.cdb[4]&0x02 != 0
	noFlush := x.cdb[4]&0x04 != 0
	if pc == 0 && loej {
		return invalidCDB(4, 1)
	}
	if pc == 0 && !start && !noFlush {
		if err := x.lu.vol.Flush(x.ctx); err != nil {
			return fmt.Errorf("start stop unit: flush: %w", err)
		}
	}
	return nil
}

// preventAllow accepts PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.13). The
// medium cannot be removed, so the state has no effect.
func (x *task) preventAllow() error {
	return nil
}

// reportSupportedOpcodes answers REPORT SUPPORTED OPERATION CODES (SPC-4
// 6.35) from the dispatch table.
func (x *task) reportSupportedOpcodes() error {
	rctd := x.cdb[2]&0x80 != 0
	opts := x.cdb[2] & 0x07
	reqOp := x.cdb[3]
	reqSA := binary.BigEndian.Uint16(x.cdb[4:])
	alloc := int(binary.BigEndian.Uint32(x.cdb[6:]))
	timeouts := func() []byte {
		t := make([]byte, 12)
		binary.BigEndian.PutUint16(t, 0x0a)
		return t
	}
	switch opts {
	case 0:
		var all []*opInfo
		for _, o := range opcodes {
			switch {
			case o == nil || !o.supported(x.lu):
			case o.serviceActions != nil:
				sas := make([]byte, 0, len(o.serviceActions))
				for sa := range o.serviceActions {
					sas = append(sas, sa)
				}
				slices.Sort(sas)
				for _, sa := range sas {
					all = append(all, o.serviceActions[sa])
				}
			default:
				all = append(all, o)
			}
		}
		b := make([]byte, 4)
		for _, o := range all {
			d := make([]byte, 8)
			d[0] = o.usage[0]
			if o.hasSA {
				binary.BigEndian.PutUint16(d[2:], uint16(o.sa))
				d[5] |= 0x01 // SERVACTV
			}
			if rctd {
				d[5] |= 0x02 // CTDP
			}
			binary.BigEndian.PutUint16(d[6:], uint16(len(o.usage)))
			b = append(b, d...)
			if rctd {
				b = append(b, timeouts()...)
			}
		}
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
		return x.dataIn(b, alloc)
	case 1, 2, 3:
		o := opcodes[reqOp]
		var found *opInfo
		switch {
		case o == nil || !o.supported(x.lu):
		case o.serviceActions != nil:
			if opts == 1 {
				return invalidCDB(2, 2)
			}
			if reqSA <= 0x1f {
				found = o.serviceActions[byte(reqSA)]
			}
		default:
			if opts == 2 {
				return invalidCDB(2, 2)
			}
			if opts == 3 && reqSA != 0 {
				// The opcode has no service actions, so this one is not
				// supported.
				break
			}
			found = o
		}
		b := make([]byte, 4)
		if found == nil {
			b[1] = 0x01 // SUPPORT: not supported
			return x.dataIn(b, alloc)
		}
		b[1] = 0x03 // SUPPORT: supported as in the standard
		if rctd {
			b[1] |= 0x80
		}
		binary.BigEndian.PutUint16(b[2:], uint16(len(found.usage)))
		b = append(b, found.usage...)
		if rctd {
			b = append(b, timeouts()...)
		}
		return x.dataIn(b, alloc)
	default:
		return invalidCDB(2, 2)
	}
}
