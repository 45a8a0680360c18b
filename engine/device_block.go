package engine

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockDevice is a Device over a raw block device (/dev/sdX, /dev/nvme0n1,
// a loop device). Its size comes from BLKGETSIZE64; Discard zeroes the range
// with fallocate(PUNCH_HOLE), falling back to BLKZEROOUT, so a discarded range
// reliably reads as zeroes (plain BLKDISCARD does not promise that).
type BlockDevice struct {
	f    *os.File
	fd   int
	size int64
}

// OpenBlockDevice opens the block device at path. It is opened with
// O_EXCL, which Linux refuses (EBUSY) while the device is mounted, part of
// a RAID or device-mapper stack, or held exclusively by another opener, so
// a volume can never overwrite a file system in use.
func OpenBlockDevice(path string) (*BlockDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_EXCL, 0)
	if err != nil {
		return nil, fmt.Errorf("engine: open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("engine: stat %s: %w", path, err)
	}
	if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		f.Close()
		return nil, fmt.Errorf("engine: %s is not a block device", path)
	}
	fd := int(f.Fd())
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
		f.Close()
		return nil, fmt.Errorf("engine: BLKGETSIZE64 %s: %w", path, e)
	}
	return &BlockDevice{f: f, fd: fd, size: int64(size)}, nil
}

// ReadAt implements Device.
func (d *BlockDevice) ReadAt(p []byte, off int64) (int, error) { return preadFull(d.fd, p, off) }

// WriteAt implements Device.
func (d *BlockDevice) WriteAt(p []byte, off int64) (int, error) { return pwriteFull(d.fd, p, off) }

// ReadAtv implements VectorReader.
func (d *BlockDevice) ReadAtv(bufs [][]byte, off int64) error { return preadvFull(d.fd, bufs, off) }

// WriteAtv implements Device.
func (d *BlockDevice) WriteAtv(bufs [][]byte, off int64) error { return pwritevFull(d.fd, bufs, off) }

// StartWriteback implements WritebackStarter.
func (d *BlockDevice) StartWriteback(off, n int64) error { return startWriteback(d.fd, off, n) }

// Sync implements Device; fdatasync on a block device flushes its cache.
func (d *BlockDevice) Sync() error {
	if err := unix.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("fdatasync: %w", err)
	}
	return nil
}

// Discard implements Device.
func (d *BlockDevice) Discard(off, n int64) error {
	if err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
		return nil
	}
	r := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0]))); e == 0 {
		return nil
	}
	return writeZeroes(d, off, n)
}

// Mapped implements Device: a block device is fully mapped.
func (d *BlockDevice) Mapped(off, n int64) (bool, int64, error) { return true, n, nil }

// Size implements Device.
func (d *BlockDevice) Size() int64 { return d.size }

// Truncate implements Device: block devices cannot be resized from here.
func (d *BlockDevice) Truncate(size int64) error {
	if size == d.size {
		return nil
	}
	return fmt.Errorf("engine: block device cannot be resized to %d", size)
}

// Close implements Device.
func (d *BlockDevice) Close() error { return d.f.Close() }
