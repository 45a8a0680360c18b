package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine/internal/fileio"
)

// FileOptions configure OpenFile.
type FileOptions struct {
	// Name is the volume's catalog name.
	Name string
	// BlockSize is the logical block size, 512 or 4096.
	BlockSize int
	// Size, when the file does not exist yet, is the size it is created
	// with (sparse). For an existing file the file's size wins.
	Size int64
	// ReadOnly refuses writes.
	ReadOnly bool
	// WriteCacheOff makes every write durable before it is acknowledged
	// (SCSI WCE=0).
	WriteCacheOff bool
}

// FileVolume is the plain engine: pread/pwrite on a raw image file and
// fdatasync on flush. It keeps no cache of its own (the kernel's page cache
// is its write-back cache), so it promises only what a disk promises: data
// acknowledged before a completed flush survives a crash. It is the
// baseline the crash-consistent engine is measured against.
type FileVolume struct {
	name      string
	blockSize int
	path      string

	// mu is held shared by every I/O and exclusively by Close and Resize,
	// so neither can pull the file out from under an I/O.
	mu     sync.RWMutex
	f      *os.File
	size   int64
	closed bool

	writeCache atomic.Bool
	readOnly   atomic.Bool
}

// OpenFile opens (or creates, sparse, with opts.Size bytes) the raw image at
// path as a plain file-backed volume.
func OpenFile(path string, opts FileOptions) (*FileVolume, error) {
	if opts.BlockSize != 512 && opts.BlockSize != 4096 {
		return nil, fmt.Errorf("open volume %q: block size %d: must be 512 or 4096", opts.Name, opts.BlockSize)
	}
	flags := os.O_RDWR
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if opts.Size <= 0 || opts.Size%int64(opts.BlockSize) != 0 {
			return nil, fmt.Errorf("create volume %q: size %d is not a positive multiple of %d", opts.Name, opts.Size, opts.BlockSize)
		}
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open volume %q: %w", opts.Name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat volume %q: %w", opts.Name, err)
	}
	size := st.Size()
	if flags&os.O_CREATE != 0 {
		if err := f.Truncate(opts.Size); err != nil {
			f.Close()
			os.Remove(path)
			return nil, fmt.Errorf("create volume %q: %w", opts.Name, err)
		}
		size = opts.Size
	}
	if size%int64(opts.BlockSize) != 0 {
		f.Close()
		return nil, fmt.Errorf("open volume %q: file size %d is not a multiple of block size %d", opts.Name, size, opts.BlockSize)
	}
	v := &FileVolume{name: opts.Name, blockSize: opts.BlockSize, path: path, f: f, size: size}
	v.writeCache.Store(!opts.WriteCacheOff)
	v.readOnly.Store(opts.ReadOnly)
	return v, nil
}

// Name implements Volume.
func (v *FileVolume) Name() string { return v.name }

// Path is the raw image file's path.
func (v *FileVolume) Path() string { return v.path }

// Size implements Volume.
func (v *FileVolume) Size() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.size
}

// BlockSize implements Volume.
func (v *FileVolume) BlockSize() int { return v.blockSize }

// WriteCache implements Volume.
func (v *FileVolume) WriteCache() bool { return v.writeCache.Load() }

// SetWriteCache implements Volume. Turning the cache off flushes first so
// that nothing acknowledged earlier stays volatile.
func (v *FileVolume) SetWriteCache(on bool) error {
	if !on && v.writeCache.Load() {
		if err := v.Flush(context.Background()); err != nil {
			return err
		}
	}
	v.writeCache.Store(on)
	return nil
}

// ReadOnly implements Volume.
func (v *FileVolume) ReadOnly() bool { return v.readOnly.Load() }

// SetReadOnly makes the volume refuse (or accept again) writes.
func (v *FileVolume) SetReadOnly(ro bool) { v.readOnly.Store(ro) }

// Limits implements Volume. The plain engine only promises what a disk
// does: a single logical block is written atomically.
func (v *FileVolume) Limits() Limits {
	return Limits{
		AtomicWriteMax:  int64(v.blockSize),
		OptimalTransfer: 128 << 10,
		MaxUnmap:        1 << 30,
	}
}

// check validates a request against the volume's geometry. The caller holds mu.
func (v *FileVolume) check(off, n int64) error {
	bs := int64(v.blockSize)
	if v.closed {
		return ErrClosed
	}
	if off < 0 || n < 0 || off%bs != 0 || n%bs != 0 || off > v.size || n > v.size-off {
		return fmt.Errorf("volume %q: [%d, +%d) of %d bytes: %w", v.name, off, n, v.size, ErrOutOfRange)
	}
	return nil
}

