package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anvilproject/anvil/engine/undo"
)

// Every 512-byte sector a test write puts down is stamped with the write's
// id and the sector's own index, and filled with a pattern derived from both,
// so that the checker can tell exactly which write a sector came from and
// spot torn, misplaced or corrupted sectors.
func stampSector(p []byte, id uint64, sector int64) {
	binary.LittleEndian.PutUint64(p[0:], id)
	binary.LittleEndian.PutUint64(p[8:], uint64(sector))
	x := id*0x9e3779b97f4a7c15 ^ uint64(sector)*0xbf58476d1ce4e5b9
	for i := 16; i < simSector; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
}

// sectorID decodes a sector: 0 for all zeroes, the write id for an intact
// stamp, or an error for anything else.
func sectorID(p []byte, sector int64) (uint64, error) {
	id := binary.LittleEndian.Uint64(p)
	if id == 0 {
		for _, c := range p {
			if c != 0 {
				return 0, fmt.Errorf("sector %d: garbage without a stamp", sector)
			}
		}
		return 0, nil
	}
	var want [simSector]byte
	stampSector(want[:], id, sector)
	if string(want[:]) != string(p) {
		return 0, fmt.Errorf("sector %d: stamp of write %d is corrupt, torn or misplaced", sector, id)
	}
	return id, nil
}

// logEntry is one write piece as the engine applied it, in apply order.
type logEntry struct {
	off, n int64
	id     uint64 // 0 for zeroes/unmap
	epoch  uint64 // the open epoch the piece was applied in
}

// interval is a half-open range [lo, hi) of prefix lengths k.
type interval struct{ lo, hi int }

func intersect(a, b []interval) []interval {
	var out []interval
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].lo, b[j].lo), min(a[i].hi, b[j].hi)
		if lo < hi {
			out = append(out, interval{lo, hi})
		}
		if a[i].hi < b[j].hi {
			i++
		} else {
			j++
		}
	}
	return out
}

// checkPrefix verifies that image equals the state after applying the first
// k entries of log to a zeroed volume, for some k >= minK, and returns the
// feasible k ranges.
func checkPrefix(image []byte, log []logEntry, minK int) ([]interval, error) {
	nsec := int64(len(image)) / simSector
	touches := make([][]int, nsec) // per sector: indices into log
	for i, e := range log {
		for s := e.off / simSector; s < (e.off+e.n)/simSector; s++ {
			touches[s] = append(touches[s], i)
		}
	}
	feasible := []interval{{minK, len(log) + 1}}
	for s := int64(0); s < nsec; s++ {
		id, err := sectorID(image[s*simSector:(s+1)*simSector], s)
		if err != nil {
			return nil, err
		}
		t := touches[s]
		var ok []interval
		// k such that the last applied touch (index < k) left value id.
		if id == 0 {
			end := len(log) + 1
			if len(t) > 0 {
				end = t[0] + 1
			}
			ok = append(ok, interval{0, end})
		}
		for j, i := range t {
			if log[i].id != id {
				continue
			}
			end := len(log) + 1
			if j+1 < len(t) {
				end = t[j+1] + 1
			}
			ok = append(ok, interval{i + 1, end})
		}
		if len(ok) == 0 {
			return nil, fmt.Errorf("sector %d holds write %d, which never touched it", s, id)
		}
		feasible = intersect(feasible, ok)
		if len(feasible) == 0 {
			return nil, fmt.Errorf("no prefix of the %d applied writes (at least %d) explains the state; sector %d (write %d) rules out the rest", len(log), minK, s, id)
		}
	}
	return feasible, nil
}

// crashRun is one crash experiment's parameters.
type crashRun struct {
	seed      uint64
	volSize   int64
	undoSize  int64
	cacheSize int64
	workers   int
	opsEach   int
	crashAt   int64 // world op at which to crash; 0 = after the workload
	recCrash  int   // how many times to crash during recovery
	wceOff    bool
	interval  time.Duration
	faults    int // injected EIO per 10,000 backing I/Os; failed commits are cleared
}

type crashResult struct {
	ops      int64 // world ops the workload issued (for calibration)
	logLen   int
	required int
	feasible []interval
	clears   int // failed commits cleared with ClearError
	chained  int // epochs committed through the chained path
}

