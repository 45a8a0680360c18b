package engine

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine/internal/fileio"
)

// BlockDevice is a Device over a raw block device (/dev/sdX, /dev/nvme0n1,
// a loop device). Its size comes from BLKGETSIZE64. Discard deallocates the
// range with BLKDISCARD where the device supports both discard and a
// write-zeroes offload (Deallocates), and in every case makes it read as
// zeroes, which BLKDISCARD alone does not promise.
type BlockDevice struct {
	f    *os.File
	fd   int
	size int64

	// caps is what the kernel reports the device can do, read from sysfs
	// on first use.
	capsOnce sync.Once
	caps     blockCaps
}

// Deallocator is implemented by devices that can tell whether Discard
// releases storage rather than just writing zeroes. A volume over a device
// that cannot deallocate does not offer unmapping (Limits.MaxUnmap = 0), so
// front ends report it fully provisioned instead of promising thin
// provisioning it cannot deliver.
type Deallocator interface {
	Deallocates() bool
}

// blockCaps are a block device's deallocation capabilities.
type blockCaps struct {
	discard bool // BLKDISCARD releases blocks (queue/discard_max_bytes > 0)
	zeroes  bool // zeroing is offloaded, writes no data (queue/write_zeroes_max_bytes > 0)
}

// OpenBlockDevice opens the block device at path. It is opened with
// O_EXCL, which Linux refuses (EBUSY) while the device is mounted, part of
// a RAID or device-mapper stack, or held exclusively by another opener, so
// a volume can never overwrite a file system in use.
func OpenBlockDevice(path string) (*BlockDevice, error) {
	f, st, err := openStat(path, os.O_RDWR|os.O_EXCL, 0)
	if err != nil {
		return nil, err
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
func (d *BlockDevice) Sync() error { return fileio.Fdatasync(d.fd) }

// Deallocates implements Deallocator: the device must both discard and
// zero without writing data. BLKDISCARD leaves what the range reads
// unspecified, so Discard zeroes it afterwards; where zeroing means writing
// zero blocks, that write would allocate the range again and thin
// provisioning would be a claim without substance.
func (d *BlockDevice) Deallocates() bool {
	c := d.capabilities()
	return c.discard && c.zeroes
}

// capabilities reads the device's queue limits from sysfs once.
func (d *BlockDevice) capabilities() blockCaps {
	d.capsOnce.Do(func() {
		var st unix.Stat_t
		if err := unix.Fstat(d.fd, &st); err != nil {
			return
		}
		dir := fmt.Sprintf("%s/%d:%d", sysDevBlock, unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
		d.caps = blockCaps{
			discard: sysfsQueueLimit(dir, "discard_max_bytes") > 0,
			zeroes:  sysfsQueueLimit(dir, "write_zeroes_max_bytes") > 0,
		}
	})
	return d.caps
}

// sysDevBlock is where sysfs lists block devices by number; tests point it
// at a tree of their own to play a device without discard.
var sysDevBlock = "/sys/dev/block"

// sysfsQueueLimit reads a queue attribute of the block device whose sysfs
// directory is dir; a partition has its disk's queue one level up. Anything
// unreadable counts as zero (not supported).
func sysfsQueueLimit(dir, name string) uint64 {
	for _, q := range []string{dir + "/queue/", dir + "/../queue/"} {
		b, err := os.ReadFile(q + name)
		if err != nil {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0
		}
		return v
	}
	return 0
}

// Discard implements Device. On a device that deallocates, BLKDISCARD
// releases the range first; then the range is zeroed, by fallocate
// (PUNCH_HOLE: the kernel's write-zeroes offload, which may itself unmap),
// BLKZEROOUT, or plain zero writes, whichever the device takes first.
func (d *BlockDevice) Discard(off, n int64) error {
	if d.Deallocates() {
		r := [2]uint64{uint64(off), uint64(n)}
		// Deallocation is best effort; the zeroing below is what the
		// Device contract promises, and reports any failure.
		unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r[0])))
	}
	if err := unix.Fallocate(d.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err == nil {
		return nil
	}
	r := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0]))); e == 0 {
		return nil
	}
	return fileio.WriteZeroes(d, off, n)
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
