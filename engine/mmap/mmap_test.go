package mmap

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func newFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadWriteAcrossWindowsAndEviction(t *testing.T) {
	ps := int64(os.Getpagesize())
	path := newFile(t, 64*ps)
	m, err := Open(path, Options{WindowSize: 4 * ps, Windows: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 64*ps)
	for i := range want {
		want[i] = byte(i*13 + i/4096)
	}
	// Write in odd-sized pieces that straddle windows, touching many more
	// windows than may be mapped at once.
	for off := int64(0); off < int64(len(want)); {
		n := min(int64(len(want))-off, 3*ps+512)
		if _, err := m.WriteAt(want[off:off+n], off); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	if len(m.wins) > 2 {
		t.Fatalf("%d windows mapped, limit 2", len(m.wins))
	}
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := m.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs through windows")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, want) {
		t.Fatal("file contents differ after Sync and Close")
	}
}

func TestDiscardAndMapped(t *testing.T) {
	ps := int64(os.Getpagesize())
	path := newFile(t, 256*ps)
	m, err := Open(path, Options{WindowSize: 16 * ps, Windows: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	data := bytes.Repeat([]byte{0xab}, int(64*ps))
	if _, err := m.WriteAt(data, 64*ps); err != nil {
		t.Fatal(err)
	}
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	mapped, n, err := m.Mapped(0, 256*ps)
	if err != nil {
		t.Fatal(err)
	}
	if mapped || n != 64*ps {
		t.Fatalf("Mapped(0) = %v,%d; want hole of %d", mapped, n, 64*ps)
	}
	if err := m.Discard(64*ps, 32*ps); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 32*ps)
	if _, err := m.ReadAt(got, 64*ps); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("discarded range does not read zeroes through the mapping")
	}
	mapped, n, err = m.Mapped(96*ps, 160*ps)
	if err != nil || !mapped || n != 32*ps {
		t.Fatalf("Mapped(96p) = %v,%d,%v; want data of %d", mapped, n, err, 32*ps)
	}
}

// TestFaultBecomesError shrinks the file underneath a live mapping: touching
// the vanished pages raises SIGBUS, which must come back as an EIO error.
func TestFaultBecomesError(t *testing.T) {
	ps := int64(os.Getpagesize())
	path := newFile(t, 16*ps)
	m, err := Open(path, Options{WindowSize: 16 * ps, Windows: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	buf := make([]byte, ps)
	if _, err := m.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, ps); err != nil {
		t.Fatal(err)
	}
	_, err = m.ReadAt(buf, 8*ps)
	if !errors.Is(err, ErrFault) || !errors.Is(err, unix.EIO) {
		t.Fatalf("read of truncated page: err = %v, want ErrFault/EIO", err)
	}
	_, err = m.WriteAt(buf, 8*ps)
	if !errors.Is(err, ErrFault) {
		t.Fatalf("write of truncated page: err = %v, want ErrFault", err)
	}
}
