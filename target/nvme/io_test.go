package nvme

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/internal/rangelock"
)

const nsTestBlocks = 2048

// newTestNamespace is namespace 1 over a fresh 2048-block, 512-byte volume.
func newTestNamespace(t *testing.T) (*Namespace, *nsVolume) {
	t.Helper()
	vol := newNSVolume(nsTestBlocks, 512)
	return NewNamespace(vol, NamespaceConfig{NSID: 1, NGUID: [16]byte{1, 2, 3}, UUID: [16]byte{4, 5, 6}}), vol
}

// ioCmd builds an I/O command for count blocks from slba, with extra CDW12
// bits and data. A command without data gets an SGL length of count
// blocks of bs bytes (what a host reading them describes).
func ioCmd(op uint8, slba uint64, count uint32, cdw12 uint32, data []byte, bs int) *Command {
	c := &Command{Data: data}
	c.SQE[0] = op
	binary.LittleEndian.PutUint16(c.SQE[2:], 0x42)
	binary.LittleEndian.PutUint32(c.SQE[4:], 1)
	binary.LittleEndian.PutUint32(c.SQE[40:], uint32(slba))
	binary.LittleEndian.PutUint32(c.SQE[44:], uint32(slba>>32))
	binary.LittleEndian.PutUint32(c.SQE[48:], (count-1)&0xffff|cdw12)
	l := uint32(len(data))
	if data == nil && op != OpWriteZeroes && op != OpFlush {
		l = count * uint32(bs)
	}
	binary.LittleEndian.PutUint32(c.SQE[32:], l)
	c.SQE[39] = SGLTransportDataBlock<<4 | SGLSubtypeTransport
	return c
}

// dsmCmd builds a Dataset Management command with the given attributes
// and ranges ({slba, nlb} pairs; nlb not 0's based).
func dsmCmd(attr uint32, ranges ...[2]uint64) *Command {
	data := make([]byte, 16*len(ranges))
	for i, r := range ranges {
		binary.LittleEndian.PutUint32(data[i*16+4:], uint32(r[1]))
		binary.LittleEndian.PutUint64(data[i*16+8:], r[0])
	}
	c := &Command{Data: data}
	c.SQE[0] = OpDatasetMgmt
	binary.LittleEndian.PutUint32(c.SQE[4:], 1)
	binary.LittleEndian.PutUint32(c.SQE[32:], uint32(len(data)))
	binary.LittleEndian.PutUint32(c.SQE[40:], uint32(len(ranges)-1))
	binary.LittleEndian.PutUint32(c.SQE[44:], attr)
	return c
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func expectStatus(t *testing.T, what string, got Completion, want Status) {
	t.Helper()
	if got.Status != want {
		t.Fatalf("%s: status %v, want %v", what, got.Status, want)
	}
}

func run(t *testing.T, n *Namespace, c *Command) (Completion, []byte) {
	t.Helper()
	return n.execute(context.Background(), c)
}

func TestWriteReadBack(t *testing.T) {
	n, vol := newTestNamespace(t)
	data := pattern(8*512, 1)
	c, _ := run(t, n, ioCmd(OpWrite, 100, 8, 0, data, 512))
	expectStatus(t, "write", c, StatusSuccess)
	c, got := run(t, n, ioCmd(OpRead, 100, 8, 0, nil, 512))
	expectStatus(t, "read", c, StatusSuccess)
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs from what was written")
	}
	if vol.fuaWrites != 0 {
		t.Fatalf("plain write reached the engine with FUA (%d)", vol.fuaWrites)
	}
	c, _ = run(t, n, ioCmd(OpWrite, 0, 1, cdw12FUA, pattern(512, 9), 512))
	expectStatus(t, "FUA write", c, StatusSuccess)
	if vol.fuaWrites != 1 {
		t.Fatalf("FUA write: engine saw %d FUA writes, want 1", vol.fuaWrites)
	}
	// The last block, a 64-bit SLBA and the largest NLB are decoded right.
	c, _ = run(t, n, ioCmd(OpWrite, nsTestBlocks-1, 1, 0, pattern(512, 3), 512))
	expectStatus(t, "write last block", c, StatusSuccess)
	if !bytes.Equal(vol.data[(nsTestBlocks-1)*512:], pattern(512, 3)) {
		t.Fatal("write of the last block landed elsewhere")
	}
	// FUA and limited retry on a read change nothing.
	c, got = run(t, n, ioCmd(OpRead, 100, 8, cdw12FUA|cdw12LR, nil, 512))
	expectStatus(t, "read FUA LR", c, StatusSuccess)
	if !bytes.Equal(got, data) {
		t.Fatal("read with FUA differs")
	}
}

