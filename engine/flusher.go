package engine

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// flusherNice is the scheduling niceness of the background flusher's
// thread. Background commits (reading old contents, checksumming them and
// copying data out) compete for the CPU with the request path that
// initiators wait on; at niceness 5 the scheduler gives the flusher about a
// third of a normal thread's share when both want the CPU, and all of it
// otherwise, which keeps background commits from slowing the writes that
// initiators wait on when cores are few. The flusher cannot fall behind for
// good: when dirty data reaches its limit, writers wait and leave it the
// CPU. Commits that a flush or a WCE=0 write needs at once run in the
// caller's goroutine at normal priority.
const flusherNice = 5

// kickFlusher asks the background flusher to commit soon.
func (v *CachedVolume) kickFlusher() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// flusher commits the open epoch every interval, and early when kicked
// (epoch an eighth full, dirty threshold, a writer waiting for room, a
// chained epoch handed over by a committer).
func (v *CachedVolume) flusher() {
	defer close(v.done)
	// A thread of its own, so that its priority applies to it alone; the
	// thread exits with the goroutine instead of returning to the pool.
	runtime.LockOSThread()
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), flusherNice); err != nil {
		v.log.Debug("flusher keeps normal priority", "err", err)
	}
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
		more := v.pend != nil || v.queued() > 0
		v.commitMu.Unlock()
		if more && v.failed.Load() == nil {
			// A commit stops chaining when the ring cannot hold the next
			// epoch's records beside its own; epochs still queued are
			// committed now, not at the next tick.
			v.kickFlusher()
		}
	}
}

// queued is the number of cut epochs waiting in the queue.
func (v *CachedVolume) queued() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.queue)
}
