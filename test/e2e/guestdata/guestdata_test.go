package guestdata

import (
	"bytes"
	"strings"
	"testing"
)

func TestPatternBlocksAreDistinctAndReproducible(t *testing.T) {
	a := make([]byte, BlockSize)
	b := make([]byte, BlockSize)
	FillBlock(a, 7, 4096)
	FillBlock(b, 7, 4096)
	if !bytes.Equal(a, b) {
		t.Fatal("same (seed, offset) gave different blocks")
	}
	FillBlock(b, 7, 8192)
	if bytes.Equal(a[HeaderSize:], b[HeaderSize:]) {
		t.Fatal("blocks at different offsets share their payload")
	}
	FillBlock(b, 8, 4096)
	if bytes.Equal(a[HeaderSize:], b[HeaderSize:]) {
		t.Fatal("blocks of different seeds share their payload")
	}
	if got, want := DescribeBlock(a), "pattern block of seed 0x7 for offset 4096"; got != want {
		t.Fatalf("DescribeBlock = %q, want %q", got, want)
	}
	if got := DescribeBlock(make([]byte, BlockSize)); got != "all zeros" {
		t.Fatalf("DescribeBlock(zeros) = %q", got)
	}
}

func TestWritePatternMatchesBlocks(t *testing.T) {
	var buf bytes.Buffer
	if err := WritePattern(&buf, 3, 8192, 3*BlockSize+100); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 3*BlockSize+100 {
		t.Fatalf("wrote %d bytes", buf.Len())
	}
	blk := make([]byte, BlockSize)
	FillBlock(blk, 3, 8192+2*BlockSize)
	if !bytes.Equal(buf.Bytes()[2*BlockSize:3*BlockSize], blk) {
		t.Fatal("third block differs from FillBlock")
	}
	if err := WritePattern(&buf, 3, 100, 10); err == nil {
		t.Fatal("unaligned base accepted")
	}
	if PatternSHA256(1, 0, 1<<20) == PatternSHA256(2, 0, 1<<20) {
		t.Fatal("different seeds hash alike")
	}
}

func TestManifestIsSortedAndSeeded(t *testing.T) {
	m := Manifest(42)
	lines := strings.Split(strings.TrimSuffix(m, "\n"), "\n")
	if len(lines) != len(Tree) {
		t.Fatalf("%d manifest lines for %d files", len(lines), len(Tree))
	}
	for i := 1; i < len(lines); i++ {
		if lines[i-1][66:] >= lines[i][66:] {
			t.Fatalf("manifest not sorted by path: %q before %q", lines[i-1], lines[i])
		}
	}
	// The empty file's digest is the SHA-256 of nothing, whatever the seed.
	if !strings.Contains(m, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  ./empty\n") {
		t.Fatalf("manifest lacks the empty file:\n%s", m)
	}
	if ManifestSHA256(42) == ManifestSHA256(43) {
		t.Fatal("manifest does not depend on the seed")
	}
}