func TestLBAOutOfRange(t *testing.T) {
	n, _ := newTestNamespace(t)
	want := StatusLBAOutOfRange.WithDNR()
	for _, tc := range []struct {
		name       string
		slba       uint64
		count      uint32
		withData   bool
		op         uint8
		cdw12Extra uint32
	}{
		{"read past end", nsTestBlocks - 1, 2, false, OpRead, 0},
		{"read at end", nsTestBlocks, 1, false, OpRead, 0},
		{"read huge SLBA", 1 << 63, 1, false, OpRead, 0},
		{"read SLBA wraps", ^uint64(0), 2, false, OpRead, 0},
		{"write past end", nsTestBlocks - 4, 8, true, OpWrite, 0},
		{"compare past end", nsTestBlocks - 4, 8, true, OpCompare, 0},
		{"write zeroes past end", nsTestBlocks - 4, 8, false, OpWriteZeroes, 0},
		{"write zeroes DEAC past end", nsTestBlocks, 1, false, OpWriteZeroes, cdw12DEAC},
	} {
		var data []byte
		if tc.withData {
			data = make([]byte, int(tc.count)*512)
		}
		c, _ := run(t, n, ioCmd(tc.op, tc.slba, tc.count, tc.cdw12Extra, data, 512))
		expectStatus(t, tc.name, c, want)
	}
	c, _ := run(t, n, dsmCmd(dsmAD, [2]uint64{10, 1}, [2]uint64{nsTestBlocks - 1, 2}))
	expectStatus(t, "deallocate past end", c, want)
}

func TestDataLength(t *testing.T) {
	n, vol := newTestNamespace(t)
	want := StatusDataSGLLength.WithDNR()
	c, _ := run(t, n, ioCmd(OpWrite, 0, 2, 0, make([]byte, 512), 512))
	expectStatus(t, "short write data", c, want)
	c, _ = run(t, n, ioCmd(OpWrite, 0, 1, 0, make([]byte, 1024), 512))
	expectStatus(t, "long write data", c, want)
	c, _ = run(t, n, ioCmd(OpWrite, 0, 1, 0, nil, 512))
	expectStatus(t, "write without data", c, want)
	c, _ = run(t, n, ioCmd(OpCompare, 0, 2, 0, make([]byte, 512), 512))
	expectStatus(t, "short compare data", c, want)
	rd := ioCmd(OpRead, 0, 2, 0, nil, 512)
	binary.LittleEndian.PutUint32(rd.SQE[32:], 512)
	c, data := run(t, n, rd)
	expectStatus(t, "read into a short buffer", c, want)
	if data != nil {
		t.Fatal("failed read returned data")
	}
	d := dsmCmd(dsmAD, [2]uint64{0, 1}, [2]uint64{8, 1})
	d.Data = d.Data[:16]
	c, _ = run(t, n, d)
	expectStatus(t, "deallocate with one range of two", c, want)
	if vol.writes != 0 || vol.unmaps != 0 {
		t.Fatalf("rejected commands reached the engine: %d writes %d unmaps", vol.writes, vol.unmaps)
	}
	// A read larger than the guard is refused before anything is allocated.
	big := newNSVolume(1<<20, 4096)
	bn := NewNamespace(big, NamespaceConfig{NSID: 1})
	c, _ = run(t, bn, ioCmd(OpRead, 0, 1<<16, 0, nil, 4096))
	expectStatus(t, "256 MiB read", c, StatusInvalidField.WithDNR())
}

