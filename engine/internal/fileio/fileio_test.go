package fileio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestMappedAndPunch writes one block in the middle of a sparse file, asks
// for its allocation around it, punches it out again and checks it reads
// zeroes. The temporary directory's file system must report holes
// (ext4, xfs, btrfs and tmpfs do).
func TestMappedAndPunch(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const blk = 1 << 20
	if err := f.Truncate(4 * blk); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{7}, blk), 2*blk); err != nil {
		t.Fatal(err)
	}
	if err := Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	m0, n0, err := Mapped(fd, 0, 4*blk)
	if err != nil {
		t.Fatal(err)
	}
	if m0 || n0 != 2*blk {
		t.Fatalf("Mapped(0) = %v, %d; want a hole of %d bytes", m0, n0, 2*blk)
	}
	if m, n, err := Mapped(fd, 2*blk, 2*blk); err != nil || !m || n != blk {
		t.Fatalf("Mapped(data) = %v, %d, %v; want mapped, %d bytes", m, n, err, blk)
	}
	if err := PunchHole(fd, 2*blk, blk, f); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, blk)
	if _, err := f.ReadAt(got, 2*blk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, blk)) {
		t.Fatal("punched range does not read zeroes")
	}
}

// TestWriteZeroes zeroes a range larger than one write buffer and not a
// multiple of it, between bytes that must stay.
func TestWriteZeroes(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 3<<20 + 4096
	if _, err := f.WriteAt(bytes.Repeat([]byte{9}, size), 0); err != nil {
		t.Fatal(err)
	}
	const off, n = 512, 2<<20 + 1024
	if err := WriteZeroes(f, off, n); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		want := byte(9)
		if i >= off && i < off+n {
			want = 0
		}
		if b != want {
			t.Fatalf("byte %d = %d, want %d", i, b, want)
		}
	}
}
