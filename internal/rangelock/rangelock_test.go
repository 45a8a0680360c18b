package rangelock

import (
	"testing"
	"time"
)

// blocked reports whether fn is still waiting after a short grace period.
func blocked(fn func()) (done chan struct{}, waiting bool) {
	done = make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
		return done, false
	case <-time.After(50 * time.Millisecond):
		return done, true
	}
}

func TestExclusiveWaitsForSharedOfTheSameRegion(t *testing.T) {
	var l Locks
	w := l.Lock(4096, 4096, false)
	var c Held
	done, waiting := blocked(func() { c = l.Lock(0, 512, true) })
	if !waiting {
		t.Fatal("an exclusive lock of a region a write holds was granted at once")
	}
	w.Unlock()
	<-done
	c.Unlock()
}

func TestSharedLocksOverlap(t *testing.T) {
	var l Locks
	a := l.Lock(0, 1<<20, false)
	_, waiting := blocked(func() { l.Lock(0, 1<<20, false).Unlock() })
	if waiting {
		t.Fatal("a second shared lock of the same range waited")
	}
	a.Unlock()
}

func TestOtherRegionsDoNotWait(t *testing.T) {
	var l Locks
	c := l.Lock(0, 4096, true)
	_, waiting := blocked(func() { l.Lock(1<<regionShift, 4096, false).Unlock() })
	if waiting {
		t.Fatal("a write to another region waited for an exclusive lock")
	}
	c.Unlock()
}

func TestWrappingRangeTakesStripesInOrder(t *testing.T) {
	var l Locks
	// Starts in the last stripe and wraps to stripe 0: two such locks
	// taken concurrently must not deadlock.
	off := int64(stripes-1) << regionShift
	for i := 0; i < 200; i++ {
		done := make(chan struct{})
		go func() { l.Lock(off, 2<<regionShift, true).Unlock(); close(done) }()
		l.Lock(0, 1, true).Unlock()
		l.Lock(off, 2<<regionShift, true).Unlock()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("wrapping exclusive locks deadlocked")
		}
	}
	if h := l.Lock(off, 2<<regionShift, false); h.lo != stripes-1 || h.hi != 0 {
		t.Fatalf("wrapping range holds stripes %d..%d, want %d..0", h.lo, h.hi, stripes-1)
	} else {
		h.Unlock()
	}
}

func TestZeroLengthHoldsNothing(t *testing.T) {
	var l Locks
	if h := l.Lock(0, 0, true); h.rl != nil {
		t.Fatal("a zero-length range holds a lock")
	}
	Held{}.Unlock()
}

// TestStripes checks which stripes a range takes: a lock on one
// region leaves writes to other regions free, and an exclusive hold on the
// last region of a wrapping range is seen by a range that includes it.
func TestStripes(t *testing.T) {
	var rl Locks
	const region = 1 << regionShift
	h := rl.Lock(5*region+100, 512, true)
	// Another region (and the same stripe index's region only when it
	// maps to stripe 5) is free.
	free := make(chan struct{})
	go func() {
		g := rl.Lock(6*region, 2*region, false)
		g.Unlock()
		close(free)
	}()
	select {
	case <-free:
	case <-time.After(2 * time.Second):
		t.Fatal("a write to other regions waited for an exclusive lock")
	}
	// A range that covers region 5 among others waits, including one
	// that wraps around the stripe array.
	for _, r := range [][2]int64{{4 * region, 2 * region}, {(stripes - 2) * region, 8 * region}, {0, 1 << 40}} {
		got := make(chan struct{})
		go func() {
			g := rl.Lock(r[0], r[1], false)
			g.Unlock()
			close(got)
		}()
		select {
		case <-got:
			t.Fatalf("range [%d,+%d) did not wait for region 5", r[0], r[1])
		case <-time.After(20 * time.Millisecond):
		}
		h.Unlock()
		<-got
		h = rl.Lock(5*region+100, 512, true)
	}
	h.Unlock()
	Held{}.Unlock() // the zero value holds nothing
}
