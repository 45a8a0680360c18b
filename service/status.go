package service

import (
	"fmt"
	"sort"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/engine"
)

// The records the service hands out and takes. They are the catalog's
// types under the service's names, so that callers (the API) depend on the
// service alone and choose their own wire representation.
type (
	// VolumeRecord is a volume's persistent record.
	VolumeRecord = catalog.Volume
	// TargetRecord is a target's persistent record.
	TargetRecord = catalog.Target
	// LUN maps a logical unit number of a target to a volume.
	LUN = catalog.LUN
	// ACL says which initiators may log in to a target.
	ACL = catalog.ACL
	// CHAP holds CHAP credentials.
	CHAP = catalog.CHAP
)

// Errors of the engine that callers map to API status codes; they are the
// engine's values, so errors.Is matches errors from any layer.
var (
	// ErrReadOnly: the volume is read-only or frozen after a failed commit.
	ErrReadOnly = engine.ErrReadOnly
	// ErrDegraded: the volume is served read-only after an uncertain
	// recovery.
	ErrDegraded = engine.ErrDegraded
	// ErrNoSpace: the volume's file system is full.
	ErrNoSpace = engine.ErrNoSpace
	// ErrMedium: the backing store fails I/O.
	ErrMedium = engine.ErrMedium
)

// VolumeStatus is one consistent snapshot of a volume: its record, who
// maps it, its state and live statistics, all read under one lock.
type VolumeStatus struct {
	Record VolumeRecord
	// MappedBy lists the IQNs of the targets that map the volume, sorted;
	// never nil.
	MappedBy []string
	// State is StateOnline, StateDegraded or StateOffline; Reason says why
	// when it is not online.
	State, Reason string
	// Error says why the engine froze the volume after a failed commit;
	// empty when it is healthy.
	Error string
	// Open is false for an offline volume, which has no statistics.
	Open bool
	// IO are the volume's I/O and engine counters since it was opened.
	IO IOStats
}

// VolumeStatus returns the status of volume name, offline ones included.
func (s *Service) VolumeStatus(name string) (VolumeStatus, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.volumeStatusLocked(name)
}

// VolumeStatuses returns the status of every volume, sorted by name.
func (s *Service) VolumeStatuses() []VolumeStatus {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]VolumeStatus, 0, len(s.volumes)+len(s.offline))
	for name := range s.volumes {
		st, _ := s.volumeStatusLocked(name)
		out = append(out, st)
	}
	for name := range s.offline {
		if _, ok := s.volumes[name]; ok {
			continue
		}
		st, _ := s.volumeStatusLocked(name)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Record.Name < out[j].Record.Name })
	return out
}

// volumeStatusLocked builds VolumeStatus; the caller holds s.mu.
func (s *Service) volumeStatusLocked(name string) (VolumeStatus, error) {
	st := VolumeStatus{MappedBy: s.mappedByLocked(name)}
	if off, ok := s.offline[name]; ok {
		st.Record, st.State, st.Reason = off.rec, StateOffline, off.reason
		return st, nil
	}
	lv, ok := s.volumes[name]
	if !ok {
		return VolumeStatus{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	st.Record, st.State, st.Open = lv.rec, StateOnline, true
	ev := lv.vol
	if d, ok := ev.(interface{ Degraded() string }); ok && d.Degraded() != "" {
		st.State, st.Reason = StateDegraded, d.Degraded()
	}
	if f, ok := ev.(faultable); ok {
		if err := f.Err(); err != nil {
			st.Error = err.Error()
		}
	}
	if sr, ok := ev.(engine.StatsReporter); ok {
		st.IO = ioStatsOf(sr.Stats())
	}
	return st, nil
}
