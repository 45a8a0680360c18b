package engine

import "time"

// kickFlusher asks the background flusher to commit soon.
func (v *CachedVolume) kickFlusher() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// flusher commits the open epoch every interval, and early when kicked
// (epoch an eighth full, dirty threshold, a writer waiting for room, a chained
// epoch handed over by a committer).
func (v *CachedVolume) flusher() {
	defer close(v.done)
	t := time.NewTicker(v.interval)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			return
		case <-t.C:
		case <-v.kick:
		}
		if v.failed.Load() != nil {
			continue
		}
		v.commitMu.Lock()
		if !v.idle() || v.pend != nil {
			// Errors freeze the volume and are reported by the next Flush.
			_ = v.commitLocked(^uint64(0))
		}
		v.commitMu.Unlock()
	}
}