func TestInvalidOpcodeAndFuse(t *testing.T) {
	n, _ := newTestNamespace(t)
	for _, op := range []uint8{0x04, 0x0c, 0x0d, 0x11, 0x19, 0x7f, 0x80, 0xff} {
		c, _ := run(t, n, ioCmd(op, 0, 1, 0, nil, 512))
		expectStatus(t, "opcode", c, StatusInvalidOpcode.WithDNR())
	}
	cmp := ioCmd(OpCompare, 0, 1, 0, make([]byte, 512), 512)
	cmp.SQE[1] = FuseFirst
	c, _ := run(t, n, cmp)
	expectStatus(t, "lone fused compare", c, StatusAbortMissingFused)
	cmp.SQE[1] = 3
	c, _ = run(t, n, cmp)
	expectStatus(t, "reserved FUSE", c, StatusInvalidField.WithDNR())
}

func TestWriteProtected(t *testing.T) {
	n, vol := newTestNamespace(t)
	vol.ro = true
	want := StatusNSWriteProtected.WithDNR()
	c, _ := run(t, n, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "write", c, want)
	c, _ = run(t, n, ioCmd(OpWriteZeroes, 0, 1, 0, nil, 512))
	expectStatus(t, "write zeroes", c, want)
	c, _ = run(t, n, dsmCmd(dsmAD, [2]uint64{0, 1}))
	expectStatus(t, "deallocate", c, want)
	// Reads, compares, flushes and hint-only DSM still work.
	c, _ = run(t, n, ioCmd(OpRead, 0, 1, 0, nil, 512))
	expectStatus(t, "read", c, StatusSuccess)
	c, _ = run(t, n, ioCmd(OpCompare, 0, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "compare", c, StatusSuccess)
	c, _ = run(t, n, ioCmd(OpFlush, 0, 1, 0, nil, 512))
	expectStatus(t, "flush", c, StatusSuccess)
	c, _ = run(t, n, dsmCmd(dsmIDR|dsmIDW, [2]uint64{0, 1}))
	expectStatus(t, "DSM hints", c, StatusSuccess)
	if id := n.identify(identifyContext{}); id[idnsNSATTR]&1 == 0 {
		t.Error("Identify Namespace: NSATTR write protected clear on a read-only volume")
	}

	// Frozen by a full file system: Capacity Exceeded.
	vol.frozen = engine.ErrNoSpace
	c, _ = run(t, n, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "write to a volume frozen by ENOSPC", c, StatusCapacityExceeded.WithDNR())

	// The volume turns read-only between the check and the write.
	n2, vol2 := newTestNamespace(t)
	vol2.failErr = engine.ErrReadOnly
	c, _ = run(t, n2, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "write refused by the engine", c, want)
	vol2.failErr = engine.ErrDegraded
	c, _ = run(t, n2, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "write to a degraded volume", c, want)
	c, _ = run(t, n2, ioCmd(OpRead, 0, 1, 0, nil, 512))
	expectStatus(t, "read of a failing degraded volume", c, StatusUnrecoveredRead)
}

func TestEngineErrors(t *testing.T) {
	n, vol := newTestNamespace(t)
	vol.badRead[5] = true
	vol.badWrite[6] = true
	c, _ := run(t, n, ioCmd(OpRead, 4, 2, 0, nil, 512))
	expectStatus(t, "read of a bad block", c, StatusUnrecoveredRead)
	c, _ = run(t, n, ioCmd(OpCompare, 4, 2, 0, make([]byte, 1024), 512))
	expectStatus(t, "compare of a bad block", c, StatusUnrecoveredRead)
	c, _ = run(t, n, ioCmd(OpWrite, 6, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "write of a bad block", c, StatusWriteFault)
	c, _ = run(t, n, ioCmd(OpWriteZeroes, 6, 1, 0, nil, 512))
	expectStatus(t, "write zeroes of a bad block", c, StatusWriteFault)
	vol.failSync = true
	c, _ = run(t, n, ioCmd(OpFlush, 0, 1, 0, nil, 512))
	expectStatus(t, "failed flush", c, StatusWriteFault)
	c, _ = run(t, n, ioCmd(OpWriteZeroes, 0, 1, cdw12FUA, nil, 512))
	expectStatus(t, "write zeroes FUA with failing flush", c, StatusWriteFault)
	vol.failSync = false

	for _, tc := range []struct {
		err  error
		read bool
		want Status
	}{
		{engine.ErrNoSpace, false, StatusCapacityExceeded.WithDNR()},
		{errors.Join(errors.New("pwrite"), errors.New("x")), false, StatusWriteFault},
		{engine.ErrClosed, false, StatusNamespaceNotReady},
		{engine.ErrClosed, true, StatusNamespaceNotReady},
		{engine.ErrOutOfRange, true, StatusLBAOutOfRange.WithDNR()},
		{engine.ErrMedium, true, StatusUnrecoveredRead},
	} {
		vol.failErr = tc.err
		var c Completion
		if tc.read {
			c, _ = run(t, n, ioCmd(OpRead, 0, 1, 0, nil, 512))
		} else {
			c, _ = run(t, n, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
		}
		expectStatus(t, tc.err.Error(), c, tc.want)
	}
	vol.failErr = engine.ErrNoSpace
	c, _ = run(t, n, dsmCmd(dsmAD, [2]uint64{0, 1}))
	expectStatus(t, "deallocate on a full file system", c, StatusCapacityExceeded.WithDNR())
}

func TestCancelled(t *testing.T) {
	n, vol := newTestNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []*Command{
		ioCmd(OpRead, 0, 1, 0, nil, 512),
		ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512),
		ioCmd(OpFlush, 0, 1, 0, nil, 512),
		ioCmd(OpWriteZeroes, 0, 1, 0, nil, 512),
		dsmCmd(dsmAD, [2]uint64{0, 1}),
	} {
		got, _ := n.execute(ctx, c)
		expectStatus(t, "cancelled", got, StatusAbortSQDeleted)
	}
	if vol.writes+vol.zeroes+vol.unmaps+vol.flushes != 0 {
		t.Fatal("a command of a dead connection reached the engine")
	}
	// Cancelled while the engine works on it.
	vol.failErr = context.Canceled
	got, _ := run(t, n, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
	expectStatus(t, "cancelled in the engine", got, StatusAbortSQDeleted)
	x, y := fusedPair(0, 1, make([]byte, 512), make([]byte, 512))
	a, b := n.executeFused(ctx, x, y)
	if a.Status != StatusAbortSQDeleted || b.Status != StatusAbortSQDeleted {
		t.Fatalf("cancelled fused pair: %v %v", a.Status, b.Status)
	}
}

func TestFlush(t *testing.T) {
	n, vol := newTestNamespace(t)
	c, _ := run(t, n, ioCmd(OpFlush, 0, 1, 0, nil, 512))
	expectStatus(t, "flush", c, StatusSuccess)
	if vol.flushes != 1 {
		t.Fatalf("flush: engine flushed %d times", vol.flushes)
	}
}

func TestWriteZeroes(t *testing.T) {
	n, vol := newTestNamespace(t)
	run(t, n, ioCmd(OpWrite, 10, 16, 0, pattern(16*512, 5), 512))
	c, _ := run(t, n, ioCmd(OpWriteZeroes, 12, 4, 0, nil, 512))
	expectStatus(t, "write zeroes", c, StatusSuccess)
	if vol.zeroUnmaps != 0 || !vol.mapped[12] || vol.flushes != 0 {
		t.Fatalf("write zeroes without DEAC deallocated (%d) or flushed (%d)", vol.zeroUnmaps, vol.flushes)
	}
	c, _ = run(t, n, ioCmd(OpWriteZeroes, 20, 4, cdw12DEAC|cdw12FUA, nil, 512))
	expectStatus(t, "write zeroes DEAC FUA", c, StatusSuccess)
	if vol.zeroUnmaps != 1 || vol.mapped[20] || vol.mapped[23] || !vol.mapped[24] {
		t.Fatal("write zeroes with DEAC did not punch exactly its blocks")
	}
	if vol.flushes != 1 {
		t.Fatalf("write zeroes FUA: %d flushes, want 1", vol.flushes)
	}
	_, got := run(t, n, ioCmd(OpRead, 10, 16, 0, nil, 512))
	want := pattern(16*512, 5)
	clear(want[2*512 : 6*512])
	clear(want[10*512 : 14*512])
	if !bytes.Equal(got, want) {
		t.Fatal("zeroed blocks do not read back as zeroes, or others changed")
	}
	// The largest Write Zeroes (65536 blocks) is split into engine calls
	// no larger than MaxUnmap.
	big := newNSVolume(1<<17, 512)
	big.limits.MaxUnmap = 1 << 20
	bn := NewNamespace(big, NamespaceConfig{NSID: 1})
	c, _ = run(t, bn, ioCmd(OpWriteZeroes, 1000, 1<<16, cdw12DEAC, nil, 512))
	expectStatus(t, "65536-block write zeroes", c, StatusSuccess)
	if big.zeroes != 32 {
		t.Fatalf("65536 blocks zeroed in %d engine calls, want 32", big.zeroes)
	}
}

func TestDeallocate(t *testing.T) {
	n, vol := newTestNamespace(t)
	run(t, n, ioCmd(OpWrite, 0, 64, 0, pattern(64*512, 2), 512))
	// Hints alone touch nothing.
	c, _ := run(t, n, dsmCmd(dsmIDR|dsmIDW, [2]uint64{0, 64}))
	expectStatus(t, "hints only", c, StatusSuccess)
	if vol.unmaps != 0 {
		t.Fatal("DSM without AD deallocated")
	}
	c, _ = run(t, n, dsmCmd(dsmAD, [2]uint64{4, 4}, [2]uint64{30, 0}, [2]uint64{40, 2}))
	expectStatus(t, "deallocate", c, StatusSuccess)
	if vol.unmaps != 2 {
		t.Fatalf("deallocate: %d engine unmaps, want 2 (an empty range is skipped)", vol.unmaps)
	}
	for b, want := range map[int]bool{3: true, 4: false, 7: false, 8: true, 30: true, 39: true, 40: false, 41: false, 42: true} {
		if vol.mapped[b] != want {
			t.Errorf("block %d mapped %v, want %v", b, vol.mapped[b], want)
		}
	}
	_, got := run(t, n, ioCmd(OpRead, 4, 4, 0, nil, 512))
	if !bytes.Equal(got, make([]byte, 4*512)) {
		t.Fatal("deallocated blocks do not read zeroes")
	}
	// 256 ranges, the most NR allows.
	rs := make([][2]uint64, 256)
	for i := range rs {
		rs[i] = [2]uint64{uint64(100 + 2*i), 1}
	}
	c, _ = run(t, n, dsmCmd(dsmAD, rs...))
	expectStatus(t, "256 ranges", c, StatusSuccess)
	if vol.unmaps != 2+256 {
		t.Fatalf("256 ranges: %d unmaps", vol.unmaps-2)
	}
	// A volume that cannot deallocate accepts and ignores the request.
	vol.limits.MaxUnmap = 0
	c, _ = run(t, n, dsmCmd(dsmAD, [2]uint64{50, 4}))
	expectStatus(t, "deallocate on a thick volume", c, StatusSuccess)
	if vol.unmaps != 258 || !vol.mapped[50] {
		t.Fatal("thick volume deallocated")
	}
}

func TestReadDeallocatedZeroes(t *testing.T) {
	n, vol := newTestNamespace(t)
	// Never written blocks, punched blocks and zeroed-and-punched blocks
	// all read zeroes.
	_, got := run(t, n, ioCmd(OpRead, 500, 8, 0, nil, 512))
	if !bytes.Equal(got, make([]byte, 8*512)) {
		t.Fatal("unwritten blocks do not read zeroes")
	}
	run(t, n, ioCmd(OpWrite, 500, 8, 0, pattern(8*512, 1), 512))
	run(t, n, dsmCmd(dsmAD, [2]uint64{500, 4}))
	run(t, n, ioCmd(OpWriteZeroes, 504, 4, cdw12DEAC, nil, 512))
	if vol.mapped[500] || vol.mapped[507] {
		t.Fatal("blocks not deallocated")
	}
	_, got = run(t, n, ioCmd(OpRead, 500, 8, 0, nil, 512))
	if !bytes.Equal(got, make([]byte, 8*512)) {
		t.Fatal("deallocated blocks do not read zeroes")
	}
	if id := n.identify(identifyContext{}); id[idnsDLFEAT]&0x7 != 1 || id[idnsDLFEAT]&0x8 == 0 {
		t.Fatalf("DLFEAT %#x does not promise zeroes and DEAC", id[idnsDLFEAT])
	}
}

func TestCompare(t *testing.T) {
	n, _ := newTestNamespace(t)
	data := pattern(4*512, 8)
	run(t, n, ioCmd(OpWrite, 40, 4, 0, data, 512))
	c, _ := run(t, n, ioCmd(OpCompare, 40, 4, 0, data, 512))
	expectStatus(t, "compare equal", c, StatusSuccess)
	other := bytes.Clone(data)
	other[len(other)-1] ^= 1
	c, _ = run(t, n, ioCmd(OpCompare, 40, 4, 0, other, 512))
	expectStatus(t, "compare different", c, StatusCompareFailure)
}

func fusedPair(slba uint64, count uint32, verify, data []byte) (*Command, *Command) {
	a := ioCmd(OpCompare, slba, count, 0, verify, 512)
	a.SQE[1] = FuseFirst
	b := ioCmd(OpWrite, slba, count, 0, data, 512)
	b.SQE[1] = FuseSecond
	return a, b
}

func TestFusedCompareAndWrite(t *testing.T) {
	n, vol := newTestNamespace(t)
	ctx := context.Background()
	old, neu := pattern(1024, 1), pattern(1024, 2)
	run(t, n, ioCmd(OpWrite, 8, 2, 0, old, 512))
	x, y := fusedPair(8, 2, old, neu)
	a, b := n.executeFused(ctx, x, y)
	if !a.Status.OK() || !b.Status.OK() {
		t.Fatalf("matching compare and write: %v %v", a.Status, b.Status)
	}
	if !bytes.Equal(vol.data[8*512:10*512], neu) {
		t.Fatal("compare and write did not write")
	}
	// The blocks now hold neu: comparing against old fails and the write
	// is aborted.
	x, y = fusedPair(8, 2, old, pattern(1024, 3))
	a, b = n.executeFused(ctx, x, y)
	if a.Status != StatusCompareFailure || b.Status != StatusAbortFailedFused {
		t.Fatalf("miscompare: %v %v", a.Status, b.Status)
	}
	if !bytes.Equal(vol.data[8*512:10*512], neu) {
		t.Fatal("miscompare wrote")
	}

	bad := func(name string, mod func(a, b *Command), wantA, wantB Status) {
		t.Helper()
		x, y := fusedPair(8, 2, neu, old)
		mod(x, y)
		ga, gb := n.executeFused(ctx, x, y)
		if ga.Status != wantA || gb.Status != wantB {
			t.Errorf("%s: %v %v, want %v %v", name, ga.Status, gb.Status, wantA, wantB)
		}
		if !bytes.Equal(vol.data[8*512:10*512], neu) {
			t.Fatalf("%s: wrote", name)
		}
	}
	abort := StatusAbortFailedFused
	bad("first not a compare", func(a, b *Command) { a.SQE[0] = OpRead }, StatusInvalidOpcode.WithDNR(), abort)
	bad("second not a write", func(a, b *Command) { b.SQE[0] = OpWriteZeroes }, abort, StatusInvalidOpcode.WithDNR())
	bad("different SLBA", func(a, b *Command) { b.SQE[40] = 9 }, abort, StatusInvalidField.WithDNR())
	bad("different NSID", func(a, b *Command) { b.SQE[4] = 2 }, StatusInvalidField.WithDNR(), abort)
	bad("FUSE bits", func(a, b *Command) { b.SQE[1] = FuseFirst }, StatusInvalidField.WithDNR(), abort)
	bad("short compare data", func(a, b *Command) { a.Data = a.Data[:512] }, StatusDataSGLLength.WithDNR(), abort)
	bad("short write data", func(a, b *Command) { b.Data = b.Data[:512] }, abort, StatusDataSGLLength.WithDNR())
	bad("out of range", func(a, b *Command) {
		binary.LittleEndian.PutUint32(a.SQE[40:], nsTestBlocks)
		binary.LittleEndian.PutUint32(b.SQE[40:], nsTestBlocks)
	}, StatusLBAOutOfRange.WithDNR(), abort)
	// FUA on the write half reaches the engine.
	x, y = fusedPair(8, 2, neu, old)
	binary.LittleEndian.PutUint32(y.SQE[48:], 1|cdw12FUA)
	if ga, gb := n.executeFused(ctx, x, y); !ga.Status.OK() || !gb.Status.OK() || vol.fuaWrites != 1 {
		t.Fatalf("fused with FUA: %v %v, %d FUA writes", ga.Status, gb.Status, vol.fuaWrites)
	}
	x, y = fusedPair(8, 2, old, neu)
	if ga, gb := n.executeFused(ctx, x, y); !ga.Status.OK() || !gb.Status.OK() {
		t.Fatalf("fused back: %v %v", ga.Status, gb.Status)
	}
	vol.ro = true
	bad("read-only", func(a, b *Command) {}, abort, StatusNSWriteProtected.WithDNR())
	vol.ro = false
	vol.badWrite[9] = true
	x, y = fusedPair(8, 2, neu, old)
	if ga, gb := n.executeFused(ctx, x, y); ga.Status != StatusSuccess || gb.Status != StatusWriteFault {
		t.Errorf("write fault after compare: %v %v", ga.Status, gb.Status)
	}
}

func TestStats(t *testing.T) {
	n, _ := newTestNamespace(t)
	run(t, n, ioCmd(OpWrite, 0, 3, 0, make([]byte, 3*512), 512))
	run(t, n, ioCmd(OpWrite, 0, 1, 0, make([]byte, 512), 512))
	run(t, n, ioCmd(OpRead, 0, 8, 0, nil, 512))
	run(t, n, ioCmd(OpCompare, 0, 2, 0, make([]byte, 1024), 512))
	run(t, n, ioCmd(OpWriteZeroes, 0, 100, 0, nil, 512))
	run(t, n, ioCmd(OpRead, nsTestBlocks, 1, 0, nil, 512)) // fails: not counted
	s := n.stats()
	if s.Units512Written != 4 || s.Units512Read != 10 || s.HostWriteCommands != 3 || s.HostReadCommands != 2 {
		t.Fatalf("stats %+v", s)
	}
	for in, want := range map[uint64]uint64{0: 0, 1: 1, 1000: 1, 1001: 2, 2001: 3, 3000: 3} {
		if got := DataUnits(in); got != want {
			t.Errorf("DataUnits(%d) = %d, want %d", in, got, want)
		}
	}
	// 4 KiB blocks count eight 512-byte units each.
	vol := newNSVolume(64, 4096)
	n4 := NewNamespace(vol, NamespaceConfig{NSID: 1})
	run(t, n4, ioCmd(OpWrite, 0, 2, 0, make([]byte, 8192), 4096))
	if s := n4.stats(); s.Units512Written != 16 {
		t.Fatalf("4 KiB blocks: %d units written", s.Units512Written)
	}
}

func TestSetWriteCache(t *testing.T) {
	var saved []bool
	vol := newNSVolume(64, 512)
	n := NewNamespace(vol, NamespaceConfig{NSID: 1, Locks: new(rangelock.Locks), SaveWriteCache: func(on bool) error {
		saved = append(saved, on)
		return nil
	}})
	if err := n.SetWriteCache(false); err != nil {
		t.Fatal(err)
	}
	if vol.wce || n.WriteCache() || len(saved) != 1 || saved[0] {
		t.Fatalf("write cache off: volume %v, saved %v", vol.wce, saved)
	}
	vol.failErr = engine.ErrClosed
	if err := n.SetWriteCache(true); !errors.Is(err, engine.ErrClosed) || len(saved) != 1 {
		t.Fatalf("failing volume: %v, saved %v", err, saved)
	}
	vol.failErr = nil
	n.cfg.SaveWriteCache = func(bool) error { return errors.New("catalog full") }
	if err := n.SetWriteCache(true); err == nil {
		t.Fatal("a failed save is not reported")
	}
}
