package engine

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// FaultDevice wraps a Device and fails a configurable share of its I/Os with
// EIO. Whether the k-th I/O fails depends only on the seed and k, so a run
// with the same seed and the same I/O sequence fails the same I/Os. In
// no-space mode (SetFaultNoSpace) the chosen writes fail with ENOSPC
// instead, as on a full file system, and reads, syncs and discards
// (which free space) are left alone.
type FaultDevice struct {
	Device
	rate    atomic.Int64 // failures per 10,000 I/Os
	seed    atomic.Uint64
	noSpace atomic.Bool
	n       atomic.Uint64 // I/Os issued since SetFaultRate
	hits    atomic.Uint64 // I/Os failed
}

// NewFaultDevice wraps d with injection off.
func NewFaultDevice(d Device) *FaultDevice { return &FaultDevice{Device: d} }

// SetFaultRate makes n of every 10,000 subsequent I/Os fail, chosen by seed.
// n == 0 turns injection off.
func (f *FaultDevice) SetFaultRate(n int, seed uint64) {
	f.seed.Store(seed)
	f.n.Store(0)
	f.rate.Store(int64(max(0, min(n, 10000))))
}

// SetFaultNoSpace switches between failing with EIO (false, the default)
// and failing only writes, with ENOSPC (true).
func (f *FaultDevice) SetFaultNoSpace(on bool) { f.noSpace.Store(on) }

// Injected reports how many I/Os have been failed so far.
func (f *FaultDevice) Injected() uint64 { return f.hits.Load() }

// fail decides whether the next I/O fails (splitmix64 of seed and counter).
func (f *FaultDevice) fail(op string, off int64) error {
	r := f.rate.Load()
	if r == 0 {
		return nil
	}
	errno := unix.EIO
	if f.noSpace.Load() {
		if op != "write" {
			return nil
		}
		errno = unix.ENOSPC
	}
	k := f.n.Add(1)
	z := f.seed.Load() + k*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	if int64(z%10000) < r {
		f.hits.Add(1)
		return fmt.Errorf("injected fault on %s at %d: %w", op, off, errno)
	}
	return nil
}

// ReadAt implements Device.
func (f *FaultDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fail("read", off); err != nil {
		return 0, err
	}
	return f.Device.ReadAt(p, off)
}

// ReadAtv implements VectorReader, with one fault draw for the whole read
// like the single-buffer ReadAt. A device without vectored reads is read
// buffer by buffer.
func (f *FaultDevice) ReadAtv(bufs [][]byte, off int64) error {
	if err := f.fail("read", off); err != nil {
		return err
	}
	return readAtv(f.Device, bufs, off)
}

// WriteAt implements Device.
func (f *FaultDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fail("write", off); err != nil {
		return 0, err
	}
	return f.Device.WriteAt(p, off)
}

// WriteAtv implements Device.
func (f *FaultDevice) WriteAtv(bufs [][]byte, off int64) error {
	if err := f.fail("write", off); err != nil {
		return err
	}
	return f.Device.WriteAtv(bufs, off)
}

// StartWriteback implements WritebackStarter when the wrapped device does;
// otherwise it does nothing. It injects no faults: it promises nothing.
func (f *FaultDevice) StartWriteback(off, n int64) error {
	return startWritebackOn(f.Device, off, n)
}

// Sync implements Device.
func (f *FaultDevice) Sync() error {
	if err := f.fail("sync", 0); err != nil {
		return err
	}
	return f.Device.Sync()
}

// Discard implements Device.
func (f *FaultDevice) Discard(off, n int64) error {
	if err := f.fail("discard", off); err != nil {
		return err
	}
	return f.Device.Discard(off, n)
}
