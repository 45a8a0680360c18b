// Package guestdata defines the deterministic data that the end-to-end guest
// writes through a real initiator: a raw block pattern and a tree of files.
//
// Both the guest-side helper (test/e2e/cmd/e2e-guest) and the host-side test
// derive the data from this one package, so the host can check what the
// guest read back against what it should have read, not merely against what
// the guest wrote a minute earlier.
package guestdata

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"
)

// BlockSize is the unit of the raw pattern. Every block carries a header that
// names its own offset, so a misdirected write shows up as a block whose
// header points elsewhere.
const BlockSize = 4096

// headerMagic starts every pattern block.
var headerMagic = [8]byte{'A', 'N', 'V', 'I', 'L', 'E', '2', 'E'}

// HeaderSize is the number of bytes at the start of a block that identify it.
const HeaderSize = 24

// FillBlock writes the pattern block for (seed, byte offset off) into b,
// which must be BlockSize long. off must be a multiple of BlockSize.
func FillBlock(b []byte, seed, off uint64) {
	copy(b[0:8], headerMagic[:])
	binary.LittleEndian.PutUint64(b[8:16], seed)
	binary.LittleEndian.PutUint64(b[16:24], off)
	// splitmix64: cheap, well-mixed, and trivially reproducible anywhere.
	x := seed ^ (off * 0x9e3779b97f4a7c15)
	for i := HeaderSize; i < BlockSize; i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		binary.LittleEndian.PutUint64(b[i:i+8], z)
	}
}

// DescribeBlock explains what a block read back from the disk holds, for
// error messages: which (seed, offset) it was written for, or that it is not
// a pattern block at all (zeros, stale data).
func DescribeBlock(b []byte) string {
	if len(b) < HeaderSize {
		return "short block"
	}
	if [8]byte(b[0:8]) != headerMagic {
		allZero := true
		for _, c := range b {
			if c != 0 {
				allZero = false
				break
			}
		}
		if allZero {
			return "all zeros"
		}
		return fmt.Sprintf("no pattern header (starts %x)", b[:16])
	}
	return fmt.Sprintf("pattern block of seed %#x for offset %d",
		binary.LittleEndian.Uint64(b[8:16]), binary.LittleEndian.Uint64(b[16:24]))
}

// WritePattern writes size bytes of the pattern for seed, starting at
// pattern offset base (a multiple of BlockSize), to w.
func WritePattern(w io.Writer, seed, base uint64, size int64) error {
	if base%BlockSize != 0 {
		return fmt.Errorf("pattern base %d is not a multiple of %d", base, BlockSize)
	}
	b := make([]byte, BlockSize)
	for done := int64(0); done < size; done += BlockSize {
		FillBlock(b, seed, base+uint64(done))
		n := int64(BlockSize)
		if size-done < n {
			n = size - done
		}
		if _, err := w.Write(b[:n]); err != nil {
			return fmt.Errorf("write pattern at %d: %w", done, err)
		}
	}
	return nil
}

// PatternSHA256 returns the hex SHA-256 of size bytes of the pattern.
func PatternSHA256(seed, base uint64, size int64) string {
	h := sha256.New()
	if err := WritePattern(h, seed, base, size); err != nil {
		panic(err) // a hash never fails to write; only a bad base can fail
	}
	return hex.EncodeToString(h.Sum(nil))
}

// File is one file of the test tree.
type File struct {
	Path string // relative, slash-separated, without a leading "./"
	Size int64
}

// Tree is the set of files the guest writes onto the filesystem: a few
// directories deep, sizes that straddle block, page and extent boundaries.
var Tree = []File{
	{"empty", 0},
	{"one-byte", 1},
	{"a/sector-minus-one", 511},
	{"a/page", 4096},
	{"a/odd-12345", 12345},
	{"a/b/page-plus-7", 65543},
	{"a/b/one-mib", 1 << 20},
	{"a/b/c/three-mib-odd", 3<<20 + 123},
	{"a/b/c/d/deep", 777},
	{"big/eight-mib", 8 << 20},
	{"big/five-mib-plus-page", 5<<20 + 4096},
	{"log/notes-1", 2000},
	{"log/notes-2", 40000},
}

// FileSeed derives the pattern seed of one tree file from the run's seed, so
// no two files share content and a file swapped with another is noticed.
func FileSeed(seed uint64, path string) uint64 {
	h := sha256.Sum256([]byte(path))
	return seed ^ binary.LittleEndian.Uint64(h[:8])
}

// WriteFile writes the contents of tree file f for seed to w.
func WriteFile(w io.Writer, seed uint64, f File) error {
	return WritePattern(w, FileSeed(seed, f.Path), 0, f.Size)
}

// Manifest returns the text that `find . -type f | sort | xargs sha256sum`
// prints inside the tree's root directory when the tree is intact: one
// "<sha256>  ./<path>" line per file, sorted by path.
func Manifest(seed uint64) string {
	lines := make([]string, 0, len(Tree))
	for _, f := range Tree {
		h := sha256.New()
		if err := WriteFile(h, seed, f); err != nil {
			panic(err)
		}
		lines = append(lines, sum(h)+"  ./"+f.Path)
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i][66:] < lines[j][66:] })
	return strings.Join(lines, "\n") + "\n"
}

// ManifestSHA256 returns the hex SHA-256 of Manifest(seed).
func ManifestSHA256(seed uint64) string {
	h := sha256.New()
	io.WriteString(h, Manifest(seed))
	return sum(h)
}

func sum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
