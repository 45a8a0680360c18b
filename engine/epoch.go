package engine

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// syncTo returns once epoch target is durable. The first caller to find no
// commit under way becomes the committer; the others sleep on gcCond and are
// all woken together when it finishes. Every write applied while a commit
// runs joins the next epoch, so with many concurrent WCE=0 writers or
// flushers each commit carries a whole group of them (group commit), and
// waking them with one broadcast lets them all queue their next writes into
// the following epoch.
func (v *CachedVolume) syncTo(target uint64) error {
	v.gcMu.Lock()
	defer v.gcMu.Unlock()
	for {
		if v.durable.Load() >= target {
			return nil
		}
		if err := v.failedErr(); err != nil {
			return err
		}
		if v.committing {
			v.gcCond.Wait()
			continue
		}
		v.committing = true
		v.gcMu.Unlock()
		v.commitMu.Lock()
		err := v.commitLocked()
		v.commitMu.Unlock()
		v.gcMu.Lock()
		v.committing = false
		v.gcCond.Broadcast()
		if err != nil {
			return err
		}
	}
}

// failedErr is the error a flush reports on a volume frozen by a failed
// commit.
func (v *CachedVolume) failedErr() error {
	if p := v.failed.Load(); p != nil {
		return fmt.Errorf("engine: %s: earlier commit failed (%v): %w", v.name, *p, ErrMedium)
	}
	return nil
}

// cut closes the open epoch and returns its number and its buffers sorted
// by offset, frozen for I/O. v.mu is held.
func (v *CachedVolume) cutLocked() (uint64, []*buf) {
	ep := v.epoch
	set := make([]*buf, 0, len(v.dirty))
	for _, b := range v.dirty {
		b.frozen = true
		set = append(set, b)
	}
	slices.SortFunc(set, func(a, b *buf) int { return int(a.key - b.key) })
	v.dirty = make(map[int64]*buf, len(v.dirty))
	v.epoch++
	v.epochChunks = 0
	v.cond.Broadcast()
	return ep, set
}

// commitLocked cuts the open epoch and commits it. commitMu is held.
func (v *CachedVolume) commitLocked() error {
	if err := v.failedErr(); err != nil {
		return err
	}
	v.mu.Lock()
	ep, set := v.cutLocked()
	v.mu.Unlock()
	if len(set) == 0 {
		// Nothing changed since the last commit, which is durable.
		v.durable.Store(ep)
		return nil
	}
	start := time.Now()
	undoBytes, err := v.commitEpoch(ep, set)
	if err != nil {
		v.failCommit(ep, set, err)
		return fmt.Errorf("engine: %s commit epoch %d: %v: %w", v.name, ep, err, ErrMedium)
	}
	var gone []*buf
	var freed int64
	v.mu.Lock()
	for _, b := range set {
		b.frozen = false
		if v.chunks[b.key] == b {
			if b.data == nil {
				// A committed hole needs no buffer: the device reads zeroes.
				delete(v.chunks, b.key)
				v.evictGen++
			} else {
				b.state.Store(stateClean)
				freed += ChunkSize
			}
			continue
		}
		// Replaced by a newer version while in flight.
		if b.data != nil {
			freed += ChunkSize
			gone = append(gone, b)
		}
	}
	v.addDirtyLocked(-freed)
	v.durable.Store(ep)
	v.cond.Broadcast()
	v.mu.Unlock()
	v.cache.untrack(gone)
	for _, b := range gone {
		v.cache.free(b.data)
	}
	v.st.epochs.Add(1)
	v.st.undoBytes.Add(uint64(undoBytes))
	v.st.commitLat.observe(time.Since(start))
	return nil
}

