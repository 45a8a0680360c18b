package scsi

import (
	"sync"
	"unsafe"
)

// Block range locks. COMPARE AND WRITE and ORWRITE read blocks and write
// them back; nothing else may write those blocks in between, or the write
// that slipped in is lost while the command reports success (VMware's ATS
// locking relies on this). Every command that writes the medium therefore
// holds the blocks it writes: shared for ordinary writes, which SBC lets
// overlap freely, exclusive for the read-modify-write commands.
//
// The medium is cut into regions of rangeRegionShift bytes and region r is
// guarded by stripe r mod rangeStripes, a reader/writer lock. A write takes
// only the stripes its range touches, so writes elsewhere never wait for a
// COMPARE AND WRITE, and a shared acquisition costs one atomic add per
// stripe. Stripes are always taken in ascending index order, which rules
// out deadlock between commands holding several.

const (
	rangeRegionShift = 20 // 1 MiB: a COMPARE AND WRITE spans at most two regions
	rangeStripes     = 64
)

// rangeStripe is one stripe's lock, padded to a cache line so that writes
// to different regions do not contend on a shared line.
type rangeStripe struct {
	sync.RWMutex
	_ [64 - unsafe.Sizeof(sync.RWMutex{})%64]byte
}

// rangeLocks are a logical unit's block range locks.
type rangeLocks struct {
	stripes [rangeStripes]rangeStripe
}

// heldRange is a held range lock; Unlock releases it. The zero value holds
// nothing.
type heldRange struct {
	rl     *rangeLocks
	lo, hi int // stripes lo..hi, wrapping past the last one when hi < lo
	excl   bool
}

// lockRange locks the byte range [off, off+n) of the medium, exclusively
// or shared, and returns the held lock. n == 0 holds nothing.
func (rl *rangeLocks) lockRange(off, n int64, excl bool) heldRange {
	if n <= 0 {
		return heldRange{}
	}
	first, last := off>>rangeRegionShift, (off+n-1)>>rangeRegionShift
	h := heldRange{rl: rl, excl: excl}
	if last-first+1 >= rangeStripes {
		h.lo, h.hi = 0, rangeStripes-1
	} else {
		h.lo, h.hi = int(first%rangeStripes), int(last%rangeStripes)
	}
	h.each(func(s *rangeStripe) {
		if excl {
			s.Lock()
		} else {
			s.RLock()
		}
	})
	return h
}

// Unlock releases the range.
func (h heldRange) Unlock() {
	if h.rl == nil {
		return
	}
	h.each(func(s *rangeStripe) {
		if h.excl {
			s.Unlock()
		} else {
			s.RUnlock()
		}
	})
}

// each calls fn for the held stripes in ascending index order.
func (h heldRange) each(fn func(*rangeStripe)) {
	s := &h.rl.stripes
	if h.lo <= h.hi {
		for i := h.lo; i <= h.hi; i++ {
			fn(&s[i])
		}
		return
	}
	// The range wraps: stripes 0..hi belong to its later regions, lo..end
	// to its earlier ones; ascending order is the same set sorted.
	for i := 0; i <= h.hi; i++ {
		fn(&s[i])
	}
	for i := h.lo; i < rangeStripes; i++ {
		fn(&s[i])
	}
}

// lockBlocks locks n blocks from lba of the logical unit's medium.
func (lu *LogicalUnit) lockBlocks(lba, n uint64, excl bool) heldRange {
	bs := uint64(lu.vol.BlockSize())
	return lu.ranges.lockRange(int64(lba*bs), int64(n*bs), excl)
}
