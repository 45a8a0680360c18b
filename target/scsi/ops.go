package scsi

// Operation codes the command core implements (SPC-4, SBC-3).
const (
	opTestUnitReady       byte = 0x00
	opRequestSense        byte = 0x03
	opRead6               byte = 0x08
	opWrite6              byte = 0x0a
	opInquiry             byte = 0x12
	opModeSelect6         byte = 0x15
	opReserve6            byte = 0x16
	opRelease6            byte = 0x17
	opModeSense6          byte = 0x1a
	opStartStopUnit       byte = 0x1b
	opPreventAllow        byte = 0x1e
	opReadCapacity10      byte = 0x25
	opRead10              byte = 0x28
	opWrite10             byte = 0x2a
	opWriteVerify10       byte = 0x2e
	opVerify10            byte = 0x2f
	opPreFetch10          byte = 0x34
	opSyncCache10         byte = 0x35
	opWriteSame10         byte = 0x41
	opUnmap               byte = 0x42
	opModeSelect10        byte = 0x55
	opReserve10           byte = 0x56
	opRelease10           byte = 0x57
	opModeSense10         byte = 0x5a
	opRead16              byte = 0x88
	opCompareAndWrite     byte = 0x89
	opWrite16             byte = 0x8a
	opWriteVerify16       byte = 0x8e
	opVerify16            byte = 0x8f
	opPreFetch16          byte = 0x90
	opSyncCache16         byte = 0x91
	opWriteSame16         byte = 0x93
	opOrWrite16           byte = 0x8b
	opReadDefectData10    byte = 0x37
	opReadDefectData12    byte = 0xb7
	opWriteAtomic16       byte = 0x9c
	opServiceActionIn16   byte = 0x9e
	opReportLUNs          byte = 0xa0
	opMaintenanceIn       byte = 0xa3
	opRead12              byte = 0xa8
	opWrite12             byte = 0xaa
	opWriteVerify12       byte = 0xae
	opVerify12            byte = 0xaf
	saReadCapacity16      byte = 0x10
	saGetLBAStatus        byte = 0x12
	saReportSupportedOpcs byte = 0x0c
)

// opFlags say how the dispatcher treats a command before running it.
type opFlags uint8

const (
	// opNoUA: the command neither reports nor clears a pending unit
	// attention (SAM-5 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE).
	opNoUA opFlags = 1 << iota
	// opNoLU: the command runs even when the LUN is not mapped.
	opNoLU
	// opNoConflict: the command is allowed while another nexus holds a
	// RESERVE reservation (SPC-2 5.5.1 table 10).
	opNoConflict
)

// opInfo describes one operation code (or one service action of it).
type opInfo struct {
	name  string
	run   func(*task) error
	flags opFlags
	// usage is the CDB USAGE DATA of REPORT SUPPORTED OPERATION CODES: the
	// CDB with a one in every bit the device server looks at. Its length is
	// the CDB length.
	usage []byte
	// serviceActions, when set, dispatches on CDB byte 1 bits 4..0.
	serviceActions map[byte]*opInfo
	// access is how the command relates to a persistent reservation.
	access prAccess
	// avail, when set, says whether a logical unit offers the command:
	// some depend on what the engine under it can do. Unavailable
	// commands are INVALID COMMAND OPERATION CODE and missing from
	// REPORT SUPPORTED OPERATION CODES.
	avail func(*LogicalUnit) bool
	// sa is the service action this entry implements (with serviceActions
	// set on the parent).
	sa    byte
	hasSA bool
}

func (o *opInfo) cdbLen() int { return len(o.usage) }

// opcodes is the dispatch table, indexed by operation code.
var opcodes [256]*opInfo

// Standard CDB usage masks. Reserved bits are zero; the control byte's
// NACA bit is evaluated (we reject it).
var (
	usage6NoData = []byte{0, 0, 0, 0, 0, 0x04}
	usageRW10    = []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04}
	usageRW12    = []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04}
	usageRW16    = []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04}
)

func withOp(op byte, mask []byte) []byte {
	b := append([]byte(nil), mask...)
	b[0] = op
	return b
}

