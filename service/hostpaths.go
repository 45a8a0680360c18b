package service

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNotAllowed is returned for a host path that the daemon's allow-lists
// (volume.import_dirs, volume.block_devices) do not cover.
var ErrNotAllowed = errors.New("not allowed by the daemon's configuration")

// HostPathError is a request naming a host file or device that the daemon
// refuses to touch: outside the allow-lists (Err is ErrNotAllowed, the API
// answers 403) or mounted or held by another user (Err is ErrInUse, 409).
// Field names the request field that carried the path.
type HostPathError struct {
	Field string
	Msg   string
	Err   error
}

func (e *HostPathError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap lets errors.Is(err, ErrNotAllowed) or errors.Is(err, ErrInUse)
// match.
func (e *HostPathError) Unwrap() error { return e.Err }

func notAllowed(field, format string, args ...any) error {
	return &HostPathError{Field: field, Msg: fmt.Sprintf(format, args...), Err: ErrNotAllowed}
}

// checkAllowLists refuses relative entries: a relative allow-list entry
// would depend on the daemon's working directory.
func checkAllowLists(importDirs, blockDevices []string) error {
	for _, d := range importDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("volume.import_dirs entry %q: must be an absolute directory", d)
		}
	}
	for _, p := range blockDevices {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("volume.block_devices entry %q: must be an absolute path or glob", p)
		}
		if _, err := filepath.Match(p, "/"); err != nil {
			return fmt.Errorf("volume.block_devices entry %q: %w", p, err)
		}
	}
	return nil
}

// within reports whether p lies strictly below dir; both are clean.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// inImportDir reports whether p lies below an import directory, taken
// both as configured and with its own symlinks resolved.
func (s *Service) inImportDir(p string) bool {
	for _, d := range s.importDirs {
		if within(p, filepath.Clean(d)) {
			return true
		}
		if r, err := filepath.EvalSymlinks(d); err == nil && within(p, r) {
			return true
		}
	}
	return false
}

// blockDeviceAllowed reports whether the resolved device path matches an
// entry of volume.block_devices, directly or through the entry's own
// symlinks (so /dev/disk/by-id/... entries work).
func (s *Service) blockDeviceAllowed(resolved string) bool {
	for _, pat := range s.blockDevices {
		if ok, _ := filepath.Match(pat, resolved); ok {
			return true
		}
		matches, _ := filepath.Glob(pat)
		for _, m := range matches {
			if r, err := filepath.EvalSymlinks(m); err == nil && r == resolved {
				return true
			}
		}
	}
	return false
}

// resolveHostPath makes an absolute request path canonical (symlinks and
// ".." resolved) so that the allow-lists are checked against the file that
// will really be opened. A path whose resolution fails is reported as not
// allowed unless it lies in an allowed place, so the API does not reveal
// which host files exist.
func (s *Service) resolveHostPath(field, p string, allowedLexically bool) (string, error) {
	if p == "" || !filepath.IsAbs(p) {
		return "", invalid(field, "%q: an absolute path on the daemon's machine is required", p)
	}
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		if allowedLexically {
			return "", invalid(field, "%q: %v", p, errors.Unwrap(err))
		}
		return "", notAllowed(field, "%q is not in an allowed location", p)
	}
	return r, nil
}

// CheckBlockDevice resolves the device of a block volume and checks it
// against volume.block_devices. It returns the path the volume records
// and opens: the path as given when an entry names it directly (so a
// /dev/disk/by-id link stays stable across reboots), otherwise the
// resolved device, so that a symlink elsewhere cannot be re-pointed later.
func (s *Service) CheckBlockDevice(dev string) (string, error) {
	if len(s.blockDevices) == 0 {
		return "", notAllowed("device", "block volumes are disabled: volume.block_devices lists no devices")
	}
	r, err := s.resolveHostPath("device", dev, false)
	if err != nil {
		return "", err
	}
	if !s.blockDeviceAllowed(r) {
		return "", notAllowed("device", "%q is not listed in volume.block_devices", dev)
	}
	st, err := os.Stat(r)
	if err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		return "", invalid("device", "%q: a block volume needs an existing block device", dev)
	}
	clean := filepath.Clean(dev)
	for _, pat := range s.blockDevices {
		if ok, _ := filepath.Match(pat, clean); ok {
			return clean, nil
		}
	}
	return r, nil
}

