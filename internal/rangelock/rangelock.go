// Package rangelock holds block range locks shared by every front end that
// exports a volume.
//
// COMPARE AND WRITE (SCSI), fused Compare and Write (NVMe) and ORWRITE read
// blocks and write them back; nothing else may write those blocks in
// between, or the write that slipped in is lost while the command reports
// success (VMware's ATS locking relies on this). Every command that writes
// the medium therefore holds the blocks it writes: shared for ordinary
// writes, which both command sets let overlap freely, exclusive for the
// read-modify-write commands. One volume exported over iSCSI and NVMe/TCP at
// once has one Locks, so the guarantee holds across protocols.
//
// The medium is cut into regions of regionShift bytes and region r is
// guarded by stripe r mod stripes, a reader/writer lock. A write takes only
// the stripes its range touches, so writes elsewhere never wait for a
// compare-and-write, and a shared acquisition costs one atomic add per
// stripe. Stripes are always taken in ascending index order, which rules
// out deadlock between commands holding several.
package rangelock

import (
	"sync"
	"unsafe"
)

const (
	regionShift = 20 // 1 MiB: a compare-and-write spans at most two regions
	stripes     = 64
)

// stripe is one stripe's lock, padded to a cache line so that writes
// to different regions do not contend on a shared line.
type stripe struct {
	sync.RWMutex
	_ [64 - unsafe.Sizeof(sync.RWMutex{})%64]byte
}

// Locks are one volume's block range locks. The zero value is ready to use.
type Locks struct {
	s [stripes]stripe
}

// Held is a held range lock; Unlock releases it. The zero value holds
// nothing.
type Held struct {
	rl     *Locks
	lo, hi int // stripes lo..hi, wrapping past the last one when hi < lo
	excl   bool
}

// Lock locks the byte range [off, off+n) of the medium, exclusively
// or shared, and returns the held lock. n == 0 holds nothing.
func (rl *Locks) Lock(off, n int64, excl bool) Held {
	if n <= 0 {
		return Held{}
	}
	first, last := off>>regionShift, (off+n-1)>>regionShift
	h := Held{rl: rl, excl: excl}
	if last-first+1 >= stripes {
		h.lo, h.hi = 0, stripes-1
	} else {
		h.lo, h.hi = int(first%stripes), int(last%stripes)
	}
	h.each(func(s *stripe) {
		if excl {
			s.Lock()
		} else {
			s.RLock()
		}
	})
	return h
}

// Unlock releases the range.
func (h Held) Unlock() {
	if h.rl == nil {
		return
	}
	h.each(func(s *stripe) {
		if h.excl {
			s.Unlock()
		} else {
			s.RUnlock()
		}
	})
}

// each calls fn for the held stripes in ascending index order.
func (h Held) each(fn func(*stripe)) {
	s := &h.rl.s
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
	for i := h.lo; i < stripes; i++ {
		fn(&s[i])
	}
}
