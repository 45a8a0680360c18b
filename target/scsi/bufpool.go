package scsi

import (
	"math/bits"
	"sync"
)

// Read data buffers are recycled through power-of-two size classes. Without
// them every 128 KiB read allocates 128 KiB that the garbage collector must
// then find and free, which profiles showed as a large share of the cost of
// large reads. Classes run from 4 KiB to 16 MiB; larger reads are rare and
// allocate.
const (
	minPoolShift = 12
	maxPoolShift = 24
)

var dataInPools [maxPoolShift - minPoolShift + 1]sync.Pool

// getDataIn returns a buffer of length n whose contents are undefined: the
// caller must overwrite all of it before it reaches an initiator.
func getDataIn(n int) []byte {
	class := max(bits.Len(uint(n-1)), minPoolShift)
	if n <= 0 || class > maxPoolShift {
		return make([]byte, n)
	}
	if p, ok := dataInPools[class-minPoolShift].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<class)
}

// putDataIn recycles b if its capacity is one of the size classes.
func putDataIn(b []byte) {
	c := cap(b)
	if c < 1<<minPoolShift || c&(c-1) != 0 || c > 1<<maxPoolShift {
		return
	}
	b = b[:c]
	dataInPools[bits.Len(uint(c))-1-minPoolShift].Put(&b)
}

// ReleaseDataIn takes back a Result.DataIn buffer once the transport has
// sent it. Every DataIn the core returns is freshly made or taken from the
// pool and referenced by nothing else, so recycling is safe; the transport
// must not touch b afterwards.
func (t *Target) ReleaseDataIn(b []byte) { putDataIn(b) }
