package service

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/engine"
)

// LatencyBuckets are the upper bounds, in seconds, of the latency histogram
// buckets IOStats keeps: from a page-cache hit to a stalled disk.
var LatencyBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
}

// Histogram is a snapshot of a latency histogram: Counts[i] is the number
// of operations that took at most LatencyBuckets[i] seconds and more than
// the bucket before (the last element counts the slower ones).
type Histogram struct {
	Counts     []uint64 `json:"counts"`
	Count      uint64   `json:"count"`
	SumSeconds float64  `json:"sum_seconds"`
}

// OpStats are the counters of one kind of operation.
type OpStats struct {
	Ops     uint64    `json:"ops"`
	Bytes   uint64    `json:"bytes"`
	Errors  uint64    `json:"errors"`
	Latency Histogram `json:"latency"`
}

// IOStats is a snapshot of a volume's I/O counters since it was opened.
type IOStats struct {
	Read  OpStats `json:"read"`
	Write OpStats `json:"write"`
	// Flush counts Flush calls; Bytes stays zero.
	Flush OpStats `json:"flush"`
	// Unmap counts Unmap and WriteZeroes calls; Bytes is the range size.
	Unmap OpStats `json:"unmap"`
}

type opCounters struct {
	ops, bytes, errors atomic.Uint64
	sumNanos           atomic.Uint64
	buckets            [16]atomic.Uint64 // len(LatencyBuckets)+1
}

func (c *opCounters) record(start time.Time, n int64, err error) {
	d := time.Since(start)
	c.ops.Add(1)
	if err != nil {
		c.errors.Add(1)
	} else if n > 0 {
		c.bytes.Add(uint64(n))
	}
	c.sumNanos.Add(uint64(d))
	sec := d.Seconds()
	i := 0
	for i < len(LatencyBuckets) && sec > LatencyBuckets[i] {
		i++
	}
	c.buckets[i].Add(1)
}

func (c *opCounters) snapshot() OpStats {
	h := Histogram{Counts: make([]uint64, len(LatencyBuckets)+1)}
	for i := range h.Counts {
		h.Counts[i] = c.buckets[i].Load()
		h.Count += h.Counts[i]
	}
	h.SumSeconds = time.Duration(c.sumNanos.Load()).Seconds()
	return OpStats{Ops: c.ops.Load(), Bytes: c.bytes.Load(), Errors: c.errors.Load(), Latency: h}
}

// countedVolume wraps an engine volume and counts its I/O for the API and
// /metrics. It adds two atomic adds and a clock read per call; the engine
// underneath is reachable through Unwrap for optional interfaces
// (engine.Resizer and the like).
type countedVolume struct {
	engine.Volume
	read, write, flush, unmap opCounters
	// saveWriteCache persists a write cache change that came from a front
	// end (MODE SELECT), so the catalog keeps what the initiator set.
	saveWriteCache func(on bool) error
}

// SetWriteCache changes the engine's write cache and records the change.
func (v *countedVolume) SetWriteCache(on bool) error {
	if err := v.Volume.SetWriteCache(on); err != nil {
		return err
	}
	if v.saveWriteCache != nil {
		return v.saveWriteCache(on)
	}
	return nil
}

// Unwrap returns the engine volume underneath.
func (v *countedVolume) Unwrap() engine.Volume { return v.Volume }

// IOStats returns a snapshot of the counters.
func (v *countedVolume) IOStats() IOStats {
	return IOStats{Read: v.read.snapshot(), Write: v.write.snapshot(), Flush: v.flush.snapshot(), Unmap: v.unmap.snapshot()}
}

func (v *countedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	t := time.Now()
	err := v.Volume.ReadAt(ctx, p, off)
	v.read.record(t, int64(len(p)), err)
	return err
}

func (v *countedVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	t := time.Now()
	err := v.Volume.WriteAt(ctx, p, off, fua)
	v.write.record(t, int64(len(p)), err)
	return err
}

func (v *countedVolume) WriteZeroes(ctx context.Context, off, n int64, unmap bool) error {
	t := time.Now()
	err := v.Volume.WriteZeroes(ctx, off, n, unmap)
	v.unmap.record(t, n, err)
	return err
}

func (v *countedVolume) Unmap(ctx context.Context, off, n int64) error {
	t := time.Now()
	err := v.Volume.Unmap(ctx, off, n)
	v.unmap.record(t, n, err)
	return err
}

func (v *countedVolume) Flush(ctx context.Context) error {
	t := time.Now()
	err := v.Volume.Flush(ctx)
	v.flush.record(t, 0, err)
	return err
}

// base returns the engine volume under any counting wrapper.
func base(v engine.Volume) engine.Volume {
	if u, ok := v.(interface{ Unwrap() engine.Volume }); ok {
		return u.Unwrap()
	}
	return v
}

// VolumeIOStats returns a volume's I/O counters since it was opened.
func (s *Service) VolumeIOStats(name string) (IOStats, error) {
	s.mu.RLock()
	lv, ok := s.volumes[name]
	s.mu.RUnlock()
	if !ok {
		return IOStats{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if cv, ok := lv.vol.(*countedVolume); ok {
		return cv.IOStats(), nil
	}
	return IOStats{}, nil
}
