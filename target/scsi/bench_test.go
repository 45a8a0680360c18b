package scsi

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkExecute measures the command core's own cost per 4 KiB read and
// write over the in-memory volume, serially and from many goroutines, so
// that lock contention on the I/O path shows up as lost parallel speedup.
func BenchmarkExecute(b *testing.B) {
	for _, op := range []struct {
		name  string
		cdb   []byte
		write bool
	}{
		{"read4k", rw(opRead10, 10, 8, 8), false},
		{"write4k", rw(opWrite10, 10, 8, 8), true},
	} {
		vol := newMemVolume(testBlocks, 512)
		lu := NewLogicalUnit(vol, LUConfig{})
		tgt := NewTarget("bench")
		tgt.AddLUN(0, lu)
		var out []byte
		if op.write {
			out = make([]byte, 4096)
		}
		b.Run(op.name, func(b *testing.B) {
			b.SetBytes(4096)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				n := &Nexus{InitiatorPort: fmt.Sprintf("%p", pb)}
				tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb(opTestUnitReady, 6)})
				cmd := &Command{Nexus: n, CDB: op.cdb, DataOut: out}
				for pb.Next() {
					if r := tgt.Execute(context.Background(), cmd); r.Status != StatusGood {
						b.Fatalf("status %#x", r.Status)
					}
				}
			})
		})
	}
}
