package api

import "github.com/anvilproject/anvil/service"

// VolumeStats are a volume's live I/O counters since the daemon opened it.
// Rates (IOPS, throughput) are the difference of two samples over time;
// the web UI and Prometheus both derive them that way.
type VolumeStats struct {
	Read  service.OpStats `json:"read"`
	Write service.OpStats `json:"write"`
	// Flush counts Flush calls; Bytes stays zero.
	Flush service.OpStats `json:"flush"`
	// Unmap counts Unmap and WriteZeroes calls; Bytes is the range size.
	Unmap service.OpStats `json:"unmap"`
	// DirtyBytes is data acknowledged but not yet durable, when the engine
	// keeps a write-back cache of its own.
	DirtyBytes *int64 `json:"dirty_bytes,omitempty"`
	// Engine holds the crash-consistent engine's own counters, when the
	// volume runs on it.
	Engine *EngineStats `json:"engine,omitempty"`
}

// EngineStats are the counters only the caching engine keeps.
type EngineStats struct {
	Epochs         uint64  `json:"epochs"`
	UndoBytes      uint64  `json:"undo_bytes"`
	CacheHits      uint64  `json:"cache_hits"`
	CacheMisses    uint64  `json:"cache_misses"`
	CommitErrors   uint64  `json:"commit_errors"`
	InjectedFaults uint64  `json:"injected_faults"`
	CommitCount    uint64  `json:"commit_count"`
	CommitSeconds  float64 `json:"commit_seconds"`

	commit service.Histogram
}

// statsOf returns the live statistics of volume name, or nil if it is gone
// or offline.
func (s *server) statsOf(name string) *VolumeStats {
	st, err := s.svc.VolumeStatus(name)
	if err != nil {
		return nil
	}
	return statsView(st)
}

// statsView turns a status snapshot's statistics into the API's, or nil
// for an offline volume.
func statsView(vs service.VolumeStatus) *VolumeStats {
	if !vs.Open {
		return nil
	}
	io := vs.IO
	d := io.DirtyBytes
	return &VolumeStats{
		Read: io.Read, Write: io.Write, Flush: io.Flush, Unmap: io.Unmap,
		DirtyBytes: &d,
		Engine: &EngineStats{
			Epochs: io.Epochs, UndoBytes: io.UndoBytes, CacheHits: io.CacheHits, CacheMisses: io.CacheMisses,
			CommitErrors: io.CommitErrors, InjectedFaults: io.InjectedFaults,
			CommitCount: io.Commit.Count, CommitSeconds: io.Commit.SumSeconds,
			commit: io.Commit,
		},
	}
}
