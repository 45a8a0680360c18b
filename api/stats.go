package api

import (
	"github.com/anvilproject/anvil/service"
)

// VolumeStats are a volume's live I/O counters since the daemon opened it.
// Rates (IOPS, throughput) are the difference of two samples over time;
// the web UI and Prometheus both derive them that way.
type VolumeStats struct {
	service.IOStats
	// DirtyBytes is data acknowledged but not yet durable, when the engine
	// reports it.
	DirtyBytes *int64 `json:"dirty_bytes,omitempty"`
}

// dirtyReporter is implemented by engines with a write-back cache of their
// own.
type dirtyReporter interface{ DirtyBytes() int64 }

// statsOf returns the live statistics of volume name, or nil if it is gone.
func (s *server) statsOf(name string) *VolumeStats {
	io, err := s.svc.VolumeIOStats(name)
	if err != nil {
		return nil
	}
	st := &VolumeStats{IOStats: io}
	if ev, err := s.svc.EngineVolume(name); err == nil {
		if d, ok := ev.(dirtyReporter); ok {
			n := d.DirtyBytes()
			st.DirtyBytes = &n
		}
	}
	return st
}
