package service

import (
	"encoding/binary"
	"testing"

	"github.com/anvilproject/anvil/target/scsi"
)

// TestVolumeIOStatsCountsFrontEndIO: I/O that comes in through the SCSI
// core is counted once, by the engine, and VolumeIOStats reports it with
// the engine's histogram layout.
func TestVolumeIOStatsCountsFrontEndIO(t *testing.T) {
	s := open(t, t.TempDir(), true)
	defer s.Close()
	tg, _ := s.Target(DemoIQN)
	n := &scsi.Nexus{InitiatorPort: "iqn.2026-11.io.host:a,i,0x1", InitiatorName: "iqn.2026-11.io.host:a", TargetPort: DemoIQN + ",t,0x1", RelativeTargetPortID: 1, TargetPortGroup: 1}
	rec, err := s.Volume(DemoVolume)
	if err != nil {
		t.Fatal(err)
	}
	bs := rec.BlockSize
	rw := func(op byte, lba uint32, blocks uint16) []byte {
		c := make([]byte, 10)
		c[0] = op
		binary.BigEndian.PutUint32(c[2:], lba)
		binary.BigEndian.PutUint16(c[7:], blocks)
		return c
	}
	const writes, reads = 3, 5
	for i := range writes {
		if r := execute(t, tg, n, rw(0x2a, uint32(i*8), 8), make([]byte, 8*bs), 0); r.Status != scsi.StatusGood {
			t.Fatalf("WRITE(10): status %#x sense %x", r.Status, r.Sense)
		}
	}
	for range reads {
		if r := execute(t, tg, n, rw(0x28, 0, 8), nil, 8*bs); r.Status != scsi.StatusGood {
			t.Fatalf("READ(10): status %#x sense %x", r.Status, r.Sense)
		}
	}
	if r := execute(t, tg, n, []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0); r.Status != scsi.StatusGood {
		t.Fatalf("SYNCHRONIZE CACHE(10): status %#x sense %x", r.Status, r.Sense)
	}
	st, err := s.VolumeIOStats(DemoVolume)
	if err != nil {
		t.Fatal(err)
	}
	if st.Write.Ops != writes || st.Write.Bytes != uint64(writes*8*bs) || st.Write.Latency.Count != writes {
		t.Errorf("write stats %+v; want %d ops of %d bytes, all timed", st.Write, writes, 8*bs)
	}
	if st.Read.Ops != reads || st.Read.Bytes != uint64(reads*8*bs) || st.Read.Latency.SampleEvery != 64 {
		t.Errorf("read stats %+v; want %d ops of %d bytes, timed one in 64", st.Read, reads, 8*bs)
	}
	if st.Flush.Ops < 1 || st.Flush.Latency.Count != st.Flush.Ops {
		t.Errorf("flush stats %+v", st.Flush)
	}
	for name, h := range map[string]Histogram{"read": st.Read.Latency, "write": st.Write.Latency, "commit": st.Commit} {
		if len(h.Counts) != len(LatencyBuckets)+1 || len(LatencyBuckets) != 23 || LatencyBuckets[0] != 1e-6 {
			t.Errorf("%s histogram: %d counts over %d bounds starting at %v; want the engine's 24 log2 buckets", name, len(h.Counts), len(LatencyBuckets), LatencyBuckets[0])
		}
	}
}
