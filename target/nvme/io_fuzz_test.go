package nvme

import (
	"context"
	"encoding/binary"
	"testing"
)

// ioStatuses are every status the namespace may answer an I/O command
// with; anything else (Internal above all) is a bug.
var ioStatuses = map[Status]bool{
	StatusSuccess:                    true,
	StatusInvalidOpcode.WithDNR():    true,
	StatusInvalidField.WithDNR():     true,
	StatusDataSGLLength.WithDNR():    true,
	StatusAbortSQDeleted:             true,
	StatusAbortFailedFused:           true,
	StatusAbortMissingFused:          true,
	StatusNSWriteProtected.WithDNR(): true,
	StatusLBAOutOfRange.WithDNR():    true,
	StatusCapacityExceeded.WithDNR(): true,
	StatusNamespaceNotReady:          true,
	StatusWriteFault:                 true,
	StatusUnrecoveredRead:            true,
	StatusCompareFailure:             true,
}

// FuzzIOCommand feeds arbitrary submission queue entries and data to a
// namespace, alone or as a fused pair (when sqe2 is not empty), over a
// volume whose state mode selects (bit 0 read-only, bit 1 cannot
// deallocate, bit 2 block 1 fails, bit 3 4 KiB blocks). The namespace must
// never panic, answer only statuses from ioStatuses, and return read data
// exactly when a Read succeeds.
func FuzzIOCommand(f *testing.F) {
	seed := func(op uint8, slba uint64, cdw12 uint32, sgl uint32) []byte {
		c := ioCmd(op, slba, 1, 0, nil, 512)
		binary.LittleEndian.PutUint32(c.SQE[48:], cdw12)
		binary.LittleEndian.PutUint32(c.SQE[32:], sgl)
		return c.SQE[:]
	}
	f.Add(seed(OpRead, 0, 7, 4096), []byte{}, []byte{}, byte(0))
	f.Add(seed(OpWrite, 8, 1|cdw12FUA, 1024), make([]byte, 1024), []byte{}, byte(0))
	f.Add(seed(OpWriteZeroes, 8, 100|cdw12DEAC, 0), []byte{}, []byte{}, byte(2))
	f.Add(seed(OpFlush, 0, 0, 0), []byte{}, []byte{}, byte(4))
	f.Add(seed(OpCompare, 0, 0, 512), make([]byte, 512), []byte{}, byte(0))
	d := dsmCmd(dsmAD, [2]uint64{0, 8}, [2]uint64{100, 1})
	f.Add(d.SQE[:], d.Data, []byte{}, byte(0))
	a, b := fusedPair(4, 1, make([]byte, 512), make([]byte, 512))
	f.Add(a.SQE[:], a.Data, b.SQE[:], byte(0))
	f.Add(a.SQE[:], a.Data, b.SQE[:], byte(1))
	f.Fuzz(func(t *testing.T, sqe, data, sqe2 []byte, mode byte) {
		bs := 512
		if mode&8 != 0 {
			bs = 4096
		}
		vol := newNSVolume(256, bs)
		vol.ro = mode&1 != 0
		if mode&2 != 0 {
			vol.limits.MaxUnmap = 0
		}
		if mode&4 != 0 {
			vol.badRead[1], vol.badWrite[1] = true, true
		}
		n := NewNamespace(vol, NamespaceConfig{NSID: 1})
		c := &Command{Data: data}
		copy(c.SQE[:], sqe)
		check := func(what string, st Status) {
			if !ioStatuses[st] {
				t.Fatalf("%s: status %v not an I/O status (SQE % x)", what, st, c.SQE)
			}
		}
		if len(sqe2) == 0 {
			comp, out := n.execute(context.Background(), c)
			check("execute", comp.Status)
			wantData := comp.Status.OK() && c.Opcode() == OpRead && c.Fuse() == FuseNone
			if wantData != (out != nil) {
				t.Fatalf("status %v opcode %#x returned %d bytes", comp.Status, c.Opcode(), len(out))
			}
			if out != nil && len(out) != int(c.CDW(12)&cdw12NLB+1)*bs {
				t.Fatalf("read of %d blocks returned %d bytes", c.CDW(12)&cdw12NLB+1, len(out))
			}
			return
		}
		c2 := &Command{Data: data}
		copy(c2.SQE[:], sqe2)
		x, y := n.executeFused(context.Background(), c, c2)
		check("fused first", x.Status)
		check("fused second", y.Status)
		if x.Status.OK() != (y.Status.OK() || y.Status == StatusWriteFault || y.Status == StatusCapacityExceeded.WithDNR()) {
			t.Fatalf("fused halves disagree: %v %v", x.Status, y.Status)
		}
	})
}
