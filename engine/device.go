package engine

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine/internal/fileio"
)

// Device is the backing store under a volume: a flat, byte-addressed range
// with explicit durability. The engine issues block-aligned I/O only.
//
// Durability contract: data written with WriteAt, WriteAtv or removed with
// Discard is durable once a later Sync has returned nil. Until then a crash
// may persist any subset of it. All methods are safe for concurrent use on
// non-overlapping ranges.
type Device interface {
	// ReadAt reads len(p) bytes at off. Holes read as zeroes.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off.
	WriteAt(p []byte, off int64) (int, error)
	// WriteAtv writes the buffers back to back starting at off, as one
	// vectored write where the backend supports it.
	WriteAtv(bufs [][]byte, off int64) error
	// Sync makes every completed write and discard durable.
	Sync() error
	// Discard deallocates [off, off+n); afterwards the range reads as zeroes.
	Discard(off, n int64) error
	// Mapped reports whether off is backed by allocated storage and how many
	// bytes from off (at most n) share that state. Devices that cannot tell
	// report everything as mapped.
	Mapped(off, n int64) (mapped bool, length int64, err error)
	// Size is the device size in bytes.
	Size() int64
	// Truncate changes the device size; devices that cannot resize return an
	// error.
	Truncate(size int64) error
	// Close releases the device.
	Close() error
}

// maxIOV bounds the iovec count of one pwritev (Linux IOV_MAX is 1024).
const maxIOV = 1024

// FileDevice is a Device over a regular (usually sparse) file, using
// pread/pwrite/pwritev, fdatasync, fallocate(PUNCH_HOLE) and
// lseek(SEEK_DATA/SEEK_HOLE).
type FileDevice struct {
	f    *os.File
	fd   int
	size int64

	// directFile is the same file opened with O_DIRECT (UseDirectWrites),
	// closed by Close; direct holds it while WriteAt may use it for writes
	// that meet its alignment, and nil once the kernel refused one.
	directFile     *os.File
	direct         atomic.Pointer[os.File]
	dioMem, dioOff int // alignment of memory, and of offset and length
}

// OpenFileDevice opens the raw image at path. With create it makes a sparse
// file of size bytes when none exists; otherwise size is ignored and the
// file's own size counts.
func OpenFileDevice(path string, create bool, size int64) (*FileDevice, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, st, err := openStat(path, flags, 0o600)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("engine: %s is not a regular file", path)
	}
	d := &FileDevice{f: f, fd: int(f.Fd()), size: st.Size()}
	if create && st.Size() == 0 && size > 0 {
		if err := d.Truncate(size); err != nil {
			f.Close()
			return nil, err
		}
	}
	return d, nil
}

// openStat opens path and stats the open file, closing it again when the
// stat fails.
func openStat(path string, flags int, perm os.FileMode) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, flags, perm)
	if err != nil {
		return nil, nil, fmt.Errorf("engine: open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("engine: stat %s: %w", path, err)
	}
	return f, st, nil
}

// ReadAt implements Device.
func (d *FileDevice) ReadAt(p []byte, off int64) (int, error) {
	return preadFull(d.fd, p, off)
}

func preadFull(fd int, p []byte, off int64) (int, error) {
	return transferFull("pread", unix.Pread, fd, p, off, func(rest []byte) error {
		// Past EOF: the volume reads zeroes there.
		clear(rest)
		return nil
	})
}

// transferFull moves all of p at off with call (pread or pwrite),
// resuming after short transfers and EINTR. When a call transfers nothing,
// atZero gets the rest of p: it returns the error to report, or nil after
// dealing with it itself.
func transferFull(name string, call func(int, []byte, int64) (int, error), fd int, p []byte, off int64, atZero func([]byte) error) (int, error) {
	done := 0
	for done < len(p) {
		n, err := call(fd, p[done:], off+int64(done))
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return done, fmt.Errorf("%s at %d: %w", name, off+int64(done), err)
		}
		if n == 0 {
			if err := atZero(p[done:]); err != nil {
				return done, fmt.Errorf("%s at %d: %w", name, off+int64(done), err)
			}
			return len(p), nil
		}
		done += n
	}
	return done, nil
}

