// Package mmap is a backing store for the engine that reaches a raw image
// file through memory-mapped windows instead of pread/pwrite.
//
// The file is divided into fixed-size windows; at most a configured number
// of them are mapped at a time, least recently used ones are unmapped first.
// Sync msyncs every window written since the last Sync and then fdatasyncs the
// file, which also covers pages written through windows unmapped meanwhile.
//
// A fault on a mapped page (SIGBUS when the file shrank underneath or the
// disk failed) would normally kill the process. Copies to and from windows run
// with runtime/debug.SetPanicOnFault, so a fault becomes an EIO error from
// that one call instead.
package mmap

import (
	"container/list"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine/internal/fileio"
)

// Defaults for Options.
const (
	DefaultWindowSize = 64 << 20
	DefaultWindows    = 16
)

// Options configure a File.
type Options struct {
	// WindowSize is the size of one mapping, a multiple of the page size;
	// default DefaultWindowSize.
	WindowSize int64
	// Windows is how many windows may be mapped at once; default
	// DefaultWindows.
	Windows int
}

// File is a raw image file accessed through an LRU of mmap'd windows. It
// implements the engine's Device interface. Methods are safe for concurrent
// use.
type File struct {
	f     *os.File
	fd    int
	wsize int64
	max   int

	// resize is held shared by I/O and exclusively by Truncate and Close,
	// which unmap everything.
	resize sync.RWMutex
	size   int64

	mu   sync.Mutex // guards wins and lru
	wins map[int64]*window
	lru  list.List
}

type window struct {
	idx    int64
	mem    []byte
	refs   int
	dirty  bool
	lo, hi int64 // written range since the last Sync, when dirty
	elem   *list.Element
}

// ErrFault wraps a page fault taken while copying through a window.
var ErrFault = errors.New("mmap: page fault on mapped file")

// Open opens the existing file at path.
func Open(path string, o Options) (*File, error) {
	if o.WindowSize <= 0 {
		o.WindowSize = DefaultWindowSize
	}
	if ps := int64(os.Getpagesize()); o.WindowSize%ps != 0 {
		return nil, fmt.Errorf("mmap: window size %d is not a multiple of the page size %d", o.WindowSize, ps)
	}
	if o.Windows <= 0 {
		o.Windows = DefaultWindows
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("mmap: open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mmap: stat %s: %w", path, err)
	}
	return &File{f: f, fd: int(f.Fd()), wsize: o.WindowSize, max: o.Windows, size: st.Size(), wins: map[int64]*window{}}, nil
}

// acquire returns window idx mapped, with a reference the caller releases.
func (m *File) acquire(idx int64) (*window, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.wins[idx]; w != nil {
		w.refs++
		m.lru.MoveToFront(w.elem)
		return w, nil
	}
	// Make room: unmap idle windows from the cold end.
	for e := m.lru.Back(); e != nil && len(m.wins) >= m.max; {
		prev := e.Prev()
		if w := e.Value.(*window); w.refs == 0 {
			if err := m.unmapLocked(w); err != nil {
				return nil, err
			}
		}
		e = prev
	}
	off := idx * m.wsize
	n := min(m.wsize, m.size-off)
	mem, err := unix.Mmap(m.fd, off, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: map window at %d: %w", off, err)
	}
	w := &window{idx: idx, mem: mem, refs: 1}
	w.elem = m.lru.PushFront(w)
	m.wins[idx] = w
	return w, nil
}

func (m *File) release(w *window, wrote bool, lo, hi int64) {
	m.mu.Lock()
	w.refs--
	if wrote {
		if !w.dirty {
			w.dirty, w.lo, w.hi = true, lo, hi
		} else {
			w.lo, w.hi = min(w.lo, lo), max(w.hi, hi)
		}
	}
	m.mu.Unlock()
}

// syncRange msyncs the written part of a window, page aligned.
func syncRange(w *window, lo, hi int64) error {
	ps := int64(os.Getpagesize())
	lo = lo / ps * ps
	hi = min((hi+ps-1)/ps*ps, int64(len(w.mem)))
	if lo >= hi {
		return nil
	}
	return unix.Msync(w.mem[lo:hi], unix.MS_SYNC)
}

// unmapLocked drops an idle window. Pages written through it stay dirty in
// the page cache; the fdatasync in Sync writes them.
func (m *File) unmapLocked(w *window) error {
	if err := unix.Munmap(w.mem); err != nil {
		return fmt.Errorf("mmap: unmap window %d: %w", w.idx, err)
	}
	m.lru.Remove(w.elem)
	delete(m.wins, w.idx)
	return nil
}

// faultSafeCopy copies src to dst, turning a page fault into ErrFault.
func faultSafeCopy(dst, src []byte) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w (%v): %w", ErrFault, r, unix.EIO)
		}
	}()
	copy(dst, src)
	return nil
}

