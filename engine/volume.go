package engine

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"
)

// Errors returned by Volume methods. Callers test them with errors.Is; the
// engine wraps them with context.
var (
	// ErrOutOfRange: the request reaches past the end of the volume or is not
	// aligned to the block size.
	ErrOutOfRange = errors.New("engine: request out of range")
	// ErrReadOnly: the volume refuses writes, either because an operator made
	// it read-only or because a failed commit froze it.
	ErrReadOnly = errors.New("engine: volume is read-only")
	// ErrMedium: the backing store failed the I/O (EIO and the like).
	// Front ends report it as a medium error.
	ErrMedium = errors.New("engine: medium error")
	// ErrClosed: the volume has been closed.
	ErrClosed = errors.New("engine: volume closed")
	// ErrNoSpace: the file system (or quota) holding a thin volume's data
	// or undo FIFO is full (ENOSPC, EDQUOT). Front ends report SPACE
	// ALLOCATION FAILED WRITE PROTECT; the volume stays read-only until
	// space is freed and the error is cleared.
	ErrNoSpace = errors.New("engine: out of space")
	// ErrDegraded: recovery could not tell whether the newest epoch was
	// committed, so it left the data as it was and the volume read-only
	// until an operator acts (CachedVolume.Degraded says why).
	ErrDegraded = errors.New("engine: volume is degraded")
)

// Volume is one exported block volume. All methods are safe for concurrent
// use. Offsets and lengths are in bytes and must be multiples of BlockSize.
//
// Durability contract: a write that returned nil is acknowledged. After
// Flush returns nil, every write acknowledged before Flush was called is
// durable. A write with fua=true is durable when it returns, and so is every
// write acknowledged before it.
type Volume interface {
	// Name is the volume's catalog name.
	Name() string
	// Size is the volume's size in bytes, a multiple of BlockSize.
	Size() int64
	// BlockSize is the logical block size in bytes (512 or 4096).
	BlockSize() int

	// ReadAt fills p from offset off. Unwritten and unmapped ranges read as
	// zeroes.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at offset off. With fua the data (and everything
	// acknowledged before it) is durable before WriteAt returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// WriteZeroes makes [off, off+n) read as zeroes. With unmap the engine
	// may deallocate the range (a thin volume punches a hole).
	WriteZeroes(ctx context.Context, off, n int64, unmap bool) error
	// Unmap deallocates [off, off+n); afterwards the range reads as zeroes.
	Unmap(ctx context.Context, off, n int64) error
	// Flush makes every acknowledged write durable.
	Flush(ctx context.Context) error

	// Mapped reports whether the range starting at off is allocated in the
	// backing store, and how many bytes from off (at most n) share that
	// state. It serves GET LBA STATUS.
	Mapped(ctx context.Context, off, n int64) (mapped bool, length int64, err error)

	// WriteCache reports whether the volatile write cache is enabled. When it
	// is off, every write is durable before it is acknowledged.
	WriteCache() bool
	// SetWriteCache turns the volatile write cache on or off. Turning it off
	// flushes first.
	SetWriteCache(on bool) error
	// ReadOnly reports whether writes are refused.
	ReadOnly() bool
	// Limits reports the engine's transfer and atomicity limits.
	Limits() Limits

	// Close flushes and releases the volume.
	Close() error
}

// Limits are the engine's advertised limits, in bytes. The SCSI core turns
// them into the Block Limits VPD page.
type Limits struct {
	// AtomicWriteMax is the largest write that is all-or-nothing across a
	// crash. Zero means only a single block is atomic.
	AtomicWriteMax int64
	// OptimalTransfer is the preferred transfer size; zero means unknown.
	OptimalTransfer int64
	// MaxUnmap is the largest range one Unmap call takes; zero means Unmap
	// is not supported.
	MaxUnmap int64
}

// Resizer is implemented by volumes that can change size online.
type Resizer interface {
	// Resize grows or shrinks the volume to size bytes (a multiple of
	// BlockSize).
	Resize(ctx context.Context, size int64) error
}

// IsNoSpace reports whether a backing-store error means the file system or
// quota is full.
func IsNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, ErrNoSpace)
}

// backingErr is the sentinel a failed backing-store operation reports:
// ErrNoSpace when the file system is full, ErrMedium otherwise.
func backingErr(err error) error {
	if IsNoSpace(err) {
		return ErrNoSpace
	}
	return ErrMedium
}

// FrozenErr returns the error that froze v read-only (a commit that
// failed), or nil, looking through wrappers that implement
// Unwrap() Volume. Front ends use it to tell a volume that ran out of
// space from one an operator made read-only.
func FrozenErr(v Volume) error {
	for v != nil {
		if e, ok := v.(interface{ Err() error }); ok {
			return e.Err()
		}
		u, ok := v.(interface{ Unwrap() Volume })
		if !ok {
			return nil
		}
		v = u.Unwrap()
	}
	return nil
}
