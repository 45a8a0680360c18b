package engine

import (
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
