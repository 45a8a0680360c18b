package engine

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// histBuckets is the number of latency buckets: bucket i counts operations
// that took less than 2^i microseconds (the last bucket takes the rest).
const histBuckets = 24

// histogram is a lock-free log2 latency histogram.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	sumNs  atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	i := min(bits.Len64(us), histBuckets-1)
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d.Nanoseconds(), 0)))
}

// Histogram is a snapshot of a latency histogram. Counts[i] is the number of
// operations that took less than UpperBound(i); the last bucket is open.
type Histogram struct {
	Counts [histBuckets]uint64
	// Sum is the total time of all observed operations.
	Sum time.Duration
}

// UpperBound is bucket i's exclusive upper bound.
func (Histogram) UpperBound(i int) time.Duration {
	return time.Duration(1<<uint(i)) * time.Microsecond
}

// Count is the number of observed operations.
func (h Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

func (h *histogram) snapshot() Histogram {
	var s Histogram
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sumNs.Load())
	return s
}

// opCounter counts operations and their bytes with one atomic add per
// operation, for the cache-hit read path where every locked instruction
// shows. Both counts share one word, operations in the low opBits bits and
// 512-byte sectors above; the word is folded into the totals, under mu,
// long before its operation field could overflow. Sizes must be whole
// sectors (every volume's block size is).
type opCounter struct {
	word         atomic.Uint64
	mu           sync.Mutex
	ops, sectors uint64 // folded totals; guarded by mu
}

const (
	opBits     = 20
	opMask     = 1<<opBits - 1
	sectorBits = 9
)

// add counts one operation of n bytes and returns the number of operations
// counted since the last fold (a cheap sequence for sampling).
func (c *opCounter) add(n int) uint64 {
	w := c.word.Add(1 | uint64(n>>sectorBits)<<opBits)
	if w&opMask >= 1<<(opBits-1) {
		c.fold()
	}
	return w & opMask
}

func (c *opCounter) fold() {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Adds that race with the swap land in the fresh word; a second
	// goroutine that also saw the threshold swaps out a small word.
	w := c.word.Swap(0)
	c.ops += w & opMask
	c.sectors += w >> opBits
}

// load returns the operations and bytes counted so far.
func (c *opCounter) load() (ops, bytes uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.word.Load()
	return c.ops + w&opMask, (c.sectors + w>>opBits) << sectorBits
}

// volStats holds a volume's live counters.
type volStats struct {
	reads                   opCounter     // reads issued and their bytes
	readErrBytes            atomic.Uint64 // bytes of reads that failed
	writes, writeBytes      atomic.Uint64
	unmaps, flushes, epochs atomic.Uint64
	undoBytes               atomic.Uint64
	extraLookups, misses    atomic.Uint64 // chunk lookups by reads beyond one per read
	commitErrors            atomic.Uint64
	chained                 atomic.Uint64
	readLat, writeLat       histogram
	flushLat, commitLat     histogram
}

// Stats is a snapshot of one volume's counters, for the API and /metrics.
type Stats struct {
	Reads, Writes          uint64 // commands issued (reads) and completed (writes)
	ReadBytes, WriteBytes  uint64
	Unmaps                 uint64 // unmap and write-zeroes commands
	Flushes                uint64 // Flush calls
	Epochs                 uint64 // epochs committed with data
	ChainedEpochs          uint64 // epochs whose undo records rode on the previous header sync
	UndoBytes              uint64 // bytes appended to the undo FIFO
	CacheHits, CacheMisses uint64 // chunk lookups on read
	CommitErrors           uint64
	DirtyBytes             int64 // dirty + in-flight bytes right now
	InjectedFaults         uint64
	ReadLatency            Histogram // sampled: one read in 64
	WriteLatency           Histogram
	FlushLatency           Histogram // Flush calls, including waiting
	CommitLatency          Histogram // one epoch commit
}
