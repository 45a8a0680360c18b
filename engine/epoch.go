package engine

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/anvilproject/anvil/engine/undo"
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
		err := v.commitLocked(target)
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
		return fmt.Errorf("engine: %s: earlier commit failed (%v): %w", v.name, *p, backingErr(*p))
	}
	return nil
}

// cut closes the open epoch and returns its number and its buffers sorted
// by offset, frozen for I/O. v.mu is held.
func (v *CachedVolume) cutLocked() (uint64, []*buf) {
	ep := v.epoch
	set := v.dirty
	for _, b := range set {
		b.frozen = true
		b.queued = false
	}
	// The buffers are in the order writes reached them: for sequential
	// writers that is already sorted, which the sort notices in one pass.
	slices.SortFunc(set, func(a, b *buf) int { return cmp.Compare(a.key, b.key) })
	v.dirty = make([]*buf, 0, len(set))
	v.epoch++
	v.epochChunks = 0
	return ep, set
}

// maxChain bounds how many epochs one commitLocked call chains before it
// hands the rest to the flusher.
const maxChain = 8

// chained is an epoch whose undo records are durable (written with the
// previous epoch's header advance) but whose data is not yet in place.
type chained struct {
	ep    uint64
	set   []*buf
	batch *undo.Batch
	start time.Time
}

// idle reports whether nothing waits to be committed but a chained epoch:
// no dirty buffer in the open epoch and no epoch in the queue.
func (v *CachedVolume) idle() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.dirty) == 0 && len(v.queue) == 0
}

// commitAll commits until nothing is dirty or pending. commitMu is held.
func (v *CachedVolume) commitAll() error {
	for {
		if err := v.commitLocked(^uint64(0)); err != nil {
			return err
		}
		if v.pend == nil && v.idle() {
			return nil
		}
	}
}

// commitLocked commits epochs until epoch target is durable. commitMu is
// held.
//
// A commit is (1) undo records durable, (2) data in place durable, (3) FIFO
// header advanced durable. When more writes arrived while epoch E was being
// written, commitLocked chains: it cuts E+1 right after E's step 2 and makes
// E's header advance and E+1's undo records durable with one sync of the
// FIFO (E+1's records describe the device after E, which is what the device
// holds by then). Under a steady load, such as many WCE=0 writers, an epoch
// then costs two syncs instead of three. E's waiters are woken as soon as
// that sync completes; once target is durable the chained epoch is left in
// v.pend for the flusher (or the next committer) to finish.
func (v *CachedVolume) commitLocked(target uint64) error {
	if err := v.failedErr(); err != nil {
		return err
	}
	var (
		ep    uint64
		set   []*buf
		batch *undo.Batch
		start time.Time
		err   error
	)
	if p := v.pend; p != nil {
		v.pend = nil
		ep, set, batch, start = p.ep, p.set, p.batch, p.start
	} else {
		v.lock()
		ep, set = v.nextLocked()
		v.unlock()
		if len(set) == 0 {
			// Nothing changed since the last commit, which is durable.
			v.durable.Store(ep)
			return nil
		}
		start = time.Now()
		// The FIFO numbers its batches itself, one past the last it
		// committed: the volume's epoch numbers only order waiters, and
		// after ClearError a failed epoch that is committed again carries
		// a number the FIFO's recovery has already used up.
		batch = v.fifo.Begin(v.fifo.Committed() + 1)
		err = v.recordUndoSet(batch, set)
		if err == nil {
			err = batch.Write() // step 1
		}
	}
	for chain := 1; ; chain++ {
		if err == nil {
			err = v.writeInPlace(set) // step 2
		}
		if err != nil {
			return v.commitFailed(err, cutEpoch{ep, set})
		}
		// Step 3, chained with step 1 of the next epoch when there is one
		// and both epochs' records fit in the ring together.
		var next *undo.Batch
		var nep uint64
		var nset []*buf
		v.lock()
		waiting := len(v.dirty)
		if len(v.queue) > 0 {
			waiting = len(v.queue[0].set)
		}
		worst := int64(waiting)*undo.RecordSize(ChunkSize) + v.fifo.MaxPayload() + 2*undo.SectorSize
		if waiting > 0 && batch.Len()+worst <= v.fifo.RingSize() {
			nep, nset = v.nextLocked()
		}
		v.unlock()
		if nset == nil {
			if err := batch.Commit(); err != nil {
				return v.commitFailed(err, cutEpoch{ep, set})
			}
		} else {
			next = batch.Next(batch.Epoch() + 1)
			err = v.recordUndoSet(next, nset)
			if err == nil {
				err = batch.CommitWith(next)
			}
			v.st.chained.Add(1)
			if err != nil {
				// Neither epoch is known durable; recovery rolls both back.
				return v.commitFailed(err, cutEpoch{ep, set}, cutEpoch{nep, nset})
			}
		}
		v.finishEpoch(ep, set, batch.PayloadBytes(), start)
		if nset == nil {
			return nil
		}
		if v.durable.Load() >= target || chain >= maxChain {
			v.pend = &chained{ep: nep, set: nset, batch: next, start: time.Now()}
			v.kickFlusher()
			return nil
		}
		ep, set, batch, start = nep, nset, next, time.Now()
	}
}

