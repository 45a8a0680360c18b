package service

import (
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine"
)

// DefaultSpaceCheckInterval is how often the data directory's file system is
// checked against the soft threshold.
const DefaultSpaceCheckInterval = 5 * time.Second

// SpaceStatus is the data directory's file system as the soft-threshold
// check last saw it.
type SpaceStatus struct {
	// SizeBytes and FreeBytes are the file system's size and the bytes
	// available to the daemon.
	SizeBytes, FreeBytes uint64
	// WarnPercent is the configured threshold (0: off).
	WarnPercent int
	// Above says the file system is at or past the threshold.
	Above bool
	// Crossings counts the times it went past the threshold.
	Crossings uint64
}

// space watches the file system holding the data directory.
type space struct {
	warnPercent int
	statfs      func(path string) (size, free uint64, err error)
	stop, done  chan struct{}

	mu   sync.Mutex
	last SpaceStatus
}

// statfsFree returns the size of the file system holding path and the bytes
// an unprivileged writer may still allocate on it.
func statfsFree(path string) (size, free uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Blocks * uint64(st.Bsize), st.Bavail * uint64(st.Bsize), nil
}

// statfs calls the space check's statfs (tests replace it).
func (s *Service) statfs(path string) (size, free uint64, err error) {
	s.space.mu.Lock()
	fn := s.space.statfs
	s.space.mu.Unlock()
	return fn(path)
}

// startSpaceMonitor checks the file system now and then every interval
// until Close.
func (s *Service) startSpaceMonitor(interval time.Duration) {
	if interval <= 0 {
		interval = DefaultSpaceCheckInterval
	}
	s.space.stop, s.space.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.space.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.CheckSpace()
			select {
			case <-s.space.stop:
				return
			case <-t.C:
			}
		}
	}()
}

func (s *Service) stopSpaceMonitor() {
	if s.space.stop != nil {
		close(s.space.stop)
		<-s.space.done
		s.space.stop = nil
	}
}

// CheckSpace compares the data directory's file system with the soft
// threshold. The first check at or past it after being below (once per
// crossing) gives every initiator of a thin volume a THIN PROVISIONING SOFT
// THRESHOLD REACHED unit attention and logs a warning; dropping below
// re-arms it.
func (s *Service) CheckSpace() SpaceStatus {
	size, free, err := s.statfs(s.dataDir)
	s.space.mu.Lock()
	defer s.space.mu.Unlock()
	if err != nil {
		s.log.Warn("cannot check free space", "data_dir", s.dataDir, "err", err)
		return s.space.last
	}
	st := &s.space.last
	st.SizeBytes, st.FreeBytes, st.WarnPercent = size, free, s.space.warnPercent
	above := s.space.warnPercent > 0 && size > 0 && (size-free)*100 >= uint64(s.space.warnPercent)*size
	if above && !st.Above {
		st.Crossings++
		s.log.Warn("data directory's file system passed the space warning threshold; thin volumes fail writes when it fills",
			"data_dir", s.dataDir, "used_percent", (size-free)*100/size, "threshold_percent", s.space.warnPercent, "free_bytes", free)
		s.mu.RLock()
		for _, lv := range s.volumes {
			if lv.rec.Thin {
				lv.lu.SoftThresholdReached()
			}
		}
		s.mu.RUnlock()
	}
	st.Above = above
	return *st
}

// Space returns the file system status of the last check.
func (s *Service) Space() SpaceStatus {
	s.space.mu.Lock()
	defer s.space.mu.Unlock()
	return s.space.last
}

// SpaceWarnings says whether the thin volumes together could outgrow the
// file system that holds them. Over-committing is allowed (that is what
// thin provisioning is for), but the operator should know; the API returns
// the warnings with a create or resize.
func (s *Service) SpaceWarnings() []string {
	size, _, err := s.statfs(s.dataDir)
	if err != nil || size == 0 {
		return nil
	}
	s.mu.RLock()
	var total uint64
	for _, lv := range s.volumes {
		if lv.rec.Thin {
			total += uint64(lv.rec.SizeBytes)
		}
	}
	for _, off := range s.offline {
		if off.rec.Thin {
			total += uint64(off.rec.SizeBytes)
		}
	}
	s.mu.RUnlock()
	if total <= size {
		return nil
	}
	return []string{fmt.Sprintf("thin volumes total %d bytes, more than the %d-byte file system holding %s: writes fail with SPACE ALLOCATION FAILED once it fills", total, size, s.dataDir)}
}

// stillFull reports why a volume that ran out of space cannot take its
// pending writes yet: a file system holding its data or undo FIFO has less
// free space than the writes need (their data and their undo records,
// with a margin), or "" when there is room.
func (s *Service) stillFull(lv *liveVolume) string {
	var pending uint64
	if st, ok := lv.vol.(engine.StatsReporter); ok {
		pending = uint64(max(st.Stats().DirtyBytes, 0))
	}
	need := 2*pending + 1<<20
	for _, p := range s.files(lv.rec).Owned(engine.Backend(lv.rec.Backend)) {
		_, free, err := s.statfs(filepath.Dir(p))
		if err != nil {
			return err.Error()
		}
		if free < need {
			return fmt.Sprintf("the file system holding %s is still full: %d bytes free, the pending writes need about %d", p, free, need)
		}
	}
	return ""
}
