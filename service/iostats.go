package service

import (
	"fmt"

	"github.com/anvilproject/anvil/engine"
)

// LatencyBuckets are the upper bounds, in seconds, of the latency histogram
// buckets in IOStats: the engine's log2 layout, bucket i holding operations
// under 2^i microseconds. Histogram.Counts has one more element, the open
// bucket above the last bound.
var LatencyBuckets = func() []float64 {
	var h engine.Histogram
	b := make([]float64, len(h.Counts)-1)
	for i := range b {
		b[i] = h.UpperBound(i).Seconds()
	}
	return b
}()

// Histogram is a snapshot of a latency histogram: Counts[i] is the number
// of timed operations that took less than LatencyBuckets[i] seconds and no
// less than the bucket before (the last element counts the slower ones).
type Histogram struct {
	Counts []uint64 `json:"counts"`
	// Count is the number of timed operations, the sum of Counts.
	Count uint64 `json:"count"`
	// SumSeconds is the time the timed operations took.
	SumSeconds float64 `json:"sum_seconds"`
	// SampleEvery says one operation in SampleEvery was timed (1: all):
	// SumSeconds*SampleEvery estimates the time of every operation.
	SampleEvery uint64 `json:"sample_every"`
}

// OpStats are the counters of one kind of operation.
type OpStats struct {
	// Ops counts every call, failed ones included.
	Ops uint64 `json:"ops"`
	// Bytes is the size of the calls that succeeded.
	Bytes uint64 `json:"bytes"`
	// Errors counts the calls that failed.
	Errors  uint64    `json:"errors"`
	Latency Histogram `json:"latency"`
}

// IOStats is a snapshot of a volume's I/O counters since it was opened,
// as the engine keeps them.
type IOStats struct {
	Read  OpStats `json:"read"`
	Write OpStats `json:"write"`
	// Flush counts Flush calls; Bytes stays zero.
	Flush OpStats `json:"flush"`
	// Unmap counts Unmap and WriteZeroes calls; Bytes is the range size.
	Unmap OpStats `json:"unmap"`

	// DirtyBytes is data acknowledged but not yet durable.
	DirtyBytes int64 `json:"dirty_bytes"`
	// Epochs counts epochs committed with data.
	Epochs uint64 `json:"epochs"`
	// UndoBytes counts bytes appended to the undo FIFO.
	UndoBytes uint64 `json:"undo_bytes"`
	// CacheHits and CacheMisses count chunk lookups on read.
	CacheHits   uint64 `json:"cache_hits"`
	CacheMisses uint64 `json:"cache_misses"`
	// CommitErrors counts epoch commits that failed.
	CommitErrors uint64 `json:"commit_errors"`
	// InjectedFaults counts I/O errors made up by fault injection.
	InjectedFaults uint64 `json:"injected_faults"`
	// Commit is the latency of one epoch commit.
	Commit Histogram `json:"commit"`
}

func histogramOf(h engine.Histogram) Histogram {
	return Histogram{Counts: h.Counts[:], Count: h.Count(), SumSeconds: h.Sum.Seconds(), SampleEvery: h.SampleEvery}
}

func opStatsOf(o engine.OpStats) OpStats {
	return OpStats{Ops: o.Ops, Bytes: o.Bytes, Errors: o.Errors, Latency: histogramOf(o.Latency)}
}

// ioStatsOf maps the engine's snapshot into the service's.
func ioStatsOf(e engine.Stats) IOStats {
	return IOStats{
		Read: opStatsOf(e.Read), Write: opStatsOf(e.Write), Flush: opStatsOf(e.Flush), Unmap: opStatsOf(e.Unmap),
		DirtyBytes: e.DirtyBytes, Epochs: e.Epochs, UndoBytes: e.UndoBytes,
		CacheHits: e.CacheHits, CacheMisses: e.CacheMisses, CommitErrors: e.CommitErrors,
		InjectedFaults: e.InjectedFaults, Commit: histogramOf(e.CommitLatency),
	}
}

// VolumeIOStats returns a volume's I/O counters since it was opened (all
// zero if its engine keeps none).
func (s *Service) VolumeIOStats(name string) (IOStats, error) {
	s.mu.RLock()
	lv, ok := s.volumes[name]
	s.mu.RUnlock()
	if !ok {
		return IOStats{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if sr, ok := lv.vol.(engine.StatsReporter); ok {
		return ioStatsOf(sr.Stats()), nil
	}
	return IOStats{}, nil
}
