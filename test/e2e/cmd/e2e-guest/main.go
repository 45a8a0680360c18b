// Command e2e-guest runs inside the end-to-end qemu guest. It writes and
// checks the deterministic data of package guestdata on the block device
// that the guest's initiator attached, with O_DIRECT so every read and write
// really crosses the wire instead of being served from the page cache.
//
// Usage:
//
//	e2e-guest raw-write  DEV OFFSET SIZE SEED
//	e2e-guest raw-verify DEV OFFSET SIZE SEED
//	e2e-guest tree-write DIR SEED
//	e2e-guest manifest   SEED
//
// OFFSET and SIZE are bytes (multiples of 4096); SEED is a decimal or 0x
// number. raw-verify prints "raw-sha256=<hex>" of what it read and exits 1
// at the first block that differs, naming what the block held instead.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/anvilproject/anvil/test/e2e/guestdata"
)

// ioSize is the size of one direct I/O; 1 MiB lets the SCSI layer build
// large commands (the initiator splits them to its max_sectors).
const ioSize = 1 << 20

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "e2e-guest:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("missing command")
	}
	switch cmd, a := args[0], args[1:]; {
	case (cmd == "raw-write" || cmd == "raw-verify") && len(a) == 4:
		off, err1 := strconv.ParseInt(a[1], 0, 64)
		size, err2 := strconv.ParseInt(a[2], 0, 64)
		seed, err3 := strconv.ParseUint(a[3], 0, 64)
		if err1 != nil || err2 != nil || err3 != nil || off%guestdata.BlockSize != 0 || size%guestdata.BlockSize != 0 {
			return fmt.Errorf("%s: bad OFFSET SIZE SEED %q", cmd, a[1:])
		}
		if cmd == "raw-write" {
			return rawWrite(a[0], off, size, seed)
		}
		return rawVerify(a[0], off, size, seed)
	case cmd == "tree-write" && len(a) == 2:
		seed, err := strconv.ParseUint(a[1], 0, 64)
		if err != nil {
			return fmt.Errorf("tree-write: bad seed: %w", err)
		}
		return treeWrite(a[0], seed)
	case cmd == "manifest" && len(a) == 1:
		seed, err := strconv.ParseUint(a[0], 0, 64)
		if err != nil {
			return fmt.Errorf("manifest: bad seed: %w", err)
		}
		fmt.Print(guestdata.Manifest(seed))
		return nil
	}
	return fmt.Errorf("usage: raw-write|raw-verify DEV OFFSET SIZE SEED | tree-write DIR SEED | manifest SEED")
}

// alignedBuffer returns a page-aligned buffer, as O_DIRECT requires.
func alignedBuffer(n int) ([]byte, error) {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mmap I/O buffer: %w", err)
	}
	return b, nil
}

func rawWrite(dev string, off, size int64, seed uint64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	buf, err := alignedBuffer(ioSize)
	if err != nil {
		return err
	}
	for done := int64(0); done < size; {
		n := min(int64(ioSize), size-done)
		for i := int64(0); i < n; i += guestdata.BlockSize {
			guestdata.FillBlock(buf[i:i+guestdata.BlockSize], seed, uint64(done+i))
		}
		if _, err := f.WriteAt(buf[:n], off+done); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, off+done, err)
		}
		done += n
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dev, err)
	}
	return f.Close()
}

func rawVerify(dev string, off, size int64, seed uint64) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	buf, err := alignedBuffer(ioSize)
	if err != nil {
		return err
	}
	want := make([]byte, guestdata.BlockSize)
	h := sha256.New()
	bad := 0
	for done := int64(0); done < size; {
		n := min(int64(ioSize), size-done)
		if _, err := f.ReadAt(buf[:n], off+done); err != nil {
			return fmt.Errorf("read %s at %d: %w", dev, off+done, err)
		}
		h.Write(buf[:n])
		for i := int64(0); i < n; i += guestdata.BlockSize {
			guestdata.FillBlock(want, seed, uint64(done+i))
			got := buf[i : i+guestdata.BlockSize]
			if !bytes.Equal(got, want) {
				if bad < 8 {
					fmt.Fprintf(os.Stderr, "mismatch at device offset %d (pattern offset %d): found %s\n",
						off+done+i, done+i, guestdata.DescribeBlock(got))
				}
				bad++
			}
		}
		done += n
	}
	fmt.Printf("raw-sha256=%s\n", hex.EncodeToString(h.Sum(nil)))
	if bad > 0 {
		return fmt.Errorf("%d of %d blocks differ from the pattern", bad, size/guestdata.BlockSize)
	}
	return nil
}

func treeWrite(root string, seed uint64) error {
	for _, tf := range guestdata.Tree {
		p := filepath.Join(root, filepath.FromSlash(tf.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("mkdir for %s: %w", tf.Path, err)
		}
		f, err := os.Create(p)
		if err != nil {
			return fmt.Errorf("create %s: %w", tf.Path, err)
		}
		if err := guestdata.WriteFile(f, seed, tf); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", tf.Path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("fsync %s: %w", tf.Path, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("close %s: %w", tf.Path, err)
		}
	}
	return nil
}
