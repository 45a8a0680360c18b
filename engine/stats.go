package engine

import (
	"math/bits"
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

// volStats holds a volume's live counters.
type volStats struct {
	reads, writes           atomic.Uint64
	readBytes, writeBytes   atomic.Uint64
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