// WritebackStarter is implemented by devices that can start writing a
// range back to stable storage without waiting for it. The engine calls it
// on large in-place runs during a commit, so that the disk works while the
// rest of the epoch is still being copied out, and the Sync that ends the
// step waits for less. It changes no durability promise: until Sync
// returns, the range may or may not be durable, exactly as before.
type WritebackStarter interface {
	StartWriteback(off, n int64) error
}

// startWritebackOn starts writeback of [off, off+n) where d can
// (WritebackStarter) and does nothing elsewhere.
func startWritebackOn(d Device, off, n int64) error {
	if w, ok := d.(WritebackStarter); ok {
		return w.StartWriteback(off, n)
	}
	return nil
}

// StartWriteback implements WritebackStarter with
// sync_file_range(SYNC_FILE_RANGE_WRITE).
func (d *FileDevice) StartWriteback(off, n int64) error {
	return startWriteback(d.fd, off, n)
}

func startWriteback(fd int, off, n int64) error {
	if err := unix.SyncFileRange(fd, off, n, unix.SYNC_FILE_RANGE_WRITE); err != nil && err != unix.EINTR {
		return fmt.Errorf("engine: start writeback [%d,+%d): %w", off, n, err)
	}
	return nil
}

// VectorReader is implemented by devices that read into several buffers
// with one call (preadv). The cache fills a run of chunks with it straight
// into the chunk buffers instead of through a bounce buffer.
type VectorReader interface {
	// ReadAtv fills the buffers back to back from off. Holes and the range
	// past the end read as zeroes.
	ReadAtv(bufs [][]byte, off int64) error
}

