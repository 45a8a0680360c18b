package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident reports, page by page, whether [off, off+n) of path is in the
// page cache.
func resident(t *testing.T, path string, off, n int64) []bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (n+int64(os.Getpagesize())-1)/int64(os.Getpagesize()))
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	out := make([]bool, len(vec))
	for i, b := range vec {
		out[i] = b&1 != 0
	}
	return out
}

// directDevice opens a FileDevice with direct writes on, in the test's
// temporary directory, or, where that file system offers no direct I/O
// (tmpfs, which Debian 13 mounts on /tmp), in a scratch directory beside
// the package, which is on the disk the tree was checked out to.
func directDevice(t *testing.T) (*FileDevice, string) {
	t.Helper()
	var errs []error
	for _, dir := range []func() string{t.TempDir, func() string {
		dir, err := os.MkdirTemp(".", ".direct-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}} {
		path := filepath.Join(dir(), "undo")
		d, err := OpenFileDevice(path, true, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.UseDirectWrites(); err != nil {
			d.Close()
			errs = append(errs, err)
			continue
		}
		t.Cleanup(func() { d.Close() })
		return d, path
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("no direct I/O in the temporary directory nor beside the package: %v", errs)
	}
	t.Skipf("SKIPPED, NOT PASSED: no direct I/O here: %v", errs)
	return nil, ""
}

// TestDirectWritesBypassThePageCache: with UseDirectWrites, an aligned
// write lands in the file without entering the page cache, and a write
// that is not aligned still lands, through the page cache.
func TestDirectWritesBypassThePageCache(t *testing.T) {
	d, path := directDevice(t)
	// Page-aligned memory, as the undo FIFO's large batch buffers are.
	mem, err := unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	copy(mem, pattern(len(mem), 5))
	if _, err := d.WriteAt(mem, 128<<10); err != nil {
		t.Fatal(err)
	}
	odd := pattern(1000, 6) // not a multiple of any alignment
	if _, err := d.WriteAt(odd, 512<<10); err != nil {
		t.Fatal(err)
	}
	for i, in := range resident(t, path, 128<<10, 64<<10) {
		if in {
			t.Fatalf("page %d of the aligned write is in the page cache", i)
		}
	}
	if !resident(t, path, 512<<10, 4096)[0] {
		t.Fatal("the unaligned write did not go through the page cache")
	}
	got := make([]byte, len(mem))
	if _, err := d.ReadAt(got, 128<<10); err != nil || !bytes.Equal(got, mem) {
		t.Fatalf("aligned write read back wrong (err %v)", err)
	}
	got = make([]byte, len(odd))
	if _, err := d.ReadAt(got, 512<<10); err != nil || !bytes.Equal(got, odd) {
		t.Fatalf("unaligned write read back wrong (err %v)", err)
	}
}

// TestDirectWriteRefusedFallsBack: when the kernel turns down a direct
// write that looked aligned, the write still lands, through the page
// cache, and the device stops trying direct I/O.
func TestDirectWriteRefusedFallsBack(t *testing.T) {
	d, _ := directDevice(t)
	// Claim any memory address will do, then hand it one the kernel
	// must refuse (one byte past page alignment).
	d.dioMem = 1
	mem, err := unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	p := mem[1 : 1+32<<10]
	copy(p, pattern(len(p), 7))
	if _, err := d.WriteAt(p, 64<<10); err != nil {
		t.Fatalf("refused direct write was not retried through the page cache: %v", err)
	}
	if d.direct.Load() != nil {
		t.Fatal("direct writes still on after the kernel refused one")
	}
	got := make([]byte, len(p))
	if _, err := d.ReadAt(got, 64<<10); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("write read back wrong (err %v)", err)
	}
}
