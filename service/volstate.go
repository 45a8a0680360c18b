package service

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/engine"
)

// Volume states as the API reports them.
const (
	// StateOnline: the volume is open and served.
	StateOnline = "online"
	// StateDegraded: the volume is served read-only because recovery
	// could not tell whether its newest epoch was committed.
	StateDegraded = "degraded"
	// StateOffline: the volume's files do not match the catalog (or do
	// not open); it is not served until an operator restores them and
	// rechecks it, or deletes it.
	StateOffline = "offline"
)

// ErrOffline: the volume is offline; the API answers 409 with the reason.
var ErrOffline = errors.New("volume is offline")

// offlineVolume is a catalogued volume that restore could not open.
type offlineVolume struct {
	rec    catalog.Volume
	reason string
}

// checkFiles verifies, before a catalogued volume is opened, that its files
// are the ones the catalog describes: the data file exists and is not
// shorter than the volume (a truncated image would silently shrink it), and
// the undo FIFO exists (recreating it would throw away what recovery
// needs). Each failure names the file.
func (s *Service) checkFiles(rec catalog.Volume) error {
	st, err := os.Stat(rec.Path)
	if err != nil {
		return fmt.Errorf("data file %s: %w", rec.Path, err)
	}
	if rec.Backend != string(engine.BackendBlock) && st.Size() < rec.SizeBytes {
		return fmt.Errorf("data file %s is %d bytes, shorter than the volume's %d bytes in the catalog (truncated?)", rec.Path, st.Size(), rec.SizeBytes)
	}
	undo := s.files(rec).Undo
	if _, err := os.Stat(undo); err != nil {
		return fmt.Errorf("undo FIFO %s: %w", undo, err)
	}
	return nil
}

// openCatalogued checks and opens a volume restore or RecheckVolume found
// in the catalog.
func (s *Service) openCatalogued(rec catalog.Volume) (*liveVolume, error) {
	if err := s.checkFiles(rec); err != nil {
		return nil, fmt.Errorf("volume %q: %w", rec.Name, err)
	}
	return s.openVolume(rec, false)
}

// VolumeState reports whether a volume is online, degraded or offline, and
// why when it is not online.
func (s *Service) VolumeState(name string) (state, reason string, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if off, ok := s.offline[name]; ok {
		return StateOffline, off.reason, nil
	}
	lv, ok := s.volumes[name]
	if !ok {
		return "", "", fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if d, ok := lv.vol.(interface{ Degraded() string }); ok && d.Degraded() != "" {
		return StateDegraded, d.Degraded(), nil
	}
	return StateOnline, "", nil
}

// RecheckVolume tries again to open an offline volume, for an operator who
// restored its files. On success the volume is served again on every LUN
// the catalog maps it to; otherwise it stays offline and the error (with
// ErrOffline) says why. An online or degraded volume is left as it is.
func (s *Service) RecheckVolume(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	off, ok := s.offline[name]
	if !ok {
		if _, ok := s.volumes[name]; ok {
			return nil
		}
		return fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	lv, err := s.openCatalogued(off.rec)
	if err != nil {
		off.reason = err.Error()
		s.log.Warn("volume still offline", "volume", name, "reason", off.reason)
		return fmt.Errorf("%w: %s", ErrOffline, off.reason)
	}
	delete(s.offline, name)
	s.volumes[name] = lv
	for _, lt := range s.targets {
		for _, l := range lt.rec.LUNs {
			if l.Volume == name {
				if err := lt.scsi.AddLUN(l.LUN, lv.lu); err != nil {
					s.log.Error("map rechecked volume", "volume", name, "target", lt.rec.IQN, "lun", l.LUN, "err", err)
				}
			}
		}
	}
	s.addNamespacesLocked(name)
	s.log.Info("volume is back online", "volume", name)
	return nil
}

// offlineErrLocked is the error an operation on an offline volume returns,
// or nil if the volume is not offline. The caller holds s.mu.
func (s *Service) offlineErrLocked(name string) error {
	if off, ok := s.offline[name]; ok {
		return fmt.Errorf("volume %q: %w: %s", name, ErrOffline, strings.TrimPrefix(off.reason, fmt.Sprintf("volume %q: ", name)))
	}
	return nil
}

// missingLocked is the error for a volume that is not open: ErrOffline
// with the reason if it is offline, else ErrNotFound. The caller holds
// s.mu.
func (s *Service) missingLocked(name string) error {
	if err := s.offlineErrLocked(name); err != nil {
		return err
	}
	return fmt.Errorf("volume %q: %w", name, ErrNotFound)
}
