package service

import (
	"fmt"

	"github.com/anvilproject/anvil/engine"
)

// faultable is the engine's runtime fault-injection and error-recovery
// surface (engine.CachedVolume).
type faultable interface {
	SetFaultRate(n int, seed uint64)
	SetFaultNoSpace(on bool)
	ClearError() error
	Err() error
}

func (s *Service) faultable(name string) (faultable, error) {
	f, _, err := s.faultableVolume(name)
	return f, err
}

func (s *Service) faultableVolume(name string) (faultable, *liveVolume, error) {
	s.mu.RLock()
	lv, ok := s.volumes[name]
	var missing error
	if !ok {
		missing = s.missingLocked(name)
	}
	s.mu.RUnlock()
	if !ok {
		return nil, nil, missing
	}
	f, ok := lv.vol.(faultable)
	if !ok {
		return nil, nil, fmt.Errorf("volume %q: the engine cannot inject faults: %w", name, ErrNotSupported)
	}
	return f, lv, nil
}

// SetFaultInjection makes a volume fail rate of every 10,000 backing I/Os
// with EIO, chosen by a generator seeded with seed so that the same
// failures repeat run after run. Rate 0 turns injection off. It exists to
// test Anvil and the initiators that use it against a failing disk. With
// noSpace the failures are ENOSPC on writes only, as on a full file system.
func (s *Service) SetFaultInjection(name string, rate int, seed uint64, noSpace bool) error {
	if rate < 0 || rate > 10000 {
		return invalid("rate", "%d: must be 0..10000 (failures per 10,000 I/Os)", rate)
	}
	f, err := s.faultable(name)
	if err != nil {
		return err
	}
	f.SetFaultNoSpace(noSpace)
	f.SetFaultRate(rate, seed)
	s.log.Warn("fault injection", "volume", name, "rate_per_10000", rate, "seed", seed, "no_space", noSpace)
	return nil
}

// VolumeError reports why a volume is frozen read-only after a failed
// commit, or nil when it is healthy.
func (s *Service) VolumeError(name string) error {
	f, err := s.faultable(name)
	if err != nil {
		return nil
	}
	return f.Err()
}

// ClearError returns a volume that a failed commit froze read-only to
// service: the failed epoch is rolled back from the undo FIFO and writes
// are accepted again. It fails with engine.ErrMedium while the backing
// store still fails, and, for a volume that ran out of space, with
// engine.ErrNoSpace and the reason while its file system is still full.
func (s *Service) ClearError(name string) error {
	f, lv, err := s.faultableVolume(name)
	if err != nil {
		return err
	}
	if ferr := f.Err(); ferr != nil && engine.IsNoSpace(ferr) {
		if why := s.stillFull(lv); why != "" {
			return fmt.Errorf("clear error of volume %q: %s: %w", name, why, engine.ErrNoSpace)
		}
	}
	if err := f.ClearError(); err != nil {
		return fmt.Errorf("clear error of volume %q: %w", name, err)
	}
	s.log.Info("cleared volume error", "volume", name)
	return nil
}

var _ faultable = (*engine.CachedVolume)(nil)
