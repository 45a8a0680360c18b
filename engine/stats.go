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
	// SampleEvery says how the operations were observed: one in
	// SampleEvery was timed (1: all of them). Count and Sum cover the timed
	// ones only; Sum*SampleEvery estimates the time of all of them.
	SampleEvery uint64
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

// snapshot returns the histogram's counts; sampleEvery is the rate at which
// the caller observes operations.
func (h *histogram) snapshot(sampleEvery uint64) Histogram {
	s := Histogram{SampleEvery: sampleEvery}
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

// readSampleEvery is how often a read is timed: reading the clock costs
// more than a cache hit's bookkeeping, so one read in readSampleEvery is
// timed. It is a power of two that divides the fold threshold of
// opCounter, so the sequence add returns, which restarts at each fold,
// picks one read in readSampleEvery (but for a rare second fold racing
// the first).
const readSampleEvery = 64

// volStats holds a volume's live counters. Each kind of operation counts
// its successes and its failures apart, so that the success path pays no
// more atomic adds than it needs; Stats adds them up.
type volStats struct {
	reads        opCounter     // reads past the range check, and their bytes
	readErrBytes atomic.Uint64 // bytes of reads that failed
	readErrs     atomic.Uint64 // reads that failed, refused ones included
	readRefused  atomic.Uint64 // reads the range check refused (not in reads)

	writes, writeBytes, writeErrs atomic.Uint64 // writes that succeeded, their bytes; writes that failed
	unmaps, unmapBytes, unmapErrs atomic.Uint64 // the same for unmap and write-zeroes
	flushes, flushErrs            atomic.Uint64 // every Flush call; the ones that failed

	epochs, undoBytes           atomic.Uint64
	extraLookups, misses        atomic.Uint64 // chunk lookups by reads beyond one per read
	commitErrors                atomic.Uint64
	chained                     atomic.Uint64
	readLat, writeLat, unmapLat histogram
	flushLat, commitLat         histogram
}

// OpStats are the counters of one kind of operation (read, write, flush,
// unmap) since the volume was opened.
type OpStats struct {
	// Ops counts every call, failed ones included.
	Ops uint64
	// Bytes is the size of the calls that succeeded: bytes transferred
	// for reads and writes, the range size for unmaps, zero for flushes.
	Bytes uint64
	// Errors counts the calls that returned an error.
	Errors uint64
	// Latency holds the timed calls: every call that got past the range
	// check, or one in Latency.SampleEvery for reads. Its Count is the
	// number of timed calls, not Ops.
	Latency Histogram
}

// Stats is the snapshot of one volume's counters the service, the API and
// /metrics read; it is the only place Anvil counts volume I/O.
type Stats struct {
	Read  OpStats
	Write OpStats
	// Flush counts Flush calls, including the wait for a shared commit.
	Flush OpStats
	// Unmap counts Unmap and WriteZeroes calls.
	Unmap OpStats

	Epochs                 uint64 // epochs committed with data
	ChainedEpochs          uint64 // epochs whose undo records rode on the previous header sync
	UndoBytes              uint64 // bytes appended to the undo FIFO
	CacheHits, CacheMisses uint64 // chunk lookups on read
	CommitErrors           uint64
	DirtyBytes             int64 // dirty + in-flight bytes right now
	InjectedFaults         uint64
	CommitLatency          Histogram // one epoch commit
}

// StatsReporter is implemented by volumes that count their own I/O
// (CachedVolume); the service reads volume statistics only through it.
type StatsReporter interface {
	// Stats returns a snapshot of the volume's counters.
	Stats() Stats
}