// readAtv fills bufs back to back from off, with one call where d is a
// VectorReader and buffer by buffer elsewhere.
func readAtv(d Device, bufs [][]byte, off int64) error {
	if vr, ok := d.(VectorReader); ok {
		return vr.ReadAtv(bufs, off)
	}
	for _, b := range bufs {
		if _, err := d.ReadAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// ReadAtv implements VectorReader with preadv.
func (d *FileDevice) ReadAtv(bufs [][]byte, off int64) error {
	return preadvFull(d.fd, bufs, off)
}

func preadvFull(fd int, bufs [][]byte, off int64) error {
	return vectored("preadv", unix.Preadv, fd, bufs, off, func(iov [][]byte) error {
		// Past EOF: the volume reads zeroes there.
		for _, b := range iov {
			clear(b)
		}
		return nil
	})
}

// WriteAt implements Device. With UseDirectWrites, aligned writes bypass
// the page cache.
func (d *FileDevice) WriteAt(p []byte, off int64) (int, error) {
	if direct := d.direct.Load(); direct != nil && d.directOK(p, off) {
		n, err := pwriteFull(int(direct.Fd()), p, off)
		if !errors.Is(err, unix.EINVAL) {
			return n, err
		}
		// The file system turned down a write that statx said it
		// would take. Direct I/O is only an optimization: stop using
		// it and write through the page cache instead of failing.
		if d.direct.CompareAndSwap(direct, nil) {
			slog.Warn("direct writes refused; using the page cache", "file", d.f.Name(), "err", err)
		}
	}
	return pwriteFull(d.fd, p, off)
}

// UseDirectWrites makes WriteAt send writes that meet the file system's
// direct I/O alignment past the page cache (O_DIRECT); the rest, and every
// other method, keep using the page cache. It suits data that is written
// once, made durable at once and read back only in an emergency, such as
// undo records: copying them into the page cache costs CPU and memory and
// buys nothing. It fails, leaving the device as it was, where the kernel
// or the file system offers no direct I/O (tmpfs, for one).
func (d *FileDevice) UseDirectWrites() error {
	if d.directFile != nil {
		return nil
	}
	var st unix.Statx_t
	if err := unix.Statx(d.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st); err != nil {
		return fmt.Errorf("engine: statx %s: %w", d.f.Name(), err)
	}
	if st.Mask&unix.STATX_DIOALIGN == 0 || st.Dio_mem_align == 0 || st.Dio_offset_align == 0 {
		return fmt.Errorf("engine: %s: the file system offers no direct I/O", d.f.Name())
	}
	f, err := os.OpenFile(d.f.Name(), os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("engine: open %s for direct I/O: %w", d.f.Name(), err)
	}
	d.dioMem, d.dioOff = int(st.Dio_mem_align), int(st.Dio_offset_align)
	d.directFile = f
	d.direct.Store(f)
	return nil
}

// directOK reports whether a write of p at off meets the direct I/O
// alignment.
func (d *FileDevice) directOK(p []byte, off int64) bool {
	return len(p) > 0 && off%int64(d.dioOff) == 0 && len(p)%d.dioOff == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%uintptr(d.dioMem) == 0
}

func pwriteFull(fd int, p []byte, off int64) (int, error) {
	return transferFull("pwrite", unix.Pwrite, fd, p, off, func([]byte) error {
		return io.ErrShortWrite
	})
}

// WriteAtv implements Device with pwritev, resuming after short writes.
func (d *FileDevice) WriteAtv(bufs [][]byte, off int64) error {
	return pwritevFull(d.fd, bufs, off)
}

func pwritevFull(fd int, bufs [][]byte, off int64) error {
	return vectored("pwritev", unix.Pwritev, fd, bufs, off, func([][]byte) error {
		return io.ErrShortWrite
	})
}

// vectored transfers bufs back to back from off with call (preadv or
// pwritev), at most maxIOV buffers per call, resuming after short
// transfers and EINTR. When a call transfers nothing, atZero gets the
// buffers left in that batch: it returns the error to report, or nil after
// dealing with them itself.
func vectored(name string, call func(int, [][]byte, int64) (int, error), fd int, bufs [][]byte, off int64, atZero func([][]byte) error) error {
	// Work on a copy: short transfers trim the head in place.
	iov := make([][]byte, 0, min(len(bufs), maxIOV))
	for len(bufs) > 0 {
		iov = iov[:0]
		for len(bufs) > 0 && len(iov) < maxIOV {
			if len(bufs[0]) > 0 {
				iov = append(iov, bufs[0])
			}
			bufs = bufs[1:]
		}
		for len(iov) > 0 {
			n, err := call(fd, iov, off)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				return fmt.Errorf("%s at %d: %w", name, off, err)
			}
			if n == 0 {
				if err := atZero(iov); err != nil {
					return fmt.Errorf("%s at %d: %w", name, off, err)
				}
				break
			}
			off += int64(n)
			for n > 0 {
				if n >= len(iov[0]) {
					n -= len(iov[0])
					iov = iov[1:]
				} else {
					iov[0] = iov[0][n:]
					n = 0
				}
			}
		}
	}
	return nil
}

// Sync implements Device with fdatasync.
func (d *FileDevice) Sync() error { return fileio.Fdatasync(d.fd) }

// Discard implements Device by punching a hole; filesystems that cannot
// punch get zeroes written instead, which reads the same.
func (d *FileDevice) Discard(off, n int64) error { return fileio.PunchHole(d.fd, off, n, d) }

// Mapped implements Device with SEEK_DATA/SEEK_HOLE.
func (d *FileDevice) Mapped(off, n int64) (bool, int64, error) { return fileio.Mapped(d.fd, off, n) }

// Size implements Device.
func (d *FileDevice) Size() int64 { return d.size }

// Truncate implements Device.
func (d *FileDevice) Truncate(size int64) error {
	if err := d.f.Truncate(size); err != nil {
		return fmt.Errorf("engine: truncate to %d: %w", size, err)
	}
	d.size = size
	return nil
}

// Close implements Device.
func (d *FileDevice) Close() error {
	if d.directFile != nil {
		d.directFile.Close()
	}
	return d.f.Close()
}
