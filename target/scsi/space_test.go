package scsi

import (
	"context"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine"
)

// fullVolume is a memVolume on a full file system: writes and flushes fail
// with the given error.
type fullVolume struct {
	*memVolume
	err error
}

func (v *fullVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error { return v.err }
func (v *fullVolume) Flush(ctx context.Context) error                                  { return v.err }

// TestOutOfSpaceIsSpaceAllocationFailed: a backing write that fails because
// the file system is full (ENOSPC or EDQUOT from the plain engine, the
// engine's ErrNoSpace from the caching one) answers DATA PROTECT, SPACE
// ALLOCATION FAILED WRITE PROTECT (07/27/07), not MEDIUM ERROR.
func TestOutOfSpaceIsSpaceAllocationFailed(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("volume: write at 0: %w: pwrite: %w", engine.ErrMedium, unix.ENOSPC),
		fmt.Errorf("volume: write at 0: %w: pwrite: %w", engine.ErrMedium, unix.EDQUOT),
		fmt.Errorf("engine: commit epoch 3: undo: write records: no space left on device: %w", engine.ErrNoSpace),
	} {
		f := newFixture(t)
		fv := &fullVolume{memVolume: f.vol, err: err}
		lu := NewLogicalUnit(fv, LUConfig{Serial: "SN2"})
		if err := f.tgt.RemoveLUN(0); err != nil {
			t.Fatal(err)
		}
		if err := f.tgt.AddLUN(0, lu); err != nil {
			t.Fatal(err)
		}
		f.clearUA(f.n1)
		expectSense(t, f.run(rw(opWrite10, 10, 0, 1), make([]byte, 512)), SenseDataProtect, ascSpaceAllocFailedWP)
		expectSense(t, f.run(cdb(opSyncCache10, 10), nil), SenseDataProtect, ascSpaceAllocFailedWP)
	}
}

// TestSoftThresholdUnitAttention: SoftThresholdReached gives every nexus
// one THIN PROVISIONING SOFT THRESHOLD REACHED unit attention (06/38/07).
func TestSoftThresholdUnitAttention(t *testing.T) {
	f := newFixture(t)
	f.lu.SoftThresholdReached()
	for _, n := range []*Nexus{f.n1, f.n2} {
		expectSense(t, f.exec(n, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascSoftThresholdReached)
		expectGood(t, f.exec(n, cdb(opTestUnitReady, 6), nil))
	}
}

// frozenVolume is a memVolume that a commit which ran out of space froze
// read-only.
type frozenVolume struct{ *memVolume }

func (v *frozenVolume) ReadOnly() bool { return true }
func (v *frozenVolume) Err() error {
	return fmt.Errorf("undo: write records: %w", unix.ENOSPC)
}

// TestFrozenByNoSpaceIsSpaceAllocationFailed: once a full file system froze
// the volume, writes answer 07/27/07 too, not plain WRITE PROTECTED.
func TestFrozenByNoSpaceIsSpaceAllocationFailed(t *testing.T) {
	f := newFixture(t)
	lu := NewLogicalUnit(&frozenVolume{f.vol}, LUConfig{Serial: "SN3"})
	f.tgt.RemoveLUN(0)
	if err := f.tgt.AddLUN(0, lu); err != nil {
		t.Fatal(err)
	}
	f.clearUA(f.n1)
	expectSense(t, f.run(rw(opWrite10, 10, 0, 1), make([]byte, 512)), SenseDataProtect, ascSpaceAllocFailedWP)
	expectSense(t, f.run(rw(opWrite16, 16, 8, 1), make([]byte, 512)), SenseDataProtect, ascSpaceAllocFailedWP)
}