// failCommit freezes the volume after a failed commit. The FIFO stays where
// it was, so recovery (at open or in ClearError) rolls the partial epoch
// back. The epoch's buffers that are still current become dirty members of
// the open epoch again, so nothing acknowledged is lost from the cache and a
// later commit writes it all.
func (v *CachedVolume) failCommit(ep uint64, set []*buf, err error) {
	v.st.commitErrors.Add(1)
	v.log.Error("commit failed; volume is read-only until the error is cleared", "epoch", ep, "err", err)
	var gone []*buf
	v.mu.Lock()
	e := err
	v.failed.Store(&e)
	for _, b := range set {
		b.frozen = false
		if v.chunks[b.key] == b {
			if _, ok := v.dirty[b.key]; !ok {
				v.dirty[b.key] = b
				v.epochChunks++
			}
			continue
		}
		if b.data != nil {
			v.addDirtyLocked(-ChunkSize)
			gone = append(gone, b)
		}
	}
	if !v.pinned {
		// The frozen volume's dirty bytes cannot drain; stop counting them
		// against the other volumes' dirty limit.
		v.pinned = true
		v.cache.addDirty(-v.dirtyBytes)
	}
	v.cond.Broadcast()
	v.mu.Unlock()
	v.cache.untrack(gone)
	for _, b := range gone {
		v.cache.free(b.data)
	}
	v.cache.wakeDirtyWaiters()
}

// commitEpoch performs the three durable steps of a commit for the sorted,
// frozen buffers of epoch ep and returns the undo bytes written.
func (v *CachedVolume) commitEpoch(ep uint64, set []*buf) (int64, error) {
	if ep <= v.fifo.Committed() {
		return 0, errors.New("epoch number not newer than the FIFO's")
	}
	// Step 1: undo records for the old contents of every chunk, durable.
	batch := v.fifo.Begin(ep)
	for i := 0; i < len(set); {
		j := i + 1
		for j < len(set) && set[j].key == set[j-1].key+1 {
			j++
		}
		if err := v.recordUndo(batch, set[i].key, set[j-1].key+1); err != nil {
			return 0, err
		}
		i = j
	}
	if err := batch.Write(); err != nil {
		return 0, err
	}
	// Step 2: data in place, sorted and coalesced, durable.
	size := v.size.Load()
	for i := 0; i < len(set); {
		hole := set[i].data == nil
		j := i + 1
		for j < len(set) && set[j].key == set[j-1].key+1 && (set[j].data == nil) == hole {
			j++
		}
		off := set[i].key * ChunkSize
		end := min((set[j-1].key+1)*ChunkSize, size)
		if hole {
			if err := v.data.Discard(off, end-off); err != nil {
				return 0, err
			}
		} else {
			iov := make([][]byte, 0, j-i)
			for _, b := range set[i:j] {
				iov = append(iov, b.data[:min(ChunkSize, size-b.key*ChunkSize)])
			}
			if err := v.data.WriteAtv(iov, off); err != nil {
				return 0, err
			}
		}
		i = j
	}
	if err := v.data.Sync(); err != nil {
		return 0, err
	}
	// Step 3: advance the FIFO header past the epoch, durable.
	if err := batch.Commit(); err != nil {
		return 0, err
	}
	return batch.PayloadBytes(), nil
}

// recordUndo appends undo records for chunks [k0, k1): hole records for
// chunks the device has not allocated, data records with the old bytes for
// the rest.
func (v *CachedVolume) recordUndo(batch interface {
	AppendHole(off, n int64) error
	AppendData(off int64, n int) ([]byte, error)
}, k0, k1 int64) error {
	size := v.size.Load()
	maxPay := v.fifo.MaxPayload() / ChunkSize
	// Classify each chunk: allocated if any byte of it is mapped.
	mapped := make([]bool, k1-k0)
	for off, end := k0*ChunkSize, min(k1*ChunkSize, size); off < end; {
		m, n, err := v.data.Mapped(off, end-off)
		if err != nil {
			return err
		}
		n = max(n, 1)
		if m {
			for k := off / ChunkSize; k <= (off+n-1)/ChunkSize; k++ {
				mapped[k-k0] = true
			}
		}
		off += n
	}
	for i := int64(0); i < int64(len(mapped)); {
		j := i + 1
		for j < int64(len(mapped)) && mapped[j] == mapped[i] && (!mapped[i] || j-i < maxPay) {
			j++
		}
		off := (k0 + i) * ChunkSize
		n := min((k0+j)*ChunkSize, size) - off
		if !mapped[i] {
			if err := batch.AppendHole(off, n); err != nil {
				return err
			}
		} else {
			p, err := batch.AppendData(off, int(n))
			if err != nil {
				return err
			}
			if _, err := v.data.ReadAt(p, off); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}
