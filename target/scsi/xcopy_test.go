package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
)

// xcopyList builds an EXTENDED COPY (LID1) parameter list: one
// identification CSCD descriptor per NAA, then block-to-block segments.
func xcopyList(listID, usage byte, naas [][]byte, segs [][5]uint64) []byte {
	p := make([]byte, xcopyHeaderLen)
	p[0] = listID
	p[1] = usage << 3
	for _, naa := range naas {
		d := make([]byte, cscdDescLen)
		d[0] = cscdIdentDesc
		d[4] = codeSetBinary
		d[5] = desigNAA
		d[7] = byte(len(naa))
		copy(d[8:], naa)
		binary.BigEndian.PutUint32(d[28:], 512)
		p = append(p, d...)
	}
	tdl := len(p) - xcopyHeaderLen
	for _, s := range segs { // src index, dst index, blocks, src LBA, dst LBA
		d := make([]byte, segB2BLen)
		d[0] = segBlockToBlock
		binary.BigEndian.PutUint16(d[2:], segB2BLen-4)
		binary.BigEndian.PutUint16(d[4:], uint16(s[0]))
		binary.BigEndian.PutUint16(d[6:], uint16(s[1]))
		binary.BigEndian.PutUint16(d[10:], uint16(s[2]))
		binary.BigEndian.PutUint64(d[12:], s[3])
		binary.BigEndian.PutUint64(d[20:], s[4])
		p = append(p, d...)
	}
	binary.BigEndian.PutUint16(p[2:], uint16(tdl))
	binary.BigEndian.PutUint32(p[8:], uint32(len(p)-xcopyHeaderLen-tdl))
	return p
}

func xcopyCDB(pll int) []byte {
	c := cdb(opExtendedCopy, 16)
	binary.BigEndian.PutUint32(c[10:], uint32(pll))
	return c
}

func TestExtendedCopy(t *testing.T) {
	f := newFixture(t)
	naa2 := []byte{0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	vol2 := newMemVolume(testBlocks, 512)
	if err := f.tgt.AddLUN(1, NewLogicalUnit(vol2, LUConfig{NAA: naa2})); err != nil {
		t.Fatal(err)
	}
	f.clearUA(f.n1)
	data := fill(64*512, 9)
	expectGood(t, f.run(rw(opWrite10, 10, 100, 64), data))

	// LU 0 → LU 1, and within LU 0 with overlap (forward by 16 blocks).
	pl := xcopyList(1, 0, [][]byte{f.lu.cfg.NAA, naa2}, [][5]uint64{{0, 1, 64, 100, 500}, {0, 0, 64, 100, 116}})
	expectGood(t, f.run(xcopyCDB(len(pl)), pl))
	if !bytes.Equal(vol2.data[500*512:564*512], data) {
		t.Fatal("cross-LU copy wrong")
	}
	if r := f.run(rw(opRead10, 10, 116, 64), nil); !bytes.Equal(r.DataIn, data) {
		t.Fatal("overlapping copy wrong")
	}

	// Copy status for the held list identifier; none for another.
	rcr := func(sa, list byte) []byte {
		c := cdb(opReceiveCopyResults, 16)
		c[1], c[2] = sa, list
		binary.BigEndian.PutUint32(c[10:], 512)
		return c
	}
	r := f.run(rcr(saCopyStatus, 1), nil)
	expectGood(t, r)
	if r.DataIn[4] != 1 || binary.BigEndian.Uint16(r.DataIn[5:]) != 2 || binary.BigEndian.Uint32(r.DataIn[8:]) != 128 {
		t.Errorf("copy status % x", r.DataIn)
	}
	expectSense(t, f.run(rcr(saCopyStatus, 2), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	r = f.run(rcr(saOperatingParams, 0), nil)
	expectGood(t, r)
	if binary.BigEndian.Uint16(r.DataIn[8:]) != maxCSCDDescs || binary.BigEndian.Uint16(r.DataIn[10:]) != maxSegmentDescs || r.DataIn[43] != 2 {
		t.Errorf("operating parameters % x", r.DataIn)
	}

	// Errors.
	expectGood(t, f.run(xcopyCDB(0), nil))
	expectSense(t, f.run(xcopyCDB(len(pl)-1), pl[:len(pl)-1]), SenseIllegalRequest, ascParameterListLength)
	bad := xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 1, 1, 0, 0}})
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), senseCopyAborted, ascUnreachableTarget)
	bad = xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 0, 2, 0, testBlocks - 1}})
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), senseCopyAborted, ascNoAdditionalSense)
	bad = xcopyList(3, 2, [][]byte{{0x60, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9}}, [][5]uint64{{0, 0, 1, 0, 0}})
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), senseCopyAborted, ascCopyTargetNotReach)
	bad = xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 0, 1, 0, 0}})
	bad[xcopyHeaderLen] = 0xe0
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), SenseIllegalRequest, ascUnsuppTargetDescType)
	bad = xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 0, 1, 0, 0}})
	bad[xcopyHeaderLen+cscdDescLen] = 0x03
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), SenseIllegalRequest, ascUnsuppSegmentDesc)
	// SPC-3's LU ID TYPE and NUL bits are obsolete in SPC-4: ignored.
	ok := xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 0, 1, 0, 0}})
	ok[xcopyHeaderLen+1] = 0xe0
	expectGood(t, f.run(xcopyCDB(len(ok)), ok))
	bad = xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 0, 1, 0, 0}})
	bad[xcopyHeaderLen+1] = 0x01 // a sequential-access CSCD
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), SenseIllegalRequest, ascUnsuppTargetDescType)
	many := make([][]byte, maxCSCDDescs+1)
	for i := range many {
		many[i] = f.lu.cfg.NAA
	}
	bad = xcopyList(3, 2, many, [][5]uint64{{0, 0, 1, 0, 0}})
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), SenseIllegalRequest, ascTooManyTargetDescs)
	f.vol.ro = true
	bad = xcopyList(3, 2, [][]byte{f.lu.cfg.NAA}, [][5]uint64{{0, 0, 1, 0, 8}})
	expectSense(t, f.run(xcopyCDB(len(bad)), bad), SenseDataProtect, ascWriteProtected)

	// The Third-party Copy VPD page lists both commands.
	r = f.tgt.Execute(context.Background(), &Command{Nexus: f.n1, CDB: inquiryCDB(true, 0x8f, 255)})
	expectGood(t, r)
	d := r.DataIn[4:]
	if binary.BigEndian.Uint16(d) != 1 || len(d)%4 != 0 || d[5] != opExtendedCopy || d[8] != opReceiveCopyResults {
		t.Errorf("third-party copy VPD % x", r.DataIn)
	}
}