// ioErr classifies a backing-store error. Anything the kernel reports for
// the I/O itself is a medium error to the initiator.
func (v *FileVolume) ioErr(op string, off int64, err error) error {
	return fmt.Errorf("volume %q: %s at %d: %w: %w", v.name, op, off, ErrMedium, err)
}

// ReadAt implements Volume.
func (v *FileVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	n, err := v.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return v.ioErr("read", off, err)
	}
	return nil
}

// WriteAt implements Volume.
func (v *FileVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if v.readOnly.Load() {
		return fmt.Errorf("volume %q: write: %w", v.name, ErrReadOnly)
	}
	if _, err := v.f.WriteAt(p, off); err != nil {
		return v.ioErr("write", off, err)
	}
	if fua || !v.writeCache.Load() {
		return v.sync()
	}
	return nil
}

// WriteZeroes implements Volume. The file is sparse either way: unmap
// punches a hole, otherwise the range is zeroed but stays allocated.
func (v *FileVolume) WriteZeroes(ctx context.Context, off, n int64, unmap bool) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.check(off, n); err != nil {
		return err
	}
	if v.readOnly.Load() {
		return fmt.Errorf("volume %q: write zeroes: %w", v.name, ErrReadOnly)
	}
	mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
	if unmap {
		mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	}
	if err := v.fallocate(mode, off, n); err != nil {
		return err
	}
	if !v.writeCache.Load() {
		return v.sync()
	}
	return nil
}

// Unmap implements Volume.
func (v *FileVolume) Unmap(ctx context.Context, off, n int64) error {
	return v.WriteZeroes(ctx, off, n, true)
}

// fallocate changes the allocation of [off, off+n), falling back to writing
// zeroes when the filesystem cannot punch or zero ranges. The caller holds mu.
func (v *FileVolume) fallocate(mode uint32, off, n int64) error {
	if err := fileio.Fallocate(int(v.f.Fd()), mode, off, n, v.f); err != nil {
		return v.ioErr("fallocate", off, err)
	}
	return nil
}

// Flush implements Volume.
func (v *FileVolume) Flush(ctx context.Context) error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.closed {
		return ErrClosed
	}
	return v.sync()
}

func (v *FileVolume) sync() error {
	if err := fileio.Fdatasync(int(v.f.Fd())); err != nil {
		return v.ioErr("sync", 0, err)
	}
	return nil
}

// Mapped implements Volume with SEEK_DATA/SEEK_HOLE. Filesystems without
// hole reporting answer "all data", which is the conservative answer.
func (v *FileVolume) Mapped(ctx context.Context, off, n int64) (bool, int64, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.check(off, n); err != nil {
		return false, 0, err
	}
	if n == 0 {
		return true, 0, nil
	}
	bs := int64(v.blockSize)
	mapped, length, err := fileio.Mapped(int(v.f.Fd()), off, n)
	switch {
	case err != nil:
		return true, n, nil
	case !mapped: // stop at the block holding the next data
		return false, roundDown(off+length, bs) - off, nil
	}
	return true, max(roundUp(off+length, bs)-off, bs), nil
}

func roundDown(x, m int64) int64 { return x / m * m }
func roundUp(x, m int64) int64   { return (x + m - 1) / m * m }

// Resize implements Resizer. Shrinking discards the tail.
func (v *FileVolume) Resize(ctx context.Context, size int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return ErrClosed
	}
	if size <= 0 || size%int64(v.blockSize) != 0 {
		return fmt.Errorf("resize volume %q to %d: %w", v.name, size, ErrOutOfRange)
	}
	if err := v.f.Truncate(size); err != nil {
		return fmt.Errorf("resize volume %q: %w", v.name, err)
	}
	if err := v.sync(); err != nil {
		return err
	}
	v.size = size
	return nil
}

// Close implements Volume: it flushes and closes the file.
func (v *FileVolume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	serr := v.sync()
	cerr := v.f.Close()
	if serr != nil {
		return serr
	}
	if cerr != nil {
		return fmt.Errorf("close volume %q: %w", v.name, cerr)
	}
	return nil
}

var (
	_ Volume  = (*FileVolume)(nil)
	_ Resizer = (*FileVolume)(nil)
)
