// Package engine is Anvil's block I/O engine: the crash-consistent volume
// that the SCSI command core (target/scsi) reads and writes through, over a
// backing Device (a sparse file, a block device or an mmap'd file) and an
// undo FIFO (engine/undo).
//
// # The write flow
//
// A write is staged in the cache, joins an epoch, and reaches the disk when
// the epoch commits: undo records first, then the data in place, then the
// FIFO header. In order:
//
//  1. CachedVolume.WriteAt (cached.go) checks the range and calls write,
//     which cuts the request into pieces of at most Limits().AtomicWriteMax
//     and hands each to apply.
//  2. apply copies a piece into the shared cache's chunk buffers under the
//     volume lock, as part of the open epoch (v.epoch); an epoch with no
//     room left is cut and queued first. With the write cache off or FUA,
//     write then waits in syncTo (epoch.go) for that epoch to be durable;
//     otherwise the write is acknowledged now.
//  3. The commit runs in flusher (flusher.go) on its interval or when
//     kicked, or in the caller's goroutine through syncTo: both call
//     commitLocked (epoch.go).
//  4. commitLocked takes the next epoch with nextLocked, the oldest queued
//     one or else the open epoch cut now by cutLocked, which freezes its
//     buffers (later writes copy them) and sorts them by offset.
//  5. fifo.Begin (undo/undo.go) starts the epoch's undo batch, and
//     recordUndoSet walks the epoch in runs of adjacent chunks, each through
//     recordUndo: the chunks' old contents (or hole records for unallocated
//     ones) are appended to the batch.
//  6. Batch.Write writes the records to the FIFO and syncs it (step 1 of
//     the commit).
//  7. writeInPlace writes the chunks to the data device with vectored
//     writes, punches holes for unmapped ones, and syncs (step 2).
//  8. Batch.Commit advances the FIFO header past the epoch with the FIFO's
//     writeHeader, which writes it and syncs (step 3). When more writes are
//     waiting, Batch.CommitWith instead writes the header (putHeader) and
//     the next epoch's records together with one sync: that epoch has
//     passed steps 4 to 6 and goes on at step 7 after this one's step 9
//     (or waits in v.pend for the flusher).
//  9. finishEpoch marks the buffers clean, releases replaced versions and
//     wakes the epoch's waiters.
//
// Recovery (undo.FIFO.Recover, called from OpenDevices) rolls back an
// epoch whose records are in the FIFO but whose header advance is not, so
// after a crash a volume holds the state after some prefix of its
// acknowledged writes.
//
// The engine knows nothing of SCSI. It speaks in byte offsets and lengths
// that are multiples of the volume's block size, and reports failures as the
// sentinel errors in volume.go, which the front end maps to its own status
// codes (sense data).
package engine