// rw copies between p and the file at off through windows.
func (m *File) rw(p []byte, off int64, write bool) (int, error) {
	m.resize.RLock()
	defer m.resize.RUnlock()
	return m.rwLocked(p, off, write)
}

// rwLocked is rw for a caller that holds resize shared.
func (m *File) rwLocked(p []byte, off int64, write bool) (int, error) {
	if off < 0 || off+int64(len(p)) > m.size {
		return 0, fmt.Errorf("mmap: [%d,+%d) outside the %d-byte file: %w", off, len(p), m.size, unix.EINVAL)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		idx := pos / m.wsize
		w, err := m.acquire(idx)
		if err != nil {
			return done, err
		}
		in := pos - idx*m.wsize
		n := min(int64(len(p)-done), int64(len(w.mem))-in)
		if write {
			err = faultSafeCopy(w.mem[in:in+n], p[done:done+int(n)])
		} else {
			err = faultSafeCopy(p[done:done+int(n)], w.mem[in:in+n])
		}
		m.release(w, write, in, in+n)
		if err != nil {
			return done, fmt.Errorf("mmap: at %d: %w", pos, err)
		}
		done += int(n)
	}
	return done, nil
}

// ReadAt reads len(p) bytes at off.
func (m *File) ReadAt(p []byte, off int64) (int, error) { return m.rw(p, off, false) }

// WriteAt writes p at off. The file does not grow.
func (m *File) WriteAt(p []byte, off int64) (int, error) { return m.rw(p, off, true) }

// WriteAtv writes the buffers back to back from off.
func (m *File) WriteAtv(bufs [][]byte, off int64) error {
	for _, b := range bufs {
		if _, err := m.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// Sync msyncs the windows written since the last Sync and fdatasyncs the
// file.
func (m *File) Sync() error {
	m.resize.RLock()
	defer m.resize.RUnlock()
	type span struct {
		w      *window
		lo, hi int64
	}
	var dirty []span
	m.mu.Lock()
	for _, w := range m.wins {
		if w.dirty {
			w.dirty = false
			w.refs++ // keep it mapped while we msync it
			dirty = append(dirty, span{w, w.lo, w.hi})
		}
	}
	m.mu.Unlock()
	var first error
	for _, d := range dirty {
		if err := syncRange(d.w, d.lo, d.hi); err != nil && first == nil {
			first = fmt.Errorf("mmap: msync window %d: %w", d.w.idx, err)
		}
		m.release(d.w, false, 0, 0)
	}
	if first != nil {
		return first
	}
	if err := fileio.Fdatasync(m.fd); err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	return nil
}

// Discard punches a hole; the shared mappings then read zeroes there.
// File systems that cannot punch get zeroes written through the windows.
func (m *File) Discard(off, n int64) error {
	m.resize.RLock()
	defer m.resize.RUnlock()
	if err := fileio.PunchHole(m.fd, off, n, lockedWriter{m}); err != nil {
		return fmt.Errorf("mmap: discard: %w", err)
	}
	return nil
}

// lockedWriter writes through the windows for a caller that already holds
// resize shared, so the zero-writing fallback of Discard does not take it
// a second time (a read lock taken twice deadlocks behind a waiting
// Truncate).
type lockedWriter struct{ m *File }

func (w lockedWriter) WriteAt(p []byte, off int64) (int, error) { return w.m.rwLocked(p, off, true) }

// Mapped reports allocation with SEEK_DATA/SEEK_HOLE.
func (m *File) Mapped(off, n int64) (bool, int64, error) {
	mapped, length, err := fileio.Mapped(m.fd, off, n)
	if err != nil {
		return false, 0, fmt.Errorf("mmap: %w", err)
	}
	return mapped, length, nil
}

// Size is the file size.
func (m *File) Size() int64 {
	m.resize.RLock()
	defer m.resize.RUnlock()
	return m.size
}

// unmapAll syncs and unmaps every window; resize is held exclusively.
func (m *File) unmapAll() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first error
	for _, w := range m.wins {
		if w.dirty {
			if err := syncRange(w, w.lo, w.hi); err != nil && first == nil {
				first = fmt.Errorf("mmap: msync window %d: %w", w.idx, err)
			}
		}
		if err := m.unmapLocked(w); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Truncate resizes the file, remapping windows lazily afterwards.
func (m *File) Truncate(size int64) error {
	m.resize.Lock()
	defer m.resize.Unlock()
	if err := m.unmapAll(); err != nil {
		return err
	}
	if err := m.f.Truncate(size); err != nil {
		return fmt.Errorf("mmap: truncate to %d: %w", size, err)
	}
	m.size = size
	return nil
}

// Close unmaps every window and closes the file.
func (m *File) Close() error {
	m.resize.Lock()
	defer m.resize.Unlock()
	err := m.unmapAll()
	if e := m.f.Close(); err == nil {
		err = e
	}
	return err
}
