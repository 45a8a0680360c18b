package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

func openTestFile(t *testing.T, size int64) (*FileVolume, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vol.raw")
	v, err := OpenFile(path, FileOptions{Name: "t", BlockSize: 512, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, path
}

func TestFileVolumeReadWriteReopen(t *testing.T) {
	ctx := context.Background()
	v, path := openTestFile(t, 1<<20)
	data := bytes.Repeat([]byte{0xab}, 4096)
	if err := v.WriteAt(ctx, data, 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v2, err := OpenFile(path, FileOptions{Name: "t", BlockSize: 512, Size: 999})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	if v2.Size() != 1<<20 {
		t.Fatalf("reopened size %d, want existing file size %d", v2.Size(), 1<<20)
	}
	got := make([]byte, 8192)
	if err := v2.ReadAt(ctx, got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:], data) {
		t.Fatal("read back differs from what was written")
	}
}

func TestFileVolumeRangeChecks(t *testing.T) {
	ctx := context.Background()
	v, _ := openTestFile(t, 64<<10)
	buf := make([]byte, 512)
	for _, off := range []int64{-512, 64 << 10, 100, 63<<10 + 512 + 1} {
		if err := v.ReadAt(ctx, buf, off); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadAt(%d) = %v, want ErrOutOfRange", off, err)
		}
	}
	if err := v.WriteAt(ctx, make([]byte, 1024), 63<<10+512, false); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write across the end = %v, want ErrOutOfRange", err)
	}
	if err := v.ReadAt(ctx, buf, 63<<10+512); err != nil {
		t.Errorf("read of the last block: %v", err)
	}
}

func TestFileVolumeReadOnly(t *testing.T) {
	ctx := context.Background()
	v, _ := openTestFile(t, 64<<10)
	v.SetReadOnly(true)
	if err := v.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to read-only volume = %v, want ErrReadOnly", err)
	}
	if err := v.Unmap(ctx, 0, 512); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("unmap of read-only volume = %v, want ErrReadOnly", err)
	}
	if err := v.ReadAt(ctx, make([]byte, 512), 0); err != nil {
		t.Fatalf("read of read-only volume: %v", err)
	}
}

func TestFileVolumeUnmapAndMapped(t *testing.T) {
	ctx := context.Background()
	v, _ := openTestFile(t, 4<<20)
	if m, n, err := v.Mapped(ctx, 0, 4<<20); err != nil || m || n != 4<<20 {
		t.Fatalf("fresh thin volume: mapped=%v len=%d err=%v, want unmapped whole range", m, n, err)
	}
	data := bytes.Repeat([]byte{1}, 1<<20)
	if err := v.WriteAt(ctx, data, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if m, n, err := v.Mapped(ctx, 1<<20, 3<<20); err != nil || !m || n != 1<<20 {
		t.Fatalf("after write: mapped=%v len=%d err=%v, want 1 MiB mapped", m, n, err)
	}
	if err := v.Unmap(ctx, 1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := v.ReadAt(ctx, got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatal("unmapped range does not read as zeroes")
	}
	if m, _, err := v.Mapped(ctx, 1<<20, 1<<20); err != nil || m {
		t.Fatalf("after unmap: mapped=%v err=%v, want unmapped", m, err)
	}
	if err := v.WriteAt(ctx, data[:4096], 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteZeroes(ctx, 0, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, got[:4096], 0); err != nil || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("write zeroes: err=%v or data not zero", err)
	}
}

func TestFileVolumeResizeAndWriteCache(t *testing.T) {
	ctx := context.Background()
	v, _ := openTestFile(t, 64<<10)
	if err := v.Resize(ctx, 128<<10); err != nil {
		t.Fatal(err)
	}
	if v.Size() != 128<<10 {
		t.Fatalf("size after grow %d", v.Size())
	}
	if err := v.WriteAt(ctx, make([]byte, 512), 127<<10, false); err != nil {
		t.Fatalf("write in the grown tail: %v", err)
	}
	if err := v.Resize(ctx, 1000); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("resize to unaligned size = %v, want ErrOutOfRange", err)
	}
	if err := v.SetWriteCache(false); err != nil || v.WriteCache() {
		t.Fatalf("write cache off: err=%v on=%v", err, v.WriteCache())
	}
	if err := v.WriteAt(ctx, make([]byte, 512), 0, false); err != nil {
		t.Fatalf("write-through write: %v", err)
	}
}

func TestOpenFileRejectsBadGeometry(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenFile(filepath.Join(dir, "a"), FileOptions{Name: "a", BlockSize: 1024, Size: 1 << 20}); err == nil {
		t.Error("block size 1024 accepted")
	}
	if _, err := OpenFile(filepath.Join(dir, "b"), FileOptions{Name: "b", BlockSize: 512, Size: 1000}); err == nil {
		t.Error("unaligned size accepted")
	}
}

// writebackRecorder is a FileDevice that records StartWriteback calls, and
// the Syncs between them, in order.
type writebackRecorder struct {
	*FileDevice
	mu    sync.Mutex
	calls []string
}

func (w *writebackRecorder) StartWriteback(off, n int64) error {
	w.mu.Lock()
	w.calls = append(w.calls, fmt.Sprintf("writeback %d+%d", off, n))
	w.mu.Unlock()
	return w.FileDevice.StartWriteback(off, n)
}

func (w *writebackRecorder) reset() {
	w.mu.Lock()
	w.calls = nil
	w.mu.Unlock()
}

func (w *writebackRecorder) Sync() error {
	w.mu.Lock()
	w.calls = append(w.calls, "sync")
	w.mu.Unlock()
	return w.FileDevice.Sync()
}

// TestCommitStartsWritebackOfLongRuns: a commit writes a long run in
// place in 4 MiB pieces and starts each piece's writeback before the data
// Sync; scattered 4 KiB chunks get no writeback calls of their own.
func TestCommitStartsWritebackOfLongRuns(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const size = 32 << 20
	dataDev, err := OpenFileDevice(filepath.Join(dir, "v.img"), true, size)
	if err != nil {
		t.Fatal(err)
	}
	undoDev, err := OpenFileDevice(filepath.Join(dir, "v.undo"), true, 256<<20)
	if err != nil {
		t.Fatal(err)
	}
	rec := &writebackRecorder{FileDevice: dataDev}
	// A cache large enough that 10 MiB of writes start no background
	// commit (which would race with the calls the test expects).
	v, err := OpenDevices(rec, undoDev, Options{Cache: NewCache(CacheOptions{Size: 1 << 30}), FlushInterval: time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	// 10 MiB from 1 MiB on: two whole pieces and a 2 MiB tail.
	if err := v.WriteAt(ctx, pattern(10<<20, 1), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	rec.reset()
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"writeback 1048576+4194304", "writeback 5242880+4194304", "sync"}
	if !slices.Equal(rec.calls, want) {
		t.Fatalf("long run: calls %q, want %q", rec.calls, want)
	}
	for k := range int64(64) {
		if err := v.WriteAt(ctx, pattern(4096, int(k)), 16<<20+k*8192, false); err != nil {
			t.Fatal(err)
		}
	}
	rec.reset()
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if want := []string{"sync"}; !slices.Equal(rec.calls, want) {
		t.Fatalf("scattered chunks: calls %q, want %q", rec.calls, want)
	}
	if err := dataDev.StartWriteback(-1, 4096); err == nil {
		t.Fatal("StartWriteback at a negative offset: no error")
	}
}
