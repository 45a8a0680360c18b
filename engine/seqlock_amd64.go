package engine

import "sync/atomic"

// seqAfterReads loads a sequence-lock word after the plain reads that
// precede it (readHit's copy). x86-64 never lets a load pass an older
// load, so an ordinary atomic load is enough.
func seqAfterReads(seq *atomic.Uint64) uint64 { return seq.Load() }