// openImportSource opens a host file for ImportPath and returns it with
// the number of bytes to read. Regular files must lie in volume.import_dirs
// and block devices match volume.block_devices; anything else (character
// devices such as /dev/zero, FIFOs, sockets, directories) is refused. The
// type and place are checked again on the open descriptor, so a path
// swapped between check and open is refused rather than followed.
func (s *Service) openImportSource(p string) (*os.File, int64, error) {
	if len(s.importDirs) == 0 && len(s.blockDevices) == 0 {
		return nil, 0, notAllowed("path", "importing from a path on the daemon's machine is disabled: volume.import_dirs and volume.block_devices are empty")
	}
	lexical := filepath.IsAbs(p) && (s.inImportDir(filepath.Clean(p)) || s.blockDeviceAllowed(filepath.Clean(p)))
	r, err := s.resolveHostPath("path", p, lexical)
	if err != nil {
		return nil, 0, err
	}
	if !s.inImportDir(r) && !s.blockDeviceAllowed(r) {
		return nil, 0, notAllowed("path", "%q is not in volume.import_dirs or volume.block_devices", p)
	}
	lst, err := os.Lstat(r)
	if err != nil {
		return nil, 0, invalid("path", "%q: %v", p, errors.Unwrap(err))
	}
	if err := s.checkImportType(p, r, lst.Mode()); err != nil {
		return nil, 0, err
	}
	// O_NOFOLLOW: the resolved path names no symlink, so one appearing
	// now is a swap. O_NONBLOCK: a FIFO swapped in cannot hang the open.
	// O_EXCL on a block device fails if it is mounted or held exclusively.
	flags := os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	block := lst.Mode()&os.ModeDevice != 0
	if block {
		flags |= os.O_EXCL
	}
	f, err := os.OpenFile(r, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return nil, 0, &HostPathError{Field: "path", Msg: fmt.Sprintf("%q is mounted or in use", p), Err: ErrInUse}
		}
		return nil, 0, invalid("path", "%q: %v", p, errors.Unwrap(err))
	}
	fail := func(err error) (*os.File, int64, error) { f.Close(); return nil, 0, err }
	fst, err := f.Stat()
	if err != nil {
		return fail(fmt.Errorf("import from %s: %w", r, err))
	}
	if !os.SameFile(lst, fst) {
		return fail(invalid("path", "%q changed while it was opened", p))
	}
	// The descriptor's own path is where the file really is, whatever
	// happened to the directories on the way.
	if real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err == nil {
		if err := s.checkImportType(p, real, fst.Mode()); err != nil {
			return fail(err)
		}
	}
	// Back to blocking reads for the copy.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		return fail(fmt.Errorf("import from %s: %w", r, err))
	}
	size := fst.Size()
	if block {
		// A block device's size is where its end is; reading stops there.
		if size, err = f.Seek(0, io.SeekEnd); err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			return fail(fmt.Errorf("import from %s: size: %w", r, err))
		}
	}
	return f, size, nil
}

// checkImportType checks that a resolved import source at r with mode m is
// importable from where it is.
func (s *Service) checkImportType(p, r string, m os.FileMode) error {
	switch {
	case m.IsRegular():
		if !s.inImportDir(r) {
			return notAllowed("path", "%q is not in volume.import_dirs", p)
		}
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		if !s.blockDeviceAllowed(r) {
			return notAllowed("path", "%q is a block device not listed in volume.block_devices", p)
		}
	case m&os.ModeCharDevice != 0:
		return invalid("path", "%q is a character device; only regular files and block devices can be imported", p)
	case m&os.ModeNamedPipe != 0:
		return invalid("path", "%q is a FIFO; only regular files and block devices can be imported", p)
	case m&os.ModeSocket != 0:
		return invalid("path", "%q is a socket; only regular files and block devices can be imported", p)
	default:
		return invalid("path", "%q is not a regular file or block device", p)
	}
	return nil
}

// clientFault turns engine errors caused by the request into field errors
// the API answers with a 4xx: a size the file system cannot hold, a device
// that is mounted or held by someone else.
func clientFault(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EFBIG), errors.Is(err, syscall.EINVAL) && isTruncate(err):
		return invalid("size_bytes", "larger than the file system holding the data directory can store in one file")
	case errors.Is(err, syscall.EBUSY):
		return &HostPathError{Field: "device", Msg: "the device is mounted or in use", Err: ErrInUse}
	}
	return err
}

// isTruncate reports whether err came from truncate(2): EINVAL there means
// the length is out of range for the file system.
func isTruncate(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe) && pe.Op == "truncate"
}
