package nvme

import (
	"encoding/binary"
	"testing"
)

func TestCommandFields(t *testing.T) {
	var c Command
	c.SQE[0] = OpWrite
	c.SQE[1] = FuseFirst | 1<<6
	binary.LittleEndian.PutUint16(c.SQE[2:], 0xbeef)
	binary.LittleEndian.PutUint32(c.SQE[4:], 7)
	binary.LittleEndian.PutUint32(c.SQE[32:], 8192)
	c.SQE[39] = SGLTransportDataBlock<<4 | SGLSubtypeTransport
	binary.LittleEndian.PutUint32(c.SQE[48:], 0x12345678)
	if c.Opcode() != OpWrite || c.Fuse() != FuseFirst || c.PSDT() != 1 || c.CID() != 0xbeef || c.NSID() != 7 || c.CDW(12) != 0x12345678 {
		t.Fatalf("fields: op %#x fuse %d psdt %d cid %#x nsid %d cdw12 %#x", c.Opcode(), c.Fuse(), c.PSDT(), c.CID(), c.NSID(), c.CDW(12))
	}
	if _, n, typ, sub := c.SGL(); n != 8192 || typ != SGLTransportDataBlock || sub != SGLSubtypeTransport {
		t.Fatalf("SGL: length %d type %#x subtype %#x", n, typ, sub)
	}
}

func TestCommandDirection(t *testing.T) {
	for _, tc := range []struct {
		op, fctype uint8
		want       Direction
	}{
		{OpFlush, 0, DirNone},
		{OpWrite, 0, DirHostToController},
		{OpRead, 0, DirControllerToHost},
		{OpIdentify, 0, DirControllerToHost},
		{OpFabrics, FabricsConnect, DirHostToController},
		{OpFabrics, FabricsPropertyGet, DirNone},
	} {
		c := Command{}
		c.SQE[0], c.SQE[4] = tc.op, tc.fctype
		if got := c.Direction(); got != tc.want {
			t.Errorf("opcode %#x fctype %#x: direction %d, want %d", tc.op, tc.fctype, got, tc.want)
		}
	}
}

func TestCompletionCQE(t *testing.T) {
	e := Completion{DW0: 1, DW1: 2, Status: StatusLBAOutOfRange.WithDNR()}.CQE(3, 4, 5)
	if binary.LittleEndian.Uint32(e[0:]) != 1 || binary.LittleEndian.Uint32(e[4:]) != 2 ||
		binary.LittleEndian.Uint16(e[8:]) != 3 || binary.LittleEndian.Uint16(e[10:]) != 4 || binary.LittleEndian.Uint16(e[12:]) != 5 {
		t.Fatalf("CQE dwords: % x", e)
	}
	st := binary.LittleEndian.Uint16(e[14:])
	if st&1 != 0 || Status(st>>1).SC() != 0x80 || !Status(st>>1).DNR() {
		t.Fatalf("CQE status word %#x", st)
	}
	if StatusCompareFailure.SCT() != SCTMediaError || StatusCompareFailure.SC() != 0x85 {
		t.Fatalf("compare failure is %v", StatusCompareFailure)
	}
}
