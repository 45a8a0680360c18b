//go:build !amd64

package engine

import "sync/atomic"

// seqAfterReads loads a sequence-lock word after the plain reads that
// precede it (readHit's copy). Weakly ordered CPUs may satisfy a plain load
// after a later acquire load, so this uses a read-modify-write, which
// orders every earlier access before it.
func seqAfterReads(seq *atomic.Uint64) uint64 { return seq.Add(0) }
