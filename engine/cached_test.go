package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine/undo"
)

func openTest(t *testing.T, path string, o Options) *CachedVolume {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quietLog
	}
	if o.Cache == nil {
		o.Cache = NewCache(CacheOptions{Size: 32 << 20})
	}
	if o.UndoSize == 0 {
		o.UndoSize = 8 << 20
	}
	v, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func pattern(n int, seed int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(seed*31 + i*7 + i/512)
	}
	return p
}

func readAll(t *testing.T, v Volume) []byte {
	t.Helper()
	p := make([]byte, v.Size())
	if err := v.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRoundTripAndReopen writes random unaligned (to the chunk) block
// ranges, checks reads against a model both live and after reopening, on
// both backends and block sizes.
func TestRoundTripAndReopen(t *testing.T) {
	for _, be := range []Backend{BackendFile, BackendMmap} {
		for _, bs := range []int{512, 4096} {
			t.Run(string(be)+"/"+map[int]string{512: "512", 4096: "4k"}[bs], func(t *testing.T) {
				ctx := context.Background()
				path := filepath.Join(t.TempDir(), "vol.img")
				const size = 8 << 20
				o := Options{Size: size, BlockSize: bs, Backend: be, MmapWindow: 1 << 20, MmapWindows: 3}
				// A tiny cache forces eviction and refills.
				o.Cache = NewCache(CacheOptions{Size: 1 << 20})
				v := openTest(t, path, o)
				model := make([]byte, size)
				rng := rand.New(rand.NewPCG(7, uint64(bs)))
				for i := range 300 {
					n := (1 + rng.IntN(64)) * bs
					off := rng.IntN(size/bs-n/bs+1) * bs
					switch rng.IntN(10) {
					case 0:
						if err := v.Unmap(ctx, int64(off), int64(n)); err != nil {
							t.Fatal(err)
						}
						clear(model[off : off+n])
					case 1:
						if err := v.Flush(ctx); err != nil {
							t.Fatal(err)
						}
					default:
						p := pattern(n, i)
						if err := v.WriteAt(ctx, p, int64(off), rng.IntN(20) == 0); err != nil {
							t.Fatal(err)
						}
						copy(model[off:], p)
					}
					if i%100 == 0 && !bytes.Equal(readAll(t, v), model) {
						t.Fatalf("op %d: live read differs from model", i)
					}
				}
				if !bytes.Equal(readAll(t, v), model) {
					t.Fatal("live read differs from model")
				}
				if err := v.Close(); err != nil {
					t.Fatal(err)
				}
				raw, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(raw, model) {
					t.Fatal("raw image differs from model after Close: the data file must stay a plain image")
				}
				v = openTest(t, path, Options{BlockSize: bs, Backend: be})
				defer v.Close()
				if !bytes.Equal(readAll(t, v), model) {
					t.Fatal("reopened volume differs from model")
				}
				if st := v.Stats(); st.CacheMisses == 0 || st.Read.Ops == 0 {
					t.Fatalf("stats not counting: %+v", st)
				}
			})
		}
	}
}

// TestThinUnmapAndMapped checks that unmap punches holes in the data file
// once committed and that Mapped reports pending and committed state.
func TestThinUnmapAndMapped(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "thin.img")
	const size = 16 << 20
	v := openTest(t, path, Options{Size: size})
	defer v.Close()
	if m, n, err := v.Mapped(ctx, 0, size); err != nil || m || n != size {
		t.Fatalf("fresh volume Mapped = %v,%d,%v; want one hole", m, n, err)
	}
	if err := v.WriteAt(ctx, pattern(4<<20, 1), 4<<20, false); err != nil {
		t.Fatal(err)
	}
	// Pending (uncommitted) data counts as mapped.
	if m, n, err := v.Mapped(ctx, 4<<20, 8<<20); err != nil || !m || n != 4<<20 {
		t.Fatalf("pending data Mapped = %v,%d,%v; want mapped 4 MiB", m, n, err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc < 4<<20 || alloc > 5<<20 {
		t.Fatalf("allocated %d bytes after writing 4 MiB", alloc)
	}
	if err := v.Unmap(ctx, 5<<20, 2<<20); err != nil {
		t.Fatal(err)
	}
	if m, n, err := v.Mapped(ctx, 5<<20, 8<<20); err != nil || m || n != 2<<20 {
		t.Fatalf("pending unmap Mapped = %v,%d,%v; want hole of 2 MiB", m, n, err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if alloc := st.Blocks * 512; alloc > 2<<20+64<<10 {
		t.Fatalf("allocated %d bytes after unmapping 2 of 4 MiB: hole not punched", alloc)
	}
	if m, n, err := v.Mapped(ctx, 5<<20, 8<<20); err != nil || m || n != 2<<20 {
		t.Fatalf("committed unmap Mapped = %v,%d,%v; want hole of 2 MiB", m, n, err)
	}
	got := make([]byte, 4<<20)
	if err := v.ReadAt(ctx, got, 4<<20); err != nil {
		t.Fatal(err)
	}
	want := pattern(4<<20, 1)
	clear(want[1<<20 : 3<<20])
	if !bytes.Equal(got, want) {
		t.Fatal("data around the unmapped range is wrong")
	}
}

// TestFaultInjectionFreezesVolume: with a failure rate set, some commit
// fails; the flush reports a medium error, the volume turns read-only, reads
// keep returning the acknowledged data, and ClearError brings it back.
func TestFaultInjectionFreezesVolume(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "fault.img")
	v := openTest(t, path, Options{Size: 4 << 20, FlushInterval: time.Hour, FaultInjection: true})
	defer v.Close()
	model := make([]byte, 4<<20)
	v.SetFaultRate(3000, 42)
	var flushErr error
	for i := 0; i < 200 && flushErr == nil; i++ {
		p := pattern(8192, i)
		off := (i * 8192 * 7) % (4<<20 - 8192)
		if err := v.WriteAt(ctx, p, int64(off), false); err != nil {
			t.Fatalf("write %d before any failure: %v", i, err)
		}
		copy(model[off:], p)
		flushErr = v.Flush(ctx)
	}
	if !errors.Is(flushErr, ErrMedium) {
		t.Fatalf("no flush failed with ErrMedium at 30%% failure rate: %v", flushErr)
	}
	if !v.ReadOnly() {
		t.Fatal("volume not read-only after a failed commit")
	}
	if err := v.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write on frozen volume: %v, want ErrReadOnly", err)
	}
	v.SetFaultRate(0, 0)
	if !bytes.Equal(readAll(t, v), model) {
		t.Fatal("frozen volume does not read back the acknowledged data")
	}
	if err := v.ClearError(); err != nil {
		t.Fatal(err)
	}
	if v.ReadOnly() {
		t.Fatal("still read-only after ClearError")
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	if !bytes.Equal(raw, model) {
		t.Fatal("after ClearError and Flush the image lacks acknowledged data")
	}
	if st := v.Stats(); st.CommitErrors == 0 || st.InjectedFaults == 0 {
		t.Fatalf("stats do not show the failure: %+v", st)
	}
}

// TestReadErrorIsMedium: a failing backing read surfaces as ErrMedium.
func TestReadErrorIsMedium(t *testing.T) {
	ctx := context.Background()
	v := openTest(t, filepath.Join(t.TempDir(), "r.img"), Options{Size: 1 << 20, FaultInjection: true})
	defer v.Close()
	v.SetFaultRate(10000, 1)
	err := v.ReadAt(ctx, make([]byte, 4096), 0)
	if !errors.Is(err, ErrMedium) {
		t.Fatalf("read with failing device: %v, want ErrMedium", err)
	}
	v.SetFaultRate(0, 0)
	if err := v.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// TestFaultDeviceDeterministic: the same seed fails the same I/Os.
func TestFaultDeviceDeterministic(t *testing.T) {
	run := func(seed uint64) []int {
		d := NewFaultDevice(&nullDev{})
		d.SetFaultRate(500, seed)
		var failed []int
		for i := range 10000 {
			if _, err := d.WriteAt(nil, 0); err != nil {
				if !errors.Is(err, unix.EIO) {
					t.Fatalf("injected error is not EIO: %v", err)
				}
				failed = append(failed, i)
			}
		}
		return failed
	}
	a, b, c := run(9), run(9), run(10)
	if len(a) < 350 || len(a) > 650 {
		t.Fatalf("%d failures of 10000 at rate 500", len(a))
	}
	if !slicesEqual(a, b) || slicesEqual(a, c) {
		t.Fatal("failures are not a function of the seed")
	}
}

func slicesEqual(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type nullDev struct{ Device }

func (nullDev) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// TestWriteCacheOffIsDurable: with WCE=0 every acknowledged write is already
// in the raw image (committed), without any Flush.
func TestWriteCacheOffIsDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "wce.img")
	v := openTest(t, path, Options{Size: 1 << 20, WriteCacheOff: true, FlushInterval: time.Hour})
	defer v.Close()
	if v.WriteCache() {
		t.Fatal("write cache reported on")
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				if err := v.WriteAt(ctx, pattern(4096, g*10+i), int64((g*10+i)*4096), false); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	raw, _ := os.ReadFile(path)
	for k := range 80 {
		if !bytes.Equal(raw[k*4096:(k+1)*4096], pattern(4096, k)) {
			t.Fatalf("chunk %d not durable after a WCE=0 write returned", k)
		}
	}
	if st := v.Stats(); st.Epochs == 0 || st.Epochs > 80 {
		t.Fatalf("%d epochs for 80 WCE=0 writes", st.Epochs)
	}
}

// TestBackpressureBoundsDirty: writing far more than the dirty limit keeps
// dirty bytes near the limit and the cache within its budget.
func TestBackpressureBoundsDirty(t *testing.T) {
	ctx := context.Background()
	cache := NewCache(CacheOptions{Size: 4 << 20, DirtyLimit: 1 << 20})
	v := openTest(t, filepath.Join(t.TempDir(), "bp.img"), Options{Size: 64 << 20, Cache: cache})
	defer v.Close()
	var peakDirty, peakUsed int64
	p := pattern(256<<10, 3)
	for off := int64(0); off < 64<<20; off += int64(len(p)) {
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		peakDirty = max(peakDirty, cache.DirtyBytes())
		peakUsed = max(peakUsed, cache.Used())
	}
	if peakDirty > 2<<20 {
		t.Fatalf("dirty bytes peaked at %d with a 1 MiB limit", peakDirty)
	}
	if peakUsed > 6<<20 {
		t.Fatalf("cache used peaked at %d with a 4 MiB budget", peakUsed)
	}
}

// TestEarlyBackgroundCommit: once the open epoch holds an eighth of its
// maximum in distinct chunks, the flusher commits it without waiting for
// its timer; rewriting a smaller set over and over does not.
func TestEarlyBackgroundCommit(t *testing.T) {
	ctx := context.Background()
	v := openTest(t, filepath.Join(t.TempDir(), "kick.img"), Options{Size: 64 << 20, FlushInterval: time.Hour})
	defer v.Close()
	threshold := v.maxEpochChunks / 8
	p := pattern(ChunkSize, 1)
	// A hot set of half the threshold, rewritten eight times over.
	for range 8 {
		for k := range threshold / 2 {
			if err := v.WriteAt(ctx, p, k*ChunkSize, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := v.Stats().Epochs; n != 0 {
		t.Fatalf("%d epochs committed after rewriting %d chunks; want none before the timer", n, threshold/2)
	}
	for k := threshold / 2; k <= threshold; k++ {
		if err := v.WriteAt(ctx, p, k*ChunkSize, false); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for v.Stats().Epochs == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no background commit within 10 s of %d distinct dirty chunks", threshold+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestResize grows and shrinks a volume.
func TestResize(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "rs.img")
	v := openTest(t, path, Options{Size: 1 << 20})
	defer v.Close()
	if err := v.WriteAt(ctx, pattern(1<<20, 5), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Resize(ctx, 2<<20); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, v)
	if !bytes.Equal(got[:1<<20], pattern(1<<20, 5)) || !bytes.Equal(got[1<<20:], make([]byte, 1<<20)) {
		t.Fatal("grown volume content wrong")
	}
	if err := v.Resize(ctx, 512<<10+512); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, make([]byte, 1024), 512<<10, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past shrunk end: %v", err)
	}
	if !bytes.Equal(readAll(t, v), pattern(1<<20, 5)[:512<<10+512]) {
		t.Fatal("shrunk volume content wrong")
	}
}

// TestResizeKeepsTheEdgeChunk: a shrink to the middle of a chunk keeps an
// acknowledged write to that chunk below the new end, even one that
// arrived after Resize committed; and after a grow, the bytes past the old
// end read as zeroes, even from a buffer whose memory held other data.
func TestResizeKeepsTheEdgeChunk(t *testing.T) {
	ctx := context.Background()
	v := openTest(t, filepath.Join(t.TempDir(), "edge.img"), Options{Size: 4 * ChunkSize})
	defer v.Close()
	if err := v.WriteAt(ctx, pattern(4*ChunkSize, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	// Shrink to 2.5 chunks; a write to chunk 2 lands between Resize's
	// commit and its lock.
	late := pattern(ChunkSize, 2)
	v.resizeHook = func() {
		v.resizeHook = nil
		if err := v.WriteAt(ctx, late, 2*ChunkSize, false); err != nil {
			t.Error(err)
		}
	}
	newEnd := int64(2*ChunkSize + ChunkSize/2)
	if err := v.Resize(ctx, newEnd); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := append(pattern(4*ChunkSize, 1)[:2*ChunkSize], late[:ChunkSize/2]...)
	if got := readAll(t, v); !bytes.Equal(got, want) {
		t.Fatal("after the shrink: the write that arrived during Resize is lost")
	}

	// Leave a freed buffer full of 0xAB on top of the slab, then write the
	// last block, which the engine takes as a whole chunk (the volume ends
	// inside it), so it reuses that memory without clearing it.
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{0xAB}, ChunkSize), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Unmap(ctx, 0, ChunkSize); err != nil {
		t.Fatal(err)
	}
	last := pattern(ChunkSize/2, 3)
	if err := v.WriteAt(ctx, last, 2*ChunkSize, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Resize(ctx, 4*ChunkSize); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, v)
	if !bytes.Equal(got[2*ChunkSize:newEnd], last) {
		t.Fatal("after the grow: the last block before the old end changed")
	}
	if !bytes.Equal(got[newEnd:], make([]byte, 4*ChunkSize-newEnd)) {
		t.Fatalf("after the grow: the bytes past the old end are not zero (first: %#x)", got[newEnd])
	}
}

func TestLimitsFromFIFO(t *testing.T) {
	small := openTest(t, filepath.Join(t.TempDir(), "a.img"), Options{Size: 1 << 20, UndoSize: 1 << 20})
	defer small.Close()
	big := openTest(t, filepath.Join(t.TempDir(), "b.img"), Options{Size: 1 << 20, UndoSize: 64 << 20})
	defer big.Close()
	a, b := small.Limits().AtomicWriteMax, big.Limits().AtomicWriteMax
	if a <= 0 || a >= 1<<20 || b <= a || a%4096 != 0 {
		t.Fatalf("AtomicWriteMax %d (1 MiB FIFO), %d (64 MiB FIFO)", a, b)
	}
}

// TestNewImageIgnoresStaleUndo: a live undo record left beside a deleted
// image must not be "recovered" onto a new image created at that path.
func TestNewImageIgnoresStaleUndo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stale.img")
	v := openTest(t, path, Options{Size: 1 << 20})
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// Leave a live record for an uncommitted epoch, as a crash would.
	ud, err := OpenFileDevice(path+".undo", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := undo.Open(ud)
	if err != nil {
		t.Fatal(err)
	}
	b := f.Begin(f.Committed() + 1)
	p, err := b.AppendData(0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	copy(p, bytes.Repeat([]byte{0xaa}, 4096))
	if err := b.Write(); err != nil {
		t.Fatal(err)
	}
	ud.Close()
	// Sanity: reopening the existing image does apply it.
	v = openTest(t, path, Options{})
	if got := readAll(t, v); got[0] != 0xaa {
		t.Fatal("test setup: the live record was not recovered onto its own image")
	}
	v.Close()
	// Recreate the stale record, delete the image, create a new one.
	ud, _ = OpenFileDevice(path+".undo", false, 0)
	f, _ = undo.Open(ud)
	b = f.Begin(f.Committed() + 1)
	p, _ = b.AppendData(0, 4096)
	copy(p, bytes.Repeat([]byte{0xaa}, 4096))
	if err := b.Write(); err != nil {
		t.Fatal(err)
	}
	ud.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	v = openTest(t, path, Options{Size: 1 << 20})
	defer v.Close()
	if !bytes.Equal(readAll(t, v), make([]byte, 1<<20)) {
		t.Fatal("new image inherited a stale undo record")
	}
}

// gateDevice blocks in-place data writes (WriteAtv) until released, and can
// fail the next one.
type gateDevice struct {
	Device
	entered chan struct{}
	release chan struct{}
	fail    atomic.Bool
}

func (g *gateDevice) WriteAtv(bufs [][]byte, off int64) error {
	g.entered <- struct{}{}
	<-g.release
	if g.fail.Swap(false) {
		return errors.New("gate: injected failure")
	}
	return g.Device.WriteAtv(bufs, off)
}

// TestCopyOnWriteDuringFailedCommit: a write to a chunk whose commit is in
// flight gets a new version; when that commit then fails and is cleared,
// the failed epoch is committed again before the newer one, and each
// epoch's undo records must hold the chunk's true on-disk contents. (A
// copy-on-write version once passed for a clean buffer here, and recovery
// then restored data that was never committed.) The check: crash at every
// device operation of the commits after ClearError, recover, and require a
// consistent prefix each time; across the sweep, both the rolled-back
// retry and the committed retry with the newer epoch rolled back must be
// seen.
func TestCopyOnWriteDuringFailedCommit(t *testing.T) {
	seen := map[[2]int]bool{}
	for at := int64(1); at <= 14; at++ {
		f := copyOnWriteFailedCommit(t, at)
		seen[[2]int{f.lo, f.hi}] = true
	}
	// {1,2}: only the first write survived (the retried epoch rolled
	// back); {2,3}: the retry survived and the newest write was rolled
	// back; {3,4}: all of it committed.
	for _, want := range [][2]int{{1, 2}, {2, 3}, {3, 4}} {
		if !seen[want] {
			t.Errorf("no crash point recovered to prefix %v (saw %v)", want, seen)
		}
	}
}

// copyOnWriteFailedCommit runs the scenario of
// TestCopyOnWriteDuringFailedCommit with a crash at the at'th device
// operation after ClearError, and returns the recovered prefix.
func copyOnWriteFailedCommit(t *testing.T, at int64) interval {
	t.Helper()
	ctx := context.Background()
	world := newSimWorld(5)
	dataDev := world.newDev(newSimImage(64 << 10))
	undoDev := world.newDev(newSimImage(undo.MinSize * 2))
	gate := &gateDevice{Device: dataDev, entered: make(chan struct{}), release: make(chan struct{})}
	v, err := OpenDevices(gate, undoDev, Options{Cache: NewCache(CacheOptions{Size: 1 << 20}), FlushInterval: time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	stamp := func(id uint64) []byte {
		p := make([]byte, 2*ChunkSize)
		for s := range int64(2 * ChunkSize / simSector) {
			stampSector(p[s*simSector:], id, s)
		}
		return p
	}
	// flush lets every in-place write through the gate until the flush
	// returns.
	flush := func() error {
		done := make(chan error)
		go func() { done <- v.Flush(ctx) }()
		for {
			select {
			case <-gate.entered:
				gate.release <- struct{}{}
			case err := <-done:
				return err
			}
		}
	}
	// A: committed to both chunks. B: written to both.
	if err := v.WriteAt(ctx, stamp(1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, stamp(2), 0, false); err != nil {
		t.Fatal(err)
	}
	// Commit B, and while its in-place write is held, write C to chunk 0.
	done := make(chan error)
	go func() { done <- v.Flush(ctx) }()
	<-gate.entered
	c := stamp(3)[:ChunkSize]
	if err := v.WriteAt(ctx, c, 0, false); err != nil {
		t.Fatal(err)
	}
	gate.fail.Store(true)
	gate.release <- struct{}{}
	if err := <-done; !errors.Is(err, ErrMedium) {
		t.Fatalf("failed commit: %v", err)
	}
	if err := v.ClearError(); err != nil {
		t.Fatal(err)
	}
	// The next flush commits B again, then C; crash at operation at.
	world.mu.Lock()
	world.crashAt = world.ops + at
	world.loseAll = true
	world.mu.Unlock()
	_ = flush()
	world.crash()
	v.Close()
	img := dataDev.crashImg
	d2 := newSimWorld(6)
	v2, err := OpenDevices(d2.newDev(img), d2.newDev(undoDev.crashImg), Options{Cache: NewCache(CacheOptions{Size: 1 << 20}), Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	got := make([]byte, 2*ChunkSize)
	if err := v2.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	log := []logEntry{{0, 2 * ChunkSize, 1, 0}, {0, 2 * ChunkSize, 2, 0}, {0, ChunkSize, 3, 0}}
	feasible, err := checkPrefix(got, log, 1)
	if err != nil {
		t.Fatalf("crash at operation %d, after recovery: %v", at, err)
	}
	if len(feasible) != 1 || feasible[0].hi != feasible[0].lo+1 {
		t.Fatalf("crash at operation %d: recovered state fits prefixes %v; want exactly one", at, feasible)
	}
	return feasible[0]
}

// TestRepeatedFailedCommitsFitTheFIFO: each epoch is bounded so that its
// undo records fit in the FIFO, and failed commits must not undo that
// bound. A writer fills the volume chunk by chunk while the first three
// in-place writes fail, each one only once the next epoch has filled up
// behind it, and each failure is cleared like an operator would. The final
// flush must succeed (it once found the failed epochs merged into one
// larger than the FIFO: "epoch does not fit"), and every acknowledged
// write must read back.
func TestRepeatedFailedCommitsFitTheFIFO(t *testing.T) {
	ctx := context.Background()
	world := newSimWorld(7)
	dataDev := world.newDev(newSimImage(8 << 20))
	undoDev := world.newDev(newSimImage(1 << 20))
	gate := &gateDevice{Device: dataDev, entered: make(chan struct{}), release: make(chan struct{})}
	// The epoch size the FIFO allows, from a scratch volume of the same
	// geometry. The real one gets a dirty limit of four such epochs: an
	// epoch being committed and a full one behind it, each counting its
	// new data and the old contents it keeps for the undo records. The
	// writer then waits with the epoch behind full, instead of racing
	// through the whole volume while the first commit is held.
	probe, err := OpenDevices(world.newDev(newSimImage(8<<20)), world.newDev(newSimImage(1<<20)), Options{Cache: NewCache(CacheOptions{Size: 64 << 20}), FlushInterval: time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	m := probe.maxEpochChunks
	probe.Close()
	cache := NewCache(CacheOptions{Size: 64 << 20, DirtyLimit: 4 * m * ChunkSize})
	v, err := OpenDevices(gate, undoDev, Options{Cache: cache, FlushInterval: time.Hour, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	if v.maxEpochChunks != m {
		t.Fatalf("epoch of %d chunks, want %d", v.maxEpochChunks, m)
	}
	chunks := 4 * m
	if chunks*ChunkSize > v.Size() {
		t.Fatalf("test volume too small for 4 epochs of %d chunks", m)
	}
	// Let every in-place write of fn through the gate.
	passAll := func(fn func() error) {
		t.Helper()
		done := make(chan error)
		go func() { done <- fn() }()
		for {
			select {
			case <-gate.entered:
				gate.release <- struct{}{}
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	// Data written and committed before, so that the undo records carry
	// whole chunks of old data (never-written chunks need only a short
	// "hole" record).
	model := pattern(int(v.Size()), 99)
	passAll(func() error {
		if err := v.WriteAt(ctx, model, 0, false); err != nil {
			return err
		}
		return v.Flush(ctx)
	})
	var written atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		for k := int64(0); k < chunks; {
			p := pattern(ChunkSize, int(k)+1)
			err := v.WriteAt(ctx, p, k*ChunkSize, false)
			switch {
			case err == nil:
				copy(model[k*ChunkSize:], p)
				k++
				written.Store(k)
			case errors.Is(err, ErrReadOnly):
				time.Sleep(time.Millisecond) // wait for ClearError
			default:
				writerDone <- fmt.Errorf("write chunk %d: %w", k, err)
				return
			}
		}
		writerDone <- nil
	}()
	// blocked reports when a whole epoch has filled up behind the one
	// being committed: the open epoch is full, or was cut into the queue
	// when it was, or the writer has finished.
	blocked := func() bool {
		v.mu.RLock()
		defer v.mu.RUnlock()
		return v.epochChunks >= m || len(v.queue) > 0 || written.Load() == chunks
	}
	failures := 0
	var writerErr error
	for finished := false; !finished; {
		select {
		case <-gate.entered:
			if failures < 3 {
				deadline := time.Now().Add(10 * time.Second)
				for !blocked() {
					if time.Now().After(deadline) {
						t.Fatalf("no full epoch behind the commit after 10 s (%d failures so far)", failures)
					}
					time.Sleep(time.Millisecond)
				}
				failures++
				gate.fail.Store(true)
				gate.release <- struct{}{}
				if err := v.ClearError(); err != nil {
					t.Fatal(err)
				}
				continue
			}
			gate.release <- struct{}{}
		case writerErr = <-writerDone:
			finished = true
		case <-time.After(10 * time.Millisecond):
			if err := v.Err(); err != nil {
				t.Fatalf("a commit failed with no injected error (%d injected and cleared): %v", failures, err)
			}
		}
	}
	if writerErr != nil {
		t.Fatal(writerErr)
	}
	if failures < 3 {
		t.Fatalf("only %d commits failed; the test did not do what it says", failures)
	}
	passAll(func() error {
		if err := v.Flush(ctx); err != nil {
			return fmt.Errorf("flush after the errors were cleared: %w", err)
		}
		got := make([]byte, v.Size())
		if err := v.ReadAt(ctx, got, 0); err != nil {
			return err
		}
		if !bytes.Equal(got, model) {
			return errors.New("volume does not read back the acknowledged writes")
		}
		return v.Close()
	})
}

// coldVolume writes a size-byte volume with pattern seed, closes it and
// opens it again with nothing cached. The volume closes with the test.
func coldVolume(t *testing.T, size int64, seed int) (*CachedVolume, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cold.img")
	v := openTest(t, path, Options{Size: size})
	model := pattern(int(size), seed)
	if err := v.WriteAt(context.Background(), model, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	v = openTest(t, path, Options{})
	t.Cleanup(func() { v.Close() })
	return v, model
}

// TestReadAheadTail: a readahead window that runs into the end of a volume
// whose size is not a whole number of chunks reads the short last chunk
// right (vectored fill, partial last buffer).
func TestReadAheadTail(t *testing.T) {
	ctx := context.Background()
	const size = 1<<20 + 1536
	v, model := coldVolume(t, size, 11)
	got := make([]byte, size)
	for off := 0; off < size; off += 512 {
		if err := v.ReadAt(ctx, got[off:off+512], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, model) {
		t.Fatal("sequential reads up to a partial last chunk returned wrong data")
	}
}

// TestReadAhead: sequential small reads of a cold volume are served mostly
// from readahead, and stay correct when writes land in the read-ahead
// range.
func TestReadAhead(t *testing.T) {
	ctx := context.Background()
	const size = 4 << 20
	v, model := coldVolume(t, size, 9)
	got := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		if off == size/2 {
			// Overwrite a range the readahead has probably cached.
			p := pattern(64<<10, 10)
			if err := v.WriteAt(ctx, p, int64(off+8192), false); err != nil {
				t.Fatal(err)
			}
			copy(model[off+8192:], p)
		}
		if err := v.ReadAt(ctx, got[off:off+4096], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, model) {
		t.Fatal("sequential reads with readahead returned wrong data")
	}
	st := v.Stats()
	// One miss starts the readahead; the marks keep it ahead from then on.
	if st.Read.Ops != size/4096 || st.CacheMisses > 2 {
		t.Fatalf("%d reads, %d cache misses: readahead is not working", st.Read.Ops, st.CacheMisses)
	}
}

// nicedThreads counts this process's threads running at flusherNice.
func nicedThreads(t *testing.T) int {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		stat, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "stat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		// Fields after the command name, which is in parentheses:
		// state is field 3 and nice field 19.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 16 && f[16] == strconv.Itoa(flusherNice) {
			n++
		}
	}
	return n
}

// TestFlusherRunsNiced: each volume's background flusher runs on a thread
// of its own at flusherNice, and the thread goes away with the volume
// (it is not handed back to run other goroutines at that priority).
func TestFlusherRunsNiced(t *testing.T) {
	before := nicedThreads(t)
	dir := t.TempDir()
	a := openTest(t, filepath.Join(dir, "a.img"), Options{Size: 1 << 20})
	b := openTest(t, filepath.Join(dir, "b.img"), Options{Size: 1 << 20})
	waitFor := func(want int, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for nicedThreads(t) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d threads at niceness %d, want %d", what, nicedThreads(t), flusherNice, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(before+2, "two volumes open")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(before, "both closed")
}

// TestQueuedEpochsDrain: a burst of several epochs' worth of overwrites
// goes into memory (the writer does not wait for each commit), and the
// flusher commits the whole queue on its own, long before its timer.
func TestQueuedEpochsDrain(t *testing.T) {
	ctx := context.Background()
	cache := NewCache(CacheOptions{Size: 256 << 20, DirtyLimit: 128 << 20})
	v := openTest(t, filepath.Join(t.TempDir(), "q.img"), Options{Size: 64 << 20, UndoSize: 4 << 20, Cache: cache, FlushInterval: time.Hour})
	defer v.Close()
	m := v.maxEpochChunks
	// Old data first, so that the undo records are full-size data records.
	fill := pattern(int((6*m+15)/16*16*ChunkSize), 1) // whole 64 KiB writes
	if err := v.WriteAt(ctx, fill, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before := v.Stats().Epochs
	burst := pattern(len(fill), 2)
	deepest := 0
	for off := 0; off < len(burst); off += 64 << 10 {
		if err := v.WriteAt(ctx, burst[off:off+64<<10], int64(off), false); err != nil {
			t.Fatal(err)
		}
		deepest = max(deepest, v.queued())
	}
	if deepest < 2 {
		t.Fatalf("at most %d epochs queued during a burst of 6 epochs; want the writer to run ahead", deepest)
	}
	deadline := time.Now().Add(20 * time.Second)
	for v.queued() > 0 || v.Stats().DirtyBytes > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: %d epochs still queued, %d dirty bytes (%d epochs committed)", v.queued(), v.Stats().DirtyBytes, v.Stats().Epochs-before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := v.Stats().Epochs - before; n < 6 {
		t.Fatalf("%d epochs committed for 6 epochs of writes", n)
	}
	got := make([]byte, len(burst))
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, burst) {
		t.Fatalf("burst read back wrong (err %v)", err)
	}
}
