package engine

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
)

// TestOpCounter: concurrent adds across many folds are all counted, with
// their bytes, and the sequence add returns restarts only at a fold.
func TestOpCounter(t *testing.T) {
	var c opCounter
	const goroutines, each = 4, 400_000 // 1.6M adds: three folds at least
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := 512 << ((g + i) % 4) // 512 B .. 4 KiB
				if seq := c.add(n); seq == 0 || seq > opMask {
					t.Errorf("add returned sequence %d", seq)
					return
				}
			}
		}()
	}
	wg.Wait()
	ops, bytes := c.load()
	if ops != goroutines*each {
		t.Fatalf("counted %d operations; want %d", ops, goroutines*each)
	}
	var want uint64
	for g := range goroutines {
		for i := range each {
			want += 512 << ((g + i) % 4)
		}
	}
	if bytes != want {
		t.Fatalf("counted %d bytes; want %d", bytes, want)
	}
	if c.ops == 0 {
		t.Fatal("the counter never folded: the test did not cross the threshold")
	}
}

// TestStatsPerOp: every kind of operation is counted once per call, with
// its bytes when it succeeds and as an error when it fails (refused by the
// range check, refused by a read-only volume, or failed by the device),
// and its latency histogram holds the timed calls at the rate it reports.
func TestStatsPerOp(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vol")
	v := openTest(t, path, Options{Name: "s", Size: 4 << 20, BlockSize: 512, FaultInjection: true})
	defer v.Close()
	const reads, writes = 3 * readSampleEvery, 10
	buf := make([]byte, 4096)
	for i := range writes {
		if err := v.WriteAt(ctx, buf, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	for i := range reads {
		if err := v.ReadAt(ctx, buf, int64(i%writes)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Unmap(ctx, 0, 8192); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteZeroes(ctx, 8192, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// The engine's own flush (turning the write cache off) is not a
	// caller's Flush.
	if err := v.SetWriteCache(false); err != nil {
		t.Fatal(err)
	}
	if err := v.SetWriteCache(true); err != nil {
		t.Fatal(err)
	}
	// Failures: past the end, and writes to a read-only volume.
	end := v.Size()
	if err := v.ReadAt(ctx, buf, end); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
	if err := v.WriteAt(ctx, buf, end, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	v.SetReadOnly(true)
	if err := v.WriteAt(ctx, buf, 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a read-only volume: %v", err)
	}
	if err := v.Unmap(ctx, 0, 4096); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("unmap of a read-only volume: %v", err)
	}
	v.SetReadOnly(false)
	// A read the device fails: an uncached chunk with every I/O failing.
	v.SetFaultRate(10000, 1)
	if err := v.ReadAt(ctx, buf, 2<<20); !errors.Is(err, ErrMedium) {
		t.Fatalf("read with failing device: %v", err)
	}
	v.SetFaultRate(0, 0)

	st := v.Stats()
	for _, c := range []struct {
		name               string
		got                OpStats
		ops, bytes, errs   uint64
		timed, sampleEvery uint64
	}{
		// Refused reads are counted, not timed; the failed device read is
		// read number reads+1 of the sampled sequence, so it is not timed.
		{"read", st.Read, reads + 2, reads * 4096, 2, reads / readSampleEvery, readSampleEvery},
		{"write", st.Write, writes + 2, writes * 4096, 2, writes, 1},
		{"unmap", st.Unmap, 3, 3 * 4096, 1, 2, 1},
		{"flush", st.Flush, 1, 0, 0, 1, 1},
	} {
		g := c.got
		if g.Ops != c.ops || g.Bytes != c.bytes || g.Errors != c.errs {
			t.Errorf("%s: %d ops, %d bytes, %d errors; want %d, %d, %d", c.name, g.Ops, g.Bytes, g.Errors, c.ops, c.bytes, c.errs)
		}
		if n := g.Latency.Count(); n != c.timed || g.Latency.SampleEvery != c.sampleEvery {
			t.Errorf("%s: %d timed one in %d; want %d one in %d", c.name, n, g.Latency.SampleEvery, c.timed, c.sampleEvery)
		}
		if g.Latency.Count() > 0 && g.Latency.Sum <= 0 {
			t.Errorf("%s: %d timed calls took no time", c.name, g.Latency.Count())
		}
	}
}