// commitFailed freezes the volume, keeps the failed epochs for a retry
// and returns the error a flush reports. The first epoch names the error.
func (v *CachedVolume) commitFailed(err error, eps ...cutEpoch) error {
	v.failCommit(err, eps)
	v.wakeSyncWaiters()
	return fmt.Errorf("engine: %s commit epoch %d: %v: %w", v.name, eps[0].ep, err, backingErr(err))
}

// cutEpoch is an epoch that was cut and waits in v.queue for its commit:
// its buffers are frozen with the versions it wrote (writers copy them on
// write).
type cutEpoch struct {
	ep  uint64
	set []*buf
}

// nextLocked returns the next epoch to commit: the oldest in the queue,
// or else the open epoch, cut now. v.mu and commitMu are held.
func (v *CachedVolume) nextLocked() (uint64, []*buf) {
	if len(v.queue) > 0 {
		f := v.queue[0]
		v.queue = v.queue[1:]
		return f.ep, f.set
	}
	return v.cutLocked()
}

// finishEpoch runs after epoch ep is durable: its buffers become clean (or
// are released when a newer version replaced them, or when they were
// holes), and its waiters are woken.
func (v *CachedVolume) finishEpoch(ep uint64, set []*buf, undoBytes int64, start time.Time) {
	var gone []*buf
	var origs []*[ChunkSize]byte
	var freed int64
	v.lock()
	for _, b := range set {
		b.frozen = false
		if b.orig != nil {
			origs = append(origs, b.orig)
			b.orig = nil
			freed += ChunkSize
		}
		if v.chunks.get(b.key) == b {
			if b.data.Load() == nil {
				// A committed hole needs no buffer: the device reads zeroes.
				v.chunks.del(b.key)
				v.evictGen++
			} else {
				b.state.Store(stateClean)
				freed += ChunkSize
			}
			continue
		}
		// Replaced by a newer version while in flight.
		if b.data.Load() != nil {
			freed += ChunkSize
			gone = append(gone, b)
		}
	}
	v.addDirtyLocked(-freed)
	v.durable.Store(ep)
	v.unlock()
	if v.commitHook != nil {
		v.commitHook(ep)
	}
	v.wakeSyncWaiters()
	v.cache.untrack(gone)
	for _, b := range gone {
		v.cache.free(b.data.Load())
	}
	for _, d := range origs {
		v.cache.free(d)
	}
	v.st.epochs.Add(1)
	v.st.undoBytes.Add(uint64(undoBytes))
	v.st.commitLat.observe(time.Since(start))
}

// wakeSyncWaiters wakes syncTo callers to recheck the durable epoch.
func (v *CachedVolume) wakeSyncWaiters() {
	v.gcMu.Lock()
	v.gcCond.Broadcast()
	v.gcMu.Unlock()
}

// failCommit freezes the volume after a failed commit. The FIFO stays where
// it was, so recovery (at open or in ClearError) rolls the partial epochs
// back. The failed epochs go back to the head of the queue, whole and in
// order, their buffers frozen with the versions they wrote, and are
// committed again one by one before the epochs cut after them. Merging
// them into the open epoch instead would build an epoch larger than the
// FIFO holds (a failed chain is two epochs, and the open epoch keeps
// filling while a commit runs); splitting such a merge by offset would
// break the prefix order of the writes.
func (v *CachedVolume) failCommit(err error, eps []cutEpoch) {
	v.st.commitErrors.Add(1)
	v.log.Error("commit failed; volume is read-only until the error is cleared", "epoch", eps[0].ep, "err", err)
	v.lock()
	e := err
	v.failed.Store(&e)
	v.queue = append(v.queue, eps...)
	slices.SortFunc(v.queue, func(a, b cutEpoch) int { return cmp.Compare(a.ep, b.ep) })
	if !v.pinned {
		// The frozen volume's dirty bytes cannot drain; stop counting them
		// against the other volumes' dirty limit.
		v.pinned = true
		v.cache.addDirty(-v.dirtyBytes)
	}
	v.unlock()
	v.cache.wakeDirtyWaiters()
}

