// Command e2e-guest runs inside the end-to-end qemu guest. It writes and
// checks the deterministic data of package guestdata on the block device
// that the guest's initiator attached, with O_DIRECT so every read and write
// really crosses the wire instead of being served from the page cache.
//
// Usage:
//
//	e2e-guest raw-write  DEV OFFSET SIZE SEED
//	e2e-guest raw-verify DEV OFFSET SIZE SEED
//	e2e-guest tree-write DIR SEED [PATH...]
//	e2e-guest manifest   SEED
//	e2e-guest read-until-error DEV SECONDS
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
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

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
	case (cmd == "raw-gens" && len(a) == 5) || (cmd == "raw-check-gens" && len(a) == 6):
		var n [5]int64
		for i := range a[1:] {
			v, err := strconv.ParseInt(a[1+i], 0, 64)
			if err != nil {
				return fmt.Errorf("%s: bad number %q", cmd, a[1+i])
			}
			n[i] = v
		}
		if n[0]%guestdata.BlockSize != 0 || n[1]%guestdata.BlockSize != 0 {
			return fmt.Errorf("%s: OFFSET and SIZE must be multiples of %d", cmd, guestdata.BlockSize)
		}
		if cmd == "raw-gens" {
			return rawGens(a[0], n[0], n[1], uint64(n[2]), n[3])
		}
		return rawCheckGens(a[0], n[0], n[1], uint64(n[2]), n[3], n[4])
	case cmd == "tree-write" && len(a) >= 2:
		seed, err := strconv.ParseUint(a[1], 0, 64)
		if err != nil {
			return fmt.Errorf("tree-write: bad seed: %w", err)
		}
		return treeWrite(a[0], seed, a[2:])
	case cmd == "read-until-error" && len(a) == 2:
		secs, err := strconv.Atoi(a[1])
		if err != nil || secs <= 0 {
			return fmt.Errorf("read-until-error: bad SECONDS %q", a[1])
		}
		return readUntilError(a[0], time.Duration(secs)*time.Second)
	case cmd == "manifest" && len(a) == 1:
		seed, err := strconv.ParseUint(a[0], 0, 64)
		if err != nil {
			return fmt.Errorf("manifest: bad seed: %w", err)
		}
		fmt.Print(guestdata.Manifest(seed))
		return nil
	}
	return fmt.Errorf("usage: raw-write|raw-verify DEV OFFSET SIZE SEED | raw-gens DEV OFFSET SIZE SEED GENS | " +
		"raw-check-gens DEV OFFSET SIZE SEED LO HI | tree-write DIR SEED [PATH...] | manifest SEED | read-until-error DEV SECONDS")
}

// readUntilError reads the first block of dev with O_DIRECT every 200 ms
// until a read fails, and prints how long that took and the error. The
// first read must work; after it the console gets "ANVIL-E2E: reading",
// the host's cue to revoke the access. It fails if every read succeeds for
// the whole timeout: the host expects the target to cut the session off
// meanwhile.
func readUntilError(dev string, timeout time.Duration) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	buf, err := alignedBuffer(guestdata.BlockSize)
	if err != nil {
		return err
	}
	if _, err := f.ReadAt(buf, 0); err != nil {
		return fmt.Errorf("first read of %s: %w", dev, err)
	}
	fmt.Fprintln(os.Stderr, "ANVIL-E2E: reading")
	start := time.Now()
	for reads := 1; time.Since(start) < timeout; reads++ {
		if _, err := f.ReadAt(buf, 0); err != nil {
			fmt.Printf("after=%.1fs reads=%d err=%q\n", time.Since(start).Seconds(), reads, err.Error())
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("every read of %s succeeded for %s", dev, timeout)
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

// genSeed is the pattern seed of generation gen of a raw-gens run.
func genSeed(seed uint64, gen int64) uint64 { return seed + uint64(gen) }

// rawGens overwrites the region with generation 1, 2, ... gens of the
// pattern, flushing the device (SYNCHRONIZE CACHE) after each and reporting
// "ANVIL-E2E: flushed gen=N" on the console once the flush returned. The
// host cuts the power at some point; whatever it finds afterwards must be
// the last reported generation or the one after it, block by block.
func rawGens(dev string, off, size int64, seed uint64, gens int64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	for g := int64(1); g <= gens; g++ {
		gs := genSeed(seed, g)
		err = forChunks(size, func(buf []byte, done int64) error {
			for i := 0; i < len(buf); i += guestdata.BlockSize {
				guestdata.FillBlock(buf[i:i+guestdata.BlockSize], gs, uint64(done)+uint64(i))
			}
			if _, err := f.WriteAt(buf, off+done); err != nil {
				return fmt.Errorf("gen %d: write %s at %d: %w", g, dev, off+done, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("gen %d: fsync %s: %w", g, dev, err)
		}
		fmt.Printf("ANVIL-E2E: flushed gen=%d\n", g)
	}
	return f.Close()
}

// rawCheckGens checks that every block of the region holds the pattern of
// one generation in [lo, hi] for its own offset, and prints how many blocks
// each generation holds.
func rawCheckGens(dev string, off, size int64, seed uint64, lo, hi int64) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	var (
		mu     sync.Mutex
		bad    int
		counts = make(map[int64]int)
	)
	err = forChunks(size, func(buf []byte, done int64) error {
		if _, err := f.ReadAt(buf, off+done); err != nil {
			return fmt.Errorf("read %s at %d: %w", dev, off+done, err)
		}
		want := make([]byte, guestdata.BlockSize)
		for i := 0; i < len(buf); i += guestdata.BlockSize {
			got := buf[i : i+guestdata.BlockSize]
			match := int64(-1)
			for g := lo; g <= hi && match < 0; g++ {
				guestdata.FillBlock(want, genSeed(seed, g), uint64(done)+uint64(i))
				if bytes.Equal(got, want) {
					match = g
				}
			}
			mu.Lock()
			if match < 0 {
				if bad < 8 {
					fmt.Fprintf(os.Stderr, "device offset %d (pattern offset %d) holds no generation in [%d,%d]: %s (generation seeds are %#x+gen)\n",
						off+done+int64(i), done+int64(i), lo, hi, guestdata.DescribeBlock(got), seed)
				}
				bad++
			} else {
				counts[match]++
			}
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Print("gens")
	for g := lo; g <= hi; g++ {
		fmt.Printf(" %d:%d", g, counts[g])
	}
	fmt.Println()
	if bad > 0 {
		return fmt.Errorf("%d of %d blocks hold no generation in [%d,%d]", bad, size/guestdata.BlockSize, lo, hi)
	}
	return nil
}

// treeWrite writes the files of the tree under root, or only those named
// in only (tree paths) when it is not empty.
func treeWrite(root string, seed uint64, only []string) error {
	for _, tf := range guestdata.Tree {
		if len(only) > 0 && !slices.Contains(only, tf.Path) {
			continue
		}
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
