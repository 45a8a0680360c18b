package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestFileDeviceDirectWrites: large aligned vectored writes go O_DIRECT and
// small or unaligned ones through the page cache, and buffered reads see
// every one of them in order, whichever way each went (the kernel must
// write back and drop cached pages around a direct write).
func TestFileDeviceDirectWrites(t *testing.T) {
	const size = 4 << 20
	var d *FileDevice
	// The temporary directory may be a tmpfs, which has no O_DIRECT; the
	// package directory is on the disk the repository was checked out to.
	for _, dir := range []string{t.TempDir(), ""} {
		if dir == "" {
			var err error
			if dir, err = os.MkdirTemp(".", ".direct-test-"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
		}
		dev, err := OpenFileDevice(filepath.Join(dir, "dev.img"), true, size)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dev.Close() })
		if dev.EnableDirectWrites(); dev.direct != nil {
			d = dev
			break
		}
	}
	if d == nil {
		t.Fatal("O_DIRECT is available neither in the temporary directory nor in the package directory")
	}
	model := make([]byte, size)
	// Aligned chunk buffers from the cache's slab, as the engine writes.
	chunks := func(n int, seed int) [][]byte {
		var bufs [][]byte
		p := pattern(n*ChunkSize, seed)
		for i := range n {
			c := chunkSlab.get()
			copy(c[:], p[i*ChunkSize:])
			bufs = append(bufs, c[:])
		}
		return bufs
	}
	write := func(bufs [][]byte, off int64, wantDirect bool) {
		t.Helper()
		if got := d.directOK(bufs, off); got != wantDirect {
			t.Fatalf("write of %d buffers at %d: direct %v, want %v", len(bufs), off, got, wantDirect)
		}
		if err := d.WriteAtv(bufs, off); err != nil {
			t.Fatal(err)
		}
		for _, b := range bufs {
			copy(model[off:], b)
			off += int64(len(b))
		}
	}
	check := func(step string) {
		t.Helper()
		got := make([]byte, size)
		if _, err := d.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("%s: buffered read does not match what was written", step)
		}
	}
	write(chunks(2, 1), 64<<10, false) // small: page cache
	check("small buffered write")
	write(chunks(128, 2), 0, true) // 512 KiB over the small one: direct
	check("direct write over dirty cached pages")
	write(chunks(1, 3), 8192, false) // small, inside the direct range
	check("buffered write inside a direct range")
	write(chunks(256, 4), 1<<20, true)
	unaligned := pattern(directMin+512, 5)
	write([][]byte{unaligned}, 2<<20, false) // length not a multiple of 4 KiB
	write(chunks(64, 6), 2<<20+directMin, true)
	check("mixed writes")
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	check("after sync")
}
