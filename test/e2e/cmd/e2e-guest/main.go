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
	"sync"
	"syscall"

	"github.com/anvilproject/anvil/test/e2e/guestdata"
)

// ioSize is the size of one direct I/O; 256 KiB lets the SCSI layer build
// large commands (the initiator splits them to its max_sectors).
const ioSize = 256 << 10

// workers is how many direct I/Os are in flight at once, so the target sees
// several outstanding commands (CmdSN window, tagged queueing), not a
// strict request-response ping-pong.
const workers = 4

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

// forChunks runs fn for every ioSize chunk of [0, size) on workers
// goroutines, each with its own aligned buffer, and returns the first error.
func forChunks(size int64, fn func(buf []byte, done int64) error) error {
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		buf, err := alignedBuffer(ioSize)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for done := int64(w) * ioSize; done < size; done += workers * ioSize {
				if err := fn(buf[:min(int64(ioSize), size-done)], done); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func rawWrite(dev string, off, size int64, seed uint64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	err = forChunks(size, func(buf []byte, done int64) error {
		for i := 0; i < len(buf); i += guestdata.BlockSize {
			guestdata.FillBlock(buf[i:i+guestdata.BlockSize], seed, uint64(done)+uint64(i))
		}
		if _, err := f.WriteAt(buf, off+done); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, off+done, err)
		}
		return nil
	})
	if err != nil {
		return err
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
	// The region is kept whole (64 MiB of the guest's 512) so its SHA-256
	// is taken in offset order, whichever worker finishes first.
	var (
		mu   sync.Mutex
		bad  int
		data = make([]byte, size)
	)
	err = forChunks(size, func(buf []byte, done int64) error {
		if _, err := f.ReadAt(buf, off+done); err != nil {
			return fmt.Errorf("read %s at %d: %w", dev, off+done, err)
		}
		copy(data[done:], buf)
		want := make([]byte, guestdata.BlockSize)
		for i := 0; i < len(buf); i += guestdata.BlockSize {
			guestdata.FillBlock(want, seed, uint64(done)+uint64(i))
			got := buf[i : i+guestdata.BlockSize]
			if !bytes.Equal(got, want) {
				mu.Lock()
				if bad < 8 {
					fmt.Fprintf(os.Stderr, "mismatch at device offset %d (pattern offset %d): found %s\n",
						off+done+int64(i), done+int64(i), guestdata.DescribeBlock(got))
				}
				bad++
				mu.Unlock()
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	fmt.Printf("raw-sha256=%s\n", hex.EncodeToString(sum[:]))
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
