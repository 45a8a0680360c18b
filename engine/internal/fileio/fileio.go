// Package fileio holds the file system calls that every engine backing store
// (the file and block devices, the mmap store) needs in the same form: the
// fdatasync that survives signals, the SEEK_DATA/SEEK_HOLE allocation query
// and the zero-writing fallback for file systems that cannot punch holes.
// Keeping them here means a fix to one of them reaches every store.
package fileio

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// Fdatasync makes the completed writes to fd durable, retrying when a
// signal interrupts the call: an EINTR says nothing about the data.
func Fdatasync(fd int) error {
	for {
		err := unix.Fdatasync(fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("fdatasync: %w", err)
		}
		return nil
	}
}

// Mapped reports whether off is backed by allocated storage in the file fd
// and how many bytes from off (at most n) share that state, with
// SEEK_DATA/SEEK_HOLE. File systems that cannot tell report everything as
// mapped, the conservative answer.
func Mapped(fd int, off, n int64) (bool, int64, error) {
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return false, n, nil // no data at or after off
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return true, n, nil // file system cannot tell
		}
		return false, 0, fmt.Errorf("lseek SEEK_DATA %d: %w", off, err)
	}
	if data > off {
		return false, min(n, data-off), nil
	}
	hole, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil {
		return false, 0, fmt.Errorf("lseek SEEK_HOLE %d: %w", off, err)
	}
	return true, min(n, max(hole-off, 1)), nil
}

// PunchHole deallocates [off, off+n) of the file fd, keeping its size.
// Where the file system cannot punch holes, the range is written with zeroes
// through w instead, which reads the same.
func PunchHole(fd int, off, n int64, w io.WriterAt) error {
	return Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n, w)
}

// Fallocate applies mode (PUNCH_HOLE or ZERO_RANGE, with KEEP_SIZE) to
// [off, off+n) of the file fd. Where the file system does not support the
// mode (EOPNOTSUPP, ENOSYS), the range is written with zeroes through w
// instead.
func Fallocate(fd int, mode uint32, off, n int64, w io.WriterAt) error {
	err := unix.Fallocate(fd, mode, off, n)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return WriteZeroes(w, off, n)
	}
	return fmt.Errorf("fallocate [%d,+%d): %w", off, n, err)
}

// WriteZeroes fills [off, off+n) with zero bytes through w, at most 1 MiB
// per call.
func WriteZeroes(w io.WriterAt, off, n int64) error {
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(z)))
		if _, err := w.WriteAt(z[:k], off); err != nil {
			return fmt.Errorf("write zeroes at %d: %w", off, err)
		}
		off += k
		n -= k
	}
	return nil
}