// runCrash drives a volume over simulated devices with concurrent random
// writes, unmaps, write-zeroes and flushes, crashes it, recovers (crashing
// recovery itself recCrash times), and checks the crash-consistency promise.
func runCrash(t testing.TB, r crashRun) (crashResult, error) {
	var res crashResult
	world := newSimWorld(r.seed)
	dataDev := world.newDev(newSimImage(r.volSize))
	undoDev := world.newDev(newSimImage(r.undoSize))
	cache := NewCache(CacheOptions{Size: r.cacheSize})
	opts := Options{Name: "crash", Cache: cache, FlushInterval: r.interval, WriteCacheOff: r.wceOff, Logger: quietLog, FaultInjection: r.faults > 0}
	v, err := OpenDevices(dataDev, undoDev, opts)
	if err != nil {
		return res, fmt.Errorf("open: %w", err)
	}
	var (
		logMu    sync.Mutex
		log      []logEntry
		lastIdx  = map[uint64]int{} // write id -> its last log index
		ackedMax atomic.Int64       // max log index of an acknowledged write
		required atomic.Int64       // entries [0, required] must survive
	)
	ackedMax.Store(-1)
	required.Store(-1)
	v.applyHook = func(kind writeKind, off, n int64, p []byte) {
		var id uint64
		if kind == kindData {
			id = binary.LittleEndian.Uint64(p)
		}
		logMu.Lock()
		log = append(log, logEntry{off: off, n: n, id: id, epoch: v.epoch})
		if id != 0 {
			lastIdx[id] = len(log) - 1
		}
		logMu.Unlock()
	}
	// After every commit the data device must hold exactly the writes of
	// the epochs committed so far: a check of the live write path that
	// needs no crash to find a wrong in-place write. The log is in epoch
	// order (pieces are logged and epochs cut under the volume lock), so
	// the expected write id of every sector advances with a cursor, and
	// comparing the id stamped at the start of each sector is enough
	// (stamps are checked whole after recovery).
	var inPlaceErr atomic.Pointer[error]
	wantID := make([]uint64, r.volSize/simSector)
	applied := 0
	v.commitHook = func(ep uint64) {
		if inPlaceErr.Load() != nil {
			return
		}
		logMu.Lock()
		for ; applied < len(log) && log[applied].epoch <= ep; applied++ {
			e := log[applied]
			for s := e.off / simSector; s < (e.off+e.n)/simSector; s++ {
				wantID[s] = e.id
			}
		}
		upTo := applied
		logMu.Unlock()
		world.mu.Lock()
		defer world.mu.Unlock()
		for s, want := range wantID {
			if got := binary.LittleEndian.Uint64(dataDev.view.data[s*simSector:]); got != want {
				err := fmt.Errorf("data device after the commit of epoch %d (the first %d writes): sector %d holds write %d, want %d", ep, upTo, s, got, want)
				inPlaceErr.Store(&err)
				return
			}
		}
	}
	var nextID atomic.Uint64
	raiseTo := func(a *atomic.Int64, x int64) {
		for {
			cur := a.Load()
			if x <= cur || a.CompareAndSwap(cur, x) {
				return
			}
		}
	}
	world.mu.Lock()
	world.crashAt = r.crashAt
	world.mu.Unlock()

	ctx := context.Background()
	atomicMax := v.Limits().AtomicWriteMax
	if r.faults > 0 {
		v.SetFaultRate(r.faults, r.seed)
	}
	crashed := func() bool {
		world.mu.Lock()
		defer world.mu.Unlock()
		return world.crashed
	}
	var clears atomic.Int64
	sectors := r.volSize / simSector
	var wg sync.WaitGroup
	for g := 0; g < r.workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(r.seed+uint64(g)*7919, 17))
			for i := 0; i < r.opsEach; i++ {
				// Mostly small writes, some spanning several chunks, a
				// few larger than the atomic limit (those may tear
				// between pieces, which the log models).
				var ns int64
				switch x := rng.IntN(100); {
				case x < 60:
					ns = 1 + rng.Int64N(16)
				case x < 90:
					ns = 1 + rng.Int64N(atomicMax/simSector)
				default:
					ns = 1 + rng.Int64N(min(sectors, 2*atomicMax/simSector))
				}
				ns = min(ns, sectors)
				s := rng.Int64N(sectors - ns + 1)
				off, n := s*simSector, ns*simSector
				var idxBefore int64
				var err error
				switch x := rng.IntN(100); {
				case x < 70:
					id := nextID.Add(1)
					p := make([]byte, n)
					for k := int64(0); k < ns; k++ {
						stampSector(p[k*simSector:], id, s+k)
					}
					fua := rng.IntN(10) == 0
					idxBefore = ackedMax.Load()
					err = v.WriteAt(ctx, p, off, fua)
					if err == nil {
						logMu.Lock()
						li := int64(lastIdx[id])
						logMu.Unlock()
						raiseTo(&ackedMax, li)
						if fua || r.wceOff {
							raiseTo(&required, max(li, idxBefore))
						}
					}
				case x < 80:
					err = v.Unmap(ctx, off, n)
				case x < 85:
					err = v.WriteZeroes(ctx, off, n, rng.IntN(2) == 0)
				default:
					idxBefore = ackedMax.Load()
					if err = v.Flush(ctx); err == nil {
						raiseTo(&required, idxBefore)
					}
				}
				if err != nil {
					if errors.Is(err, ErrOutOfRange) || errors.Is(err, ErrClosed) {
						t.Errorf("unexpected error: %v", err)
					}
					if crashed() || r.faults == 0 {
						return
					}
					// An injected fault failed a commit (or a fill):
					// clear it like an operator would and go on.
					if errors.Is(err, ErrReadOnly) || errors.Is(err, ErrMedium) {
						if v.ClearError() == nil {
							clears.Add(1)
						}
					}
				}
			}
		}(g)
	}
	wg.Wait()
	if p := inPlaceErr.Load(); p != nil {
		return res, *p
	}
	world.mu.Lock()
	res.ops = world.ops
	world.mu.Unlock()
	res.clears = int(clears.Load())
	res.chained = int(v.Stats().ChainedEpochs)
	if r.crashAt == 0 {
		// Crash after a final flush: everything must survive.
		v.SetFaultRate(0, 0)
		for range 3 {
			if v.ClearError() == nil {
				break
			}
		}
		idx := ackedMax.Load()
		if err := v.Flush(ctx); err == nil {
			raiseTo(&required, idx)
		} else {
			return res, fmt.Errorf("final flush: %w", err)
		}
		// The live volume must read back every applied write.
		live := make([]byte, r.volSize)
		if err := v.ReadAt(ctx, live, 0); err != nil {
			return res, fmt.Errorf("read live volume: %w", err)
		}
		logMu.Lock()
		_, err := checkPrefix(live, log, len(log))
		logMu.Unlock()
		if err != nil {
			return res, fmt.Errorf("live volume (before the crash): %w", err)
		}
		// And so must the device once the data is committed.
		world.mu.Lock()
		dev := append([]byte(nil), dataDev.durable.data...)
		world.mu.Unlock()
		logMu.Lock()
		_, err = checkPrefix(dev, log, len(log))
		logMu.Unlock()
		if err != nil {
			return res, fmt.Errorf("durable device image after the final flush: %w", err)
		}
	}
	world.crash()
	_ = v.Close() // fails: the devices are gone

	// Recover, crashing recovery itself recCrash times at random points.
	// (Unmaps and zero writes have log entries with id 0: they read as
	// zeroes, like a never-written sector.)
	dataImg, undoImg := dataDev.crashImg, undoDev.crashImg
	var v2 *CachedVolume
	for attempt := 0; ; attempt++ {
		w2 := newSimWorld(r.seed + uint64(attempt) + 1000)
		d2, u2 := w2.newDev(dataImg), w2.newDev(undoImg)
		if attempt < r.recCrash {
			w2.crashAt = 1 + w2.rng.Int64N(8)
		}
		v2, err = OpenDevices(d2, u2, Options{Name: "crash", Cache: NewCache(CacheOptions{Size: r.cacheSize}), FlushInterval: time.Hour, Logger: quietLog})
		if err == nil {
			break
		}
		if !errors.Is(err, errSimCrashed) || attempt >= r.recCrash {
			return res, fmt.Errorf("reopen after crash: %w", err)
		}
		w2.crash()
		dataImg, undoImg = d2.crashImg, u2.crashImg
	}
	defer v2.Close()
	image := make([]byte, r.volSize)
	if err := v2.ReadAt(ctx, image, 0); err != nil {
		return res, fmt.Errorf("read back: %w", err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	res.logLen = len(log)
	res.required = int(required.Load())
	feasible, err := checkPrefix(image, log, res.required+1)
	res.feasible = feasible
	if err != nil {
		if debugCrash {
			for i, e := range log {
				t.Logf("entry %d: off %d (sector %d) n %d (%d sectors) id %d", i, e.off, e.off/simSector, e.n, e.n/simSector, e.id)
			}
		}
		return res, fmt.Errorf("seed %d crashAt %d: %w (log %d entries, required prefix %d)", r.seed, r.crashAt, err, len(log), res.required+1)
	}
	return res, nil
}

func crashParams(rng *rand.Rand, seed uint64) crashRun {
	return crashRun{
		seed:      seed,
		volSize:   int64(64+rng.IntN(448)) * simSector * 8,
		undoSize:  undo.MinSize + int64(rng.IntN(64))*4096,
		cacheSize: int64(64+rng.IntN(256)) * ChunkSize,
		workers:   1 + rng.IntN(4),
		opsEach:   10 + rng.IntN(40),
		recCrash:  rng.IntN(3),
		wceOff:    rng.IntN(5) == 0,
		interval:  time.Duration(1+rng.IntN(20)) * time.Millisecond,
		faults:    []int{0, 0, 0, 30, 300}[rng.IntN(5)],
	}
}

// TestCrashConsistency is the crash simulator: random crash points (300 by
// default, 100 with -short, 30,000 with ANVIL_CRASH_LONG=1 for CI, or
// ANVIL_CRASH_ITERS), each checked exactly, some with injected I/O faults
// whose failed commits are cleared with ClearError before the crash.
// Every run also checks the data device after each commit against the
// writes of the epochs committed so far. ANVIL_CRASH_SEED repeats a run.
func TestCrashConsistency(t *testing.T) {
	iters := 300
	if testing.Short() {
		iters = 100
	}
	if os.Getenv("ANVIL_CRASH_LONG") != "" {
		iters = 30000
	}
	if s := os.Getenv("ANVIL_CRASH_ITERS"); s != "" {
		fmt.Sscan(s, &iters)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	base := rng.Uint64()
	if s := os.Getenv("ANVIL_CRASH_SEED"); s != "" {
		fmt.Sscan(s, &base)
	}
	t.Logf("base seed %d (ANVIL_CRASH_SEED to repeat)", base)
	var lost, total, clears, chained int
	from := 0
	if s := os.Getenv("ANVIL_CRASH_FROM"); s != "" {
		fmt.Sscan(s, &from) // iteration to start at, to repeat a failure
	}
	for i := from; i < from+iters; i++ {
		seed := base + uint64(i)
		prng := rand.New(rand.NewPCG(seed, 2))
		p := crashParams(prng, seed)
		// Calibrate: run the workload without a crash to count its
		// device operations, then crash at a random one of them.
		if i%4 == 0 {
			p.crashAt = 0
		} else {
			p.crashAt = 1 + prng.Int64N(int64(p.workers*p.opsEach)*12)
		}
		res, err := runCrash(t, p)
		if err != nil && !debugCrash {
			t.Logf("params %+v: %v", p, err)
			debugCrash = true
			for range 100 {
				if _, err2 := runCrash(t, p); err2 != nil {
					break
				}
			}
		}
		if err != nil {
			t.Fatalf("iteration %d: %v", i, err)
		}
		total++
		if p.crashAt == 0 && res.feasible[len(res.feasible)-1].hi-1 != res.logLen {
			t.Fatalf("iteration %d: clean flush then crash lost writes: feasible %v of %d", i, res.feasible, res.logLen)
		}
		if res.feasible[len(res.feasible)-1].hi-1 < res.logLen {
			lost++
		}
		clears += res.clears
		chained += res.chained
	}
	t.Logf("%d crash points checked; %d lost unflushed tails; %d failed commits cleared; %d chained epochs", total, lost, clears, chained)
	if lost == 0 && iters >= 50 {
		t.Error("no crash ever lost an unflushed write: the simulator is not crashing anything")
	}
	if chained == 0 && iters >= 100 {
		t.Error("no epoch was ever chained: that commit path went untested")
	}
	if clears == 0 && iters >= 100 {
		t.Error("no injected fault ever failed a commit: the ClearError path went untested")
	}
}

// TestCheckPrefixDetectsViolations makes sure the checker itself can fail.
func TestCheckPrefixDetectsViolations(t *testing.T) {
	img := make([]byte, 4*simSector)
	log := []logEntry{{0, 2 * simSector, 1, 0}, {simSector, 2 * simSector, 2, 0}}
	put := func(s int64, id uint64) { stampSector(img[s*simSector:], id, s) }
	// State after both writes: sectors 0=1, 1=2, 2=2.
	put(0, 1)
	put(1, 2)
	put(2, 2)
	if _, err := checkPrefix(img, log, 2); err != nil {
		t.Fatalf("valid full state rejected: %v", err)
	}
	// Write 2 torn: sector 1 from write 2, sector 2 not written.
	clear(img[2*simSector : 3*simSector])
	if _, err := checkPrefix(img, log, 0); err == nil {
		t.Fatal("torn write accepted")
	}
	// Only write 2, not write 1: not a prefix.
	clear(img)
	put(1, 2)
	put(2, 2)
	if _, err := checkPrefix(img, log, 0); err == nil {
		t.Fatal("non-prefix state accepted")
	}
	// Empty state is a prefix, but not when entry 0 was required.
	clear(img)
	if _, err := checkPrefix(img, log, 0); err != nil {
		t.Fatalf("empty prefix rejected: %v", err)
	}
	if _, err := checkPrefix(img, log, 1); err == nil {
		t.Fatal("lost flushed write accepted")
	}
	// Corrupt sector.
	put(0, 1)
	img[100] ^= 1
	if _, err := checkPrefix(img, log, 0); err == nil {
		t.Fatal("corrupt sector accepted")
	}
}

var quietLog = slog.New(slog.DiscardHandler)

var debugCrash = os.Getenv("ANVIL_CRASH_DEBUG") != ""