func init() {
	reg := func(op byte, name string, run func(*task) error, flags opFlags, usage []byte) {
		opcodes[op] = &opInfo{name: name, run: run, flags: flags, usage: withOp(op, usage)}
	}
	reg(opTestUnitReady, "TEST UNIT READY", (*task).testUnitReady, 0, usage6NoData)
	reg(opRequestSense, "REQUEST SENSE", (*task).requestSense, opNoUA|opNoLU|opNoConflict, []byte{0, 0x01, 0, 0, 0xff, 0x04})
	reg(opInquiry, "INQUIRY", (*task).inquiry, opNoUA|opNoLU|opNoConflict, []byte{0, 0x01, 0xff, 0xff, 0xff, 0x04})
	reg(opReportLUNs, "REPORT LUNS", (*task).reportLUNs, opNoUA|opNoLU|opNoConflict, []byte{0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04})
	reg(opModeSense6, "MODE SENSE(6)", (*task).modeSense, 0, []byte{0, 0x08, 0xff, 0xff, 0xff, 0x04})
	reg(opModeSense10, "MODE SENSE(10)", (*task).modeSense, 0, []byte{0, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x04})
	reg(opModeSelect6, "MODE SELECT(6)", (*task).modeSelect, 0, []byte{0, 0x11, 0, 0, 0xff, 0x04})
	reg(opModeSelect10, "MODE SELECT(10)", (*task).modeSelect, 0, []byte{0, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04})
	reg(opReserve6, "RESERVE(6)", (*task).reserve, 0, []byte{0, 0x01, 0, 0, 0, 0x04})
	reg(opRelease6, "RELEASE(6)", (*task).release, opNoConflict, []byte{0, 0x01, 0, 0, 0, 0x04})
	reg(opReserve10, "RESERVE(10)", (*task).reserve, 0, []byte{0, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x04})
	reg(opRelease10, "RELEASE(10)", (*task).release, opNoConflict, []byte{0, 0x12, 0, 0, 0, 0, 0, 0, 0, 0x04})
	reg(opStartStopUnit, "START STOP UNIT", (*task).startStopUnit, 0, []byte{0, 0x01, 0, 0x0f, 0xf7, 0x04})
	reg(opPreventAllow, "PREVENT ALLOW MEDIUM REMOVAL", (*task).preventAllow, 0, []byte{0, 0, 0, 0, 0x03, 0x04})
	reg(opReadCapacity10, "READ CAPACITY(10)", (*task).readCapacity10, 0, []byte{0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0x04})

	reg(opRead6, "READ(6)", (*task).readWrite, 0, []byte{0, 0x1f, 0xff, 0xff, 0xff, 0x04})
	reg(opRead10, "READ(10)", (*task).readWrite, 0, usageRW10)
	reg(opRead12, "READ(12)", (*task).readWrite, 0, usageRW12)
	reg(opRead16, "READ(16)", (*task).readWrite, 0, usageRW16)
	reg(opWrite6, "WRITE(6)", (*task).readWrite, 0, []byte{0, 0x1f, 0xff, 0xff, 0xff, 0x04})
	reg(opWrite10, "WRITE(10)", (*task).readWrite, 0, usageRW10)
	reg(opWrite12, "WRITE(12)", (*task).readWrite, 0, usageRW12)
	reg(opWrite16, "WRITE(16)", (*task).readWrite, 0, usageRW16)
	reg(opVerify10, "VERIFY(10)", (*task).verify, 0, []byte{0, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04})
	reg(opVerify12, "VERIFY(12)", (*task).verify, 0, []byte{0, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opVerify16, "VERIFY(16)", (*task).verify, 0, []byte{0, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opWriteVerify10, "WRITE AND VERIFY(10)", (*task).writeVerify, 0, []byte{0, 0xf2, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04})
	reg(opWriteVerify12, "WRITE AND VERIFY(12)", (*task).writeVerify, 0, []byte{0, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opWriteVerify16, "WRITE AND VERIFY(16)", (*task).writeVerify, 0, []byte{0, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opSyncCache10, "SYNCHRONIZE CACHE(10)", (*task).syncCache, 0, []byte{0, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04})
	reg(opSyncCache16, "SYNCHRONIZE CACHE(16)", (*task).syncCache, 0, []byte{0, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opPreFetch10, "PRE-FETCH(10)", (*task).preFetch, 0, []byte{0, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04})
	reg(opPreFetch16, "PRE-FETCH(16)", (*task).preFetch, 0, []byte{0, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opWriteSame10, "WRITE SAME(10)", (*task).writeSame, 0, []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04})
	reg(opWriteSame16, "WRITE SAME(16)", (*task).writeSame, 0, []byte{0, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opUnmap, "UNMAP", (*task).unmap, 0, []byte{0, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x04})
	reg(opWriteAtomic16, "WRITE ATOMIC(16)", (*task).writeAtomic, 0, []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opOrWrite16, "ORWRITE(16)", (*task).orWrite, 0, []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04})
	reg(opReadDefectData10, "READ DEFECT DATA(10)", (*task).readDefectData, 0, []byte{0, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x04})
	reg(opReadDefectData12, "READ DEFECT DATA(12)", (*task).readDefectData, 0, []byte{0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04})
	reg(opCompareAndWrite, "COMPARE AND WRITE", (*task).compareAndWrite, 0, []byte{0, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x04})

	reg(opPRIn, "PERSISTENT RESERVE IN", (*task).persistentReserveIn, 0, []byte{0, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04})
	reg(opPROut, "PERSISTENT RESERVE OUT", (*task).persistentReserveOut, 0, []byte{0, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04})

	sai := &opInfo{name: "SERVICE ACTION IN(16)", serviceActions: map[byte]*opInfo{}}
	sai.serviceActions[saReadCapacity16] = &opInfo{name: "READ CAPACITY(16)", run: (*task).readCapacity16, usage: []byte{opServiceActionIn16, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x04}, sa: saReadCapacity16, hasSA: true}
	sai.serviceActions[saGetLBAStatus] = &opInfo{name: "GET LBA STATUS", run: (*task).getLBAStatus, usage: []byte{opServiceActionIn16, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04}, sa: saGetLBAStatus, hasSA: true}
	opcodes[opServiceActionIn16] = sai
	mi := &opInfo{name: "MAINTENANCE IN", serviceActions: map[byte]*opInfo{}}
	mi.serviceActions[saReportSupportedOpcs] = &opInfo{name: "REPORT SUPPORTED OPERATION CODES", run: (*task).reportSupportedOpcodes, flags: opNoConflict, usage: []byte{opMaintenanceIn, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04}, sa: saReportSupportedOpcs, hasSA: true}
	opcodes[opMaintenanceIn] = mi
	xc := &opInfo{name: "EXTENDED COPY", serviceActions: map[byte]*opInfo{}}
	xc.serviceActions[saExtendedCopyLID1] = &opInfo{name: "EXTENDED COPY(LID1)", run: (*task).extendedCopy, usage: []byte{opExtendedCopy, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}, sa: saExtendedCopyLID1, hasSA: true}
	opcodes[opExtendedCopy] = xc
	rcr := &opInfo{name: "RECEIVE COPY RESULTS", serviceActions: map[byte]*opInfo{}}
	for _, sa := range []byte{saCopyStatus, saOperatingParams} {
		rcr.serviceActions[sa] = &opInfo{name: "RECEIVE COPY RESULTS", run: (*task).receiveCopyResults, access: prAllowed, usage: []byte{opReceiveCopyResults, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04}, sa: sa, hasSA: true}
	}
	opcodes[opReceiveCopyResults] = rcr

	// Persistent reservation access classes (SPC-4 table 69): everything
	// not listed changes state and is a write (the zero value).
	for _, o := range []*opInfo{opcodes[opInquiry], opcodes[opReportLUNs], opcodes[opRequestSense],
		opcodes[opTestUnitReady], opcodes[opReadCapacity10], sai.serviceActions[saReadCapacity16],
		mi.serviceActions[saReportSupportedOpcs], opcodes[opPRIn], opcodes[opPROut],
		opcodes[opReserve6], opcodes[opReserve10], opcodes[opRelease6], opcodes[opRelease10]} {
		o.access = prAllowed
	}
	for _, op := range []byte{opRead6, opRead10, opRead12, opRead16, opVerify10, opVerify12, opVerify16,
		opPreFetch10, opPreFetch16, opModeSense6, opModeSense10, opReadDefectData10, opReadDefectData12} {
		opcodes[op].access = prRead
	}
	sai.serviceActions[saGetLBAStatus].access = prRead

	opcodes[opUnmap].avail = (*LogicalUnit).thin
	opcodes[opWriteAtomic16].avail = (*LogicalUnit).atomicWrites
}

// supported reports whether lu offers o (lu nil: a LUN that is not mapped,
// where only the commands that need no logical unit are offered anyway).
func (o *opInfo) supported(lu *LogicalUnit) bool {
	return o.avail == nil || lu == nil || o.avail(lu)
}