// recordUndoSet appends undo records for the sorted buffers of one epoch,
// one contiguous run at a time.
func (v *CachedVolume) recordUndoSet(batch *undo.Batch, set []*buf) error {
	var ext extent
	for i := 0; i < len(set); {
		j := i + 1
		for j < len(set) && set[j].key == set[j-1].key+1 {
			j++
		}
		if err := v.recordUndo(batch, &ext, set[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// writeInPlace writes an epoch's sorted buffers to the data device,
// coalescing adjacent chunks into vectored writes and punching holes for
// unmapped ones, and syncs it.
func (v *CachedVolume) writeInPlace(set []*buf) error {
	size := v.size.Load()
	for i := 0; i < len(set); {
		hole := set[i].data.Load() == nil
		j := i + 1
		for j < len(set) && set[j].key == set[j-1].key+1 && (set[j].data.Load() == nil) == hole {
			j++
		}
		if hole {
			off := set[i].key * ChunkSize
			end := min((set[j-1].key+1)*ChunkSize, size)
			if err := v.data.Discard(off, end-off); err != nil {
				return err
			}
			i = j
			continue
		}
		// Long runs go out in pieces, and each piece's writeback starts
		// as soon as it is copied out: the disk then works while the rest
		// of the epoch is still being copied, and the Sync below waits
		// only for the tail.
		for i < j {
			n := min(j-i, writebackPiece/ChunkSize)
			off := set[i].key * ChunkSize
			iov := make([][]byte, 0, n)
			for _, b := range set[i : i+n] {
				iov = append(iov, b.data.Load()[:min(ChunkSize, size-b.key*ChunkSize)])
			}
			if err := v.data.WriteAtv(iov, off); err != nil {
				return err
			}
			if n == writebackPiece/ChunkSize {
				if err := startWritebackOn(v.data, off, writebackPiece); err != nil {
					return err
				}
			}
			i += n
		}
	}
	return v.data.Sync()
}

// writebackPiece is the size of the pieces a commit writes long in-place
// runs in, starting each one's writeback as soon as it is written.
const writebackPiece = 4 << 20

// recordUndo appends undo records for chunks [k0, k1): hole records for
// chunks the device has not allocated, data records with the old bytes for
// the rest.
func (v *CachedVolume) recordUndo(batch *undo.Batch, ext *extent, run []*buf) error {
	k0, k1 := run[0].key, run[len(run)-1].key+1
	size := v.size.Load()
	maxPay := v.fifo.MaxPayload() / ChunkSize
	// Classify each chunk: allocated if any byte of it is mapped.
	mapped := make([]bool, k1-k0)
	for off, end := k0*ChunkSize, min(k1*ChunkSize, size); off < end; {
		m, n, err := ext.lookup(v.data, off, size)
		if err != nil {
			return err
		}
		n = max(min(n, end-off), 1)
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
			if err := v.oldContents(p, off, run[i:j]); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}

// extent remembers the last allocation query of a commit. The runs of an
// epoch are visited in offset order and one SEEK_DATA/SEEK_HOLE answer
// usually covers many of them (a fully written file is one extent), so this
// saves two system calls per run.
type extent struct {
	from, until int64
	mapped      bool
}

// lookup answers like Device.Mapped(off, size-off).
func (e *extent) lookup(d Device, off, size int64) (bool, int64, error) {
	if off >= e.from && off < e.until {
		return e.mapped, e.until - off, nil
	}
	m, n, err := d.Mapped(off, size-off)
	if err != nil {
		return false, 0, err
	}
	n = max(n, 1)
	e.from, e.until, e.mapped = off, off+n, m
	return m, n, nil
}

// oldContents fills p, the old contents of the chunks of run starting at
// off, from the buffers' saved clean copies when every one has one, and
// from the device otherwise.
func (v *CachedVolume) oldContents(p []byte, off int64, run []*buf) error {
	for _, b := range run {
		if b.orig == nil {
			_, err := v.data.ReadAt(p, off)
			return err
		}
	}
	for i, b := range run {
		copy(p[i*ChunkSize:], b.orig[:])
	}
	return nil
}
