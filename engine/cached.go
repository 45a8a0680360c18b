package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/engine/mmap"
	"github.com/anvilproject/anvil/engine/undo"
)

// Backend selects how a CachedVolume reaches its data.
type Backend string

// Backends.
const (
	// BackendFile uses pread/pwrite on a sparse raw image file.
	BackendFile Backend = "file"
	// BackendMmap maps the raw image file through an LRU of windows.
	BackendMmap Backend = "mmap"
	// BackendBlock uses a raw block device.
	BackendBlock Backend = "block"
)

// Options configure Open and OpenDevices. The zero value works for an
// existing file-backed volume.
type Options struct {
	// Name is the catalog name Volume.Name reports.
	Name string
	// Size, when the data file does not exist yet, is the size it is
	// created with (sparse). For an existing file or device its size wins.
	Size int64
	// BlockSize is the logical block size, 512 (default) or 4096.
	BlockSize int
	// Backend is the data backend; default BackendFile.
	Backend Backend
	// UndoPath is the undo FIFO file; default path + ".undo". Required for
	// BackendBlock.
	UndoPath string
	// UndoSize is the size of a new undo FIFO; default undo.DefaultSize
	// (256 MiB). It bounds the epoch size and so AtomicWriteMax.
	UndoSize int64
	// Cache is the shared buffer cache; default DefaultCache().
	Cache *Cache
	// FlushInterval is the background commit period; default 5 s.
	FlushInterval time.Duration
	// WriteCacheOff starts the volume with the volatile write cache off
	// (WCE=0): every write commits before it is acknowledged.
	WriteCacheOff bool
	// ReadOnly refuses writes.
	ReadOnly bool
	// DisableGroupCommit makes each WCE=0 write commit alone (benchmarks).
	DisableGroupCommit bool
	// MmapWindow and MmapWindows size BackendMmap's window LRU; defaults
	// mmap.DefaultWindowSize and mmap.DefaultWindows.
	MmapWindow  int64
	MmapWindows int
	// FaultInjection wraps the data device in a FaultDevice, so that
	// SetFaultRate and SetFaultNoSpace can fail its I/O (tests, and the
	// API's fault injection for testing initiators). Without it the
	// engine calls the device directly and those two do nothing.
	FaultInjection bool
	// Logger receives engine events; default slog.Default().
	Logger *slog.Logger
}

// logger is opts.Logger, or slog.Default() when that is nil.
func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// CachedVolume is the crash-consistent engine volume: a write-ordering view
// of a raw data Device through the shared buffer cache, made crash consistent
// by an undo FIFO. It implements Volume and Resizer.
//
// Writes land in cache buffers and join the open epoch. Committing an epoch
// writes, each step durable before the next, (1) undo records with the old
// contents of every chunk the epoch changes, (2) the chunks in place, and
// (3) the FIFO header advanced past the epoch. Recovery at open rolls back an
// epoch that did not reach step 3, so after a crash the volume holds the state
// after some prefix of the acknowledged writes, including every write
// acknowledged before the last completed Flush. A write of up to
// Limits().AtomicWriteMax bytes always falls into one epoch and is never
// torn.
type CachedVolume struct {
	name  string
	bs    int
	cache *Cache
	log   *slog.Logger

	data Device
	udev Device
	// faults is data's FaultDevice when Options.FaultInjection asked for
	// one, else nil.
	faults *FaultDevice
	fifo   *undo.FIFO // guarded by commitMu
	size   atomic.Int64
	limit  Limits
	// maxEpochChunks bounds the chunks of one epoch to half the FIFO's epoch
	// budget, so that the committer can chain two epochs in one ring.
	maxEpochChunks int64

	wce      atomic.Bool
	opRO     atomic.Bool
	degraded string                // why recovery left the volume read-only; set at open
	failed   atomic.Pointer[error] // commit failure that froze the volume
	closed   atomic.Bool
	noGroup  bool
	serialMu sync.Mutex // DisableGroupCommit: one write+commit at a time

	// mu guards the chunk table, the buffers and the epoch. Take it
	// exclusively with lock and unlock, never with mu.Lock: those keep
	// wseq, which the lock-free cache-hit path (readHit) checks, odd for as
	// long as the lock is held.
	mu          sync.RWMutex
	wseq        atomic.Uint64 // odd while mu is held exclusively
	chunks      chunkTable
	dirty       []*buf       // the open epoch's buffers, in the order they joined it
	epoch       uint64       // open epoch
	epochChunks int64        // chunks in the open epoch
	dirtyBytes  int64        // dirty + frozen data bytes
	pinned      bool         // failed: dirtyBytes not counted in the cache
	evictGen    uint64       // bumped whenever a buffer leaves chunks
	lastRead    atomic.Int64 // end of the latest read that missed, for readahead
	raBusy      atomic.Bool  // a background readahead is running
	raFlight    atomic.Pointer[raFlight]
	raWG        sync.WaitGroup // background readaheads; Close waits for them
	applyHook   func(kind writeKind, off, n int64, p []byte)
	resizeHook  func() // tests: runs in Resize between its commit and its lock
	// fillHook, for tests, runs in apply at the start of each attempt to
	// fill partially covered chunks (read false) and after its device
	// reads (read true), before the volume lock is taken.
	fillHook func(attempt int, read bool)
	// commitHook, for tests, runs once epoch ep is durable, before its
	// waiters are woken.
	commitHook func(ep uint64)

	commitMu sync.Mutex
	durable  atomic.Uint64 // newest committed epoch
	pend     *chained      // guarded by commitMu
	// queue holds cut epochs waiting for their commit, oldest first:
	// full epochs that writers cut, and epochs whose commit failed, kept
	// whole for the retry after ClearError. Guarded by mu.
	queue []cutEpoch

	gcMu       sync.Mutex
	gcCond     *sync.Cond // on gcMu: a group commit finished
	committing bool       // a syncTo caller is committing

	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	interval  time.Duration

	st volStats
}

var (
	_ Volume        = (*CachedVolume)(nil)
	_ Resizer       = (*CachedVolume)(nil)
	_ StatsReporter = (*CachedVolume)(nil)
)

// Open opens the volume whose raw data lives at path (creating a sparse file
// of opts.Size bytes if there is none), with its undo FIFO beside it (made
// if missing: an existing raw image can be imported as is), and recovers
// from a crash if the FIFO holds an uncommitted epoch.
//
// On disk a volume is two files: the raw image at path, which is always a
// plain image an operator can copy or loop-mount once the volume is closed,
// and the undo FIFO at opts.UndoPath (default path + ".undo", sparse, up to
// opts.UndoSize bytes). Deleting a volume means deleting both; copying a
// volume that was not closed cleanly needs both, or a recovery first (open
// and close it).
//
// Typical use, with one cache for the whole daemon:
//
//	cache := engine.NewCache(engine.CacheOptions{Size: cfgCacheSize})
//	v, err := engine.Open(path, engine.Options{Name: name, Size: size,
//		BlockSize: 512, Backend: engine.BackendFile, Cache: cache})
func Open(path string, opts Options) (*CachedVolume, error) {
	if opts.Backend == "" {
		opts.Backend = BackendFile
	}
	undoPath := opts.UndoPath
	if undoPath == "" {
		if opts.Backend == BackendBlock {
			return nil, errors.New("engine: a block-device volume needs Options.UndoPath")
		}
		undoPath = path + ".undo"
	}
	var data Device
	var err error
	create := false
	if _, serr := os.Stat(path); errors.Is(serr, os.ErrNotExist) && opts.Backend != BackendBlock {
		if opts.Size <= 0 {
			return nil, fmt.Errorf("engine: create %s: no size given", path)
		}
		create = true
	}
	switch opts.Backend {
	case BackendFile:
		data, err = OpenFileDevice(path, create, opts.Size)
	case BackendMmap:
		var fd *FileDevice
		if fd, err = OpenFileDevice(path, create, opts.Size); err == nil {
			fd.Close()
			data, err = mmap.Open(path, mmap.Options{WindowSize: opts.MmapWindow, Windows: opts.MmapWindows})
		}
	case BackendBlock:
		data, err = OpenBlockDevice(path)
	default:
		err = fmt.Errorf("engine: unknown backend %q", opts.Backend)
	}
	if err != nil {
		return nil, err
	}
	usize := opts.UndoSize
	if usize <= 0 {
		usize = undo.DefaultSize
	}
	if create {
		// A FIFO left over from an earlier volume at this path must not
		// "recover" records onto the new, empty image.
		if err := os.Remove(undoPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			data.Close()
			return nil, fmt.Errorf("engine: remove stale undo FIFO %s: %w", undoPath, err)
		}
	}
	udev, err := OpenFileDevice(undoPath, true, usize)
	if err != nil {
		data.Close()
		return nil, err
	}
	if opts.Name == "" {
		opts.Name = path
	}
	// Undo records are written once, synced at once and read only by
	// recovery: keep them out of the page cache where the file system
	// allows it.
	if err := udev.UseDirectWrites(); err != nil {
		opts.logger().Debug("undo FIFO uses the page cache", "volume", opts.Name, "reason", err)
	}
	v, err := OpenDevices(data, udev, opts)
	if err != nil {
		data.Close()
		udev.Close()
		return nil, err
	}
	return v, nil
}

// OpenDevices opens a volume over an already open data device and undo FIFO
// device. An undo device whose header area is all zeroes is formatted; one
// with a corrupt header is refused, because formatting it could throw away
// the records that recovery needs. On success the volume owns both devices.
func OpenDevices(data, undoDev Device, opts Options) (*CachedVolume, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 512
	}
	if opts.BlockSize != 512 && opts.BlockSize != 4096 {
		return nil, fmt.Errorf("engine: block size %d is not 512 or 4096", opts.BlockSize)
	}
	if data.Size()%int64(opts.BlockSize) != 0 {
		return nil, fmt.Errorf("engine: data size %d is not a multiple of the block size %d", data.Size(), opts.BlockSize)
	}
	if opts.Cache == nil {
		opts.Cache = DefaultCache()
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 5 * time.Second
	}
	log := opts.logger().With("volume", opts.Name)

	fifo, err := undo.Open(undoDev)
	if errors.Is(err, undo.ErrNoHeader) {
		var blank bool
		if blank, err = headerAreaBlank(undoDev); err == nil {
			if !blank {
				return nil, fmt.Errorf("engine: undo FIFO of %s is corrupt; refusing to format it", opts.Name)
			}
			fifo, err = undo.Create(undoDev)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("engine: open undo FIFO: %w", err)
	}
	// dev is what the volume does its data I/O through: data itself, or
	// data behind the fault injector. Capability checks (Deallocator)
	// look at data.
	dev, faults := data, (*FaultDevice)(nil)
	if opts.FaultInjection {
		faults = NewFaultDevice(data)
		dev = faults
	}
	res, err := fifo.Recover(dev)
	var degraded string
	if errors.Is(err, undo.ErrUncertain) {
		// Rolling back might destroy an acknowledged epoch, keeping it
		// might keep a torn one: serve the data read-only as it is and
		// let an operator decide.
		degraded = err.Error()
		log.Error("undo recovery is uncertain; volume is degraded and read-only", "reason", degraded)
	} else if err != nil {
		return nil, fmt.Errorf("engine: recover %s: %w", opts.Name, err)
	}
	if res.Records > 0 {
		log.Warn("rolled back uncommitted epoch", "epoch", res.Epoch, "records", res.Records, "bytes", res.Bytes)
	}
	if res.Kept > 0 {
		log.Warn("kept epochs whose data was complete in place but whose commit was not recorded", "epochs", res.Kept)
	}

	v := &CachedVolume{
		name:     opts.Name,
		bs:       opts.BlockSize,
		cache:    opts.Cache,
		log:      log,
		data:     dev,
		udev:     undoDev,
		faults:   faults,
		fifo:     fifo,
		noGroup:  opts.DisableGroupCommit,
		degraded: degraded,
		epoch:    fifo.Committed() + 1,
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		interval: opts.FlushInterval,
	}
	v.gcCond = sync.NewCond(&v.gcMu)
	v.size.Store(data.Size())
	v.durable.Store(fifo.Committed())
	v.wce.Store(!opts.WriteCacheOff)
	v.opRO.Store(opts.ReadOnly)

	perChunk := undo.RecordSize(ChunkSize)
	v.maxEpochChunks = fifo.EpochBudget() / 2 / perChunk
	// Also keep an epoch at most half the dirty limit, so that the epoch
	// being committed and the one filling always fit in it together.
	v.maxEpochChunks = min(v.maxEpochChunks, v.cache.dirtyLimit/2/ChunkSize)
	if v.maxEpochChunks < 4 {
		return nil, fmt.Errorf("engine: undo FIFO of %d bytes is too small", undoDev.Size())
	}
	atomicMax := min((v.maxEpochChunks-1)*ChunkSize, 16<<20)
	v.limit = Limits{
		AtomicWriteMax: atomicMax,
		// Any transfer size works (writes past AtomicWriteMax are split
		// into atomic pieces), like the plain engine.
		OptimalTransfer: 1 << 20,
		MaxUnmap:        1 << 30,
	}
	if d, ok := data.(Deallocator); ok && !d.Deallocates() {
		// Unmapping would only write zeroes: not thin provisioning.
		v.limit.MaxUnmap = 0
	}
	v.cache.register(v)
	go v.flusher()
	return v, nil
}

func headerAreaBlank(d Device) (bool, error) {
	b := make([]byte, undo.RingOffset)
	if _, err := d.ReadAt(b, 0); err != nil {
		return false, err
	}
	for _, c := range b {
		if c != 0 {
			return false, nil
		}
	}
	return true, nil
}

// Name implements Volume.
func (v *CachedVolume) Name() string { return v.name }

// Size implements Volume.
func (v *CachedVolume) Size() int64 { return v.size.Load() }

// BlockSize implements Volume.
func (v *CachedVolume) BlockSize() int { return v.bs }

// Limits implements Volume. AtomicWriteMax is derived from the undo FIFO
// size: a write up to it always fits in one epoch.
func (v *CachedVolume) Limits() Limits { return v.limit }

// WriteCache implements Volume.
func (v *CachedVolume) WriteCache() bool { return v.wce.Load() }

// SetWriteCache implements Volume. Turning the cache off flushes first.
func (v *CachedVolume) SetWriteCache(on bool) error {
	if !on {
		if err := v.flush(); err != nil {
			return err
		}
	}
	v.wce.Store(on)
	return nil
}

// ReadOnly implements Volume: true when an operator set it, a failed
// commit froze the volume or recovery left it degraded.
func (v *CachedVolume) ReadOnly() bool {
	return v.opRO.Load() || v.failed.Load() != nil || v.degraded != ""
}

// Degraded says why recovery at open left the volume read-only (it could
// not tell whether the newest epoch was committed), or "" when it did not.
// The data is served as the device holds it; nothing is written to the
// data device or the undo FIFO until the volume is reopened.
func (v *CachedVolume) Degraded() string { return v.degraded }

// SetReadOnly sets the operator's read-only flag.
func (v *CachedVolume) SetReadOnly(ro bool) { v.opRO.Store(ro) }

// Err reports the commit failure that froze the volume, or nil.
func (v *CachedVolume) Err() error {
	if p := v.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// SetFaultRate makes n of every 10,000 I/Os on the data device fail with
// EIO, chosen deterministically from seed; n == 0 turns it off. It needs a
// volume opened with Options.FaultInjection; on any other it only logs.
func (v *CachedVolume) SetFaultRate(n int, seed uint64) {
	if v.faults == nil {
		if n > 0 {
			v.log.Error("fault injection asked for on a volume opened without it", "rate_per_10000", n)
		}
		return
	}
	v.faults.SetFaultRate(n, seed)
}

// SetFaultNoSpace makes the injected faults of SetFaultRate ENOSPC on
// writes (a full file system) instead of EIO on every kind of I/O.
func (v *CachedVolume) SetFaultNoSpace(on bool) {
	if v.faults != nil {
		v.faults.SetFaultNoSpace(on)
	}
}

// injectedFaults is how many I/Os fault injection has failed.
func (v *CachedVolume) injectedFaults() uint64 {
	if v.faults == nil {
		return 0
	}
	return v.faults.Injected()
}

// Stats implements StatsReporter.
func (v *CachedVolume) Stats() Stats {
	v.mu.RLock()
	dirty := v.dirtyBytes
	v.mu.RUnlock()
	s := &v.st
	errBytes := s.readErrBytes.Load() // first: every failed read is already in reads
	readErrs := s.readErrs.Load()
	reads, readBytes := s.reads.load()
	writes, writeErrs := s.writes.Load(), s.writeErrs.Load()
	unmaps, unmapErrs := s.unmaps.Load(), s.unmapErrs.Load()
	return Stats{
		Read: OpStats{Ops: reads + s.readRefused.Load(), Bytes: readBytes - errBytes, Errors: readErrs,
			Latency: s.readLat.snapshot(readSampleEvery)},
		Write: OpStats{Ops: writes + writeErrs, Bytes: s.writeBytes.Load(), Errors: writeErrs,
			Latency: s.writeLat.snapshot(1)},
		Flush: OpStats{Ops: s.flushes.Load(), Errors: s.flushErrs.Load(), Latency: s.flushLat.snapshot(1)},
		Unmap: OpStats{Ops: unmaps + unmapErrs, Bytes: s.unmapBytes.Load(), Errors: unmapErrs,
			Latency: s.unmapLat.snapshot(1)},
		Epochs: s.epochs.Load(), UndoBytes: s.undoBytes.Load(),
		CacheHits: reads + s.extraLookups.Load() - s.misses.Load(), CacheMisses: s.misses.Load(),
		CommitErrors: s.commitErrors.Load(), DirtyBytes: dirty, ChainedEpochs: s.chained.Load(),
		InjectedFaults: v.injectedFaults(),
		CommitLatency:  s.commitLat.snapshot(1),
	}
}

// check validates a request range.
func (v *CachedVolume) check(off, n int64) error {
	if v.closed.Load() {
		return ErrClosed
	}
	bs := int64(v.bs)
	if off < 0 || n < 0 || off%bs != 0 || n%bs != 0 || off+n > v.size.Load() || off+n < off {
		return fmt.Errorf("engine: %s [%d,+%d): %w", v.name, off, n, ErrOutOfRange)
	}
	return nil
}

func (v *CachedVolume) writable() error {
	if v.closed.Load() {
		return ErrClosed
	}
	if v.opRO.Load() {
		return fmt.Errorf("engine: %s: %w", v.name, ErrReadOnly)
	}
	if v.degraded != "" {
		return fmt.Errorf("engine: %s degraded (%s): %w", v.name, v.degraded, ErrReadOnly)
	}
	if p := v.failed.Load(); p != nil {
		if IsNoSpace(*p) {
			return fmt.Errorf("engine: %s frozen after a commit ran out of space (%v): %w", v.name, *p, ErrNoSpace)
		}
		return fmt.Errorf("engine: %s frozen after a failed commit (%v): %w", v.name, *p, ErrReadOnly)
	}
	return nil
}

// lock takes v.mu exclusively and makes wseq odd, so that a concurrent
// readHit, which takes no lock, knows its copy may be inconsistent.
func (v *CachedVolume) lock() {
	v.mu.Lock()
	v.wseq.Add(1)
}

// unlock makes wseq even again and releases v.mu.
func (v *CachedVolume) unlock() {
	v.wseq.Add(1)
	v.mu.Unlock()
}

// chunkLen is how many bytes of chunk k lie inside the volume.
func (v *CachedVolume) chunkLen(k int64) int {
	return int(min(ChunkSize, v.size.Load()-k*ChunkSize))
}

// ReadAt implements Volume. Cached chunks are copied from the cache; the
// rest are read from the device in contiguous runs and cached clean.
func (v *CachedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		v.st.readRefused.Add(1)
		v.st.readErrs.Add(1)
		return err
	}
	if len(p) == 0 {
		return nil
	}
	// Reading the clock costs more than a cache hit's bookkeeping on a VM
	// (tens of ns), so read latency is sampled (see readSampleEvery).
	var start time.Time
	// The read and its bytes are counted up front, with one atomic add; a
	// failed read's bytes are taken back in readErrBytes.
	sampled := v.st.reads.add(len(p))&(readSampleEvery-1) == 0
	if sampled {
		start = time.Now()
	}
	first, last := off/ChunkSize, (off+int64(len(p))-1)/ChunkSize
	if last > first {
		v.st.extraLookups.Add(uint64(last - first)) // the first is counted by reads
	}
	if v.readHit(p, off, first, last) {
		if sampled {
			v.st.readLat.observe(time.Since(start))
		}
		return nil
	}
	// Pass 1: copy what the cache has, note the missing chunks and whether
	// a readahead mark was reached. A chunk that a background readahead is
	// reading right now is waited for, not read twice.
	var missing []int64
	marked := false
	var gen uint64
	for {
		missing = missing[:0]
		var flight *raFlight
		v.mu.RLock()
		gen = v.evictGen
		for k := first; k <= last; k++ {
			lo, hi := chunkSpan(k, off, int64(len(p)))
			dst := p[k*ChunkSize+lo-off : k*ChunkSize+hi-off]
			if b := v.chunks.get(k); b != nil {
				if !b.ref.Load() {
					b.ref.Store(true) // skip the store (and cache-line write) when set
				}
				if b.raMark.Load() {
					b.raMark.Store(false)
					marked = true
				}
				if d := b.data.Load(); d == nil {
					clear(dst)
				} else {
					copy(dst, d[lo:hi])
				}
				continue
			}
			if f := v.raFlight.Load(); f != nil && k >= f.from && k < f.to {
				flight = f
			}
			missing = append(missing, k)
		}
		v.mu.RUnlock()
		if flight == nil {
			break
		}
		<-flight.done
	}
	if len(missing) > 0 {
		v.st.misses.Add(uint64(len(missing)))
	}
	// Readahead, so that a sequential reader pays one device read per
	// window instead of one per request. It starts when a read that begins
	// where the previous missing read ended misses at its tail, and goes on
	// when a read reaches the mark left halfway through the last window,
	// before the reader runs out of cached chunks. Cache hits otherwise do
	// no readahead bookkeeping. (The chunks are checked absent after gen
	// was taken; fillRun caches them only if nothing left the cache since,
	// so they cannot be stale.)
	//
	// A window started from a mark, when the read itself hit, is filled
	// in the background (one such fill per volume at a time): the reader
	// returns at once and the next window's device read overlaps with the
	// transfer of the data just read.
	markAt := int64(-1)
	if marked || len(missing) > 0 {
		end := off + int64(len(p))
		seq := v.lastRead.Swap(end) == off && len(missing) > 0 && missing[len(missing)-1] == last
		if seq || marked {
			async := len(missing) == 0 && v.raBusy.CompareAndSwap(false, true)
			limit := (v.size.Load() - 1) / ChunkSize
			var ahead []int64
			v.mu.RLock()
			k := last + 1
			for marked && k <= min(last+readAheadChunks, limit) && v.chunks.get(k) != nil {
				k++ // the rest of the current window
			}
			from := k
			for ; k < from+readAheadChunks && k <= limit && v.chunks.get(k) == nil; k++ {
				ahead = append(ahead, k)
			}
			if k > from {
				// Halfway, or on the last chunk of a window cut short by
				// a cached chunk (the next read past it skips those).
				markAt = from + min(readAheadChunks/2, k-from-1)
			}
			if async && len(ahead) > 0 && !v.closed.Load() {
				// Close waits for it (see raWG).
				f := &raFlight{from: ahead[0], to: ahead[len(ahead)-1] + 1, done: make(chan struct{})}
				v.raFlight.Store(f)
				v.raWG.Add(1)
				go v.readAhead(f, ahead, gen, markAt)
				ahead = nil
			} else if async {
				v.raBusy.Store(false)
			}
			v.mu.RUnlock()
			missing = append(missing, ahead...)
		}
	}
	// Pass 2: read the missing chunks in contiguous runs.
	for i := 0; i < len(missing); {
		j := i + 1
		for j < len(missing) && missing[j] == missing[j-1]+1 && j-i < 256 {
			j++
		}
		if err := v.fillRun(p, off, missing[i:j], gen, markAt); err != nil {
			v.st.readErrBytes.Add(uint64(len(p)))
			v.st.readErrs.Add(1)
			if sampled {
				v.st.readLat.observe(time.Since(start))
			}
			return err
		}
		i = j
	}
	if sampled {
		v.st.readLat.observe(time.Since(start))
	}
	return nil
}

// readHit serves a read that the cache holds whole without taking v.mu,
// and reports whether it did; when it did not, the caller reads again the
// locked way, and whatever readHit left in p is overwritten.
//
// It is the reader side of a sequence lock. Every change to the chunk
// table, to a buffer's data pointer or to its contents happens with v.mu
// held exclusively, and lock and unlock keep wseq odd for as long as that
// is. readHit samples an even wseq, copies the chunks, and accepts the copy
// only if wseq still holds the same value afterwards: then no writer ran
// in between, so the copy is exactly what a reader holding v.mu would have
// seen, consistent across all the chunks of the read. Buffer memory is
// never unmapped (chunkSlab keeps it), so copying from an array that a
// writer freed and reused meanwhile reads stale bytes, never faults, and
// the recheck rejects them.
//
// Saving the read lock's two atomic read-modify-writes is worth the
// bother: next to copying a 4 KiB cache hit they are not small, and every
// reader of a volume contends on them. A read that reaches a readahead
// mark takes the locked path, which starts the next window.
func (v *CachedVolume) readHit(p []byte, off, first, last int64) bool {
	seq := v.wseq.Load()
	if seq&1 != 0 {
		return false
	}
	// Look before copying: a read that will fall back to the locked path
	// (a chunk missing, or a readahead mark to act on) should not first
	// copy the chunks in front of it.
	for k := first; k <= last; k++ {
		if b := v.chunks.get(k); b == nil || b.raMark.Load() {
			return false
		}
	}
	for k := first; k <= last; k++ {
		b := v.chunks.get(k)
		if b == nil {
			return false
		}
		if !b.ref.Load() {
			b.ref.Store(true) // a hint for the evictor; harmless if stale
		}
		lo, hi := chunkSpan(k, off, int64(len(p)))
		dst := p[k*ChunkSize+lo-off : k*ChunkSize+hi-off]
		if d := b.data.Load(); d == nil {
			clear(dst)
		} else {
			copy(dst, d[lo:hi])
		}
	}
	return seqAfterReads(&v.wseq) == seq
}

// readAhead fills the contiguous chunks ks in the background and marks
// chunk markAt. A failure is only logged (by readErr): the reader that
// reaches those chunks reads them itself and gets the error.
func (v *CachedVolume) readAhead(f *raFlight, ks []int64, gen uint64, markAt int64) {
	defer v.raWG.Done()
	_ = v.fillRun(nil, ks[0]*ChunkSize, ks, gen, markAt)
	v.raFlight.Store(nil)
	v.raBusy.Store(false)
	close(f.done)
}

// raFlight is a background readahead of chunks [from, to); done is closed
// when its chunks are cached (or it gave up).
type raFlight struct {
	from, to int64
	done     chan struct{}
}

// readAheadChunks is how far a sequential read fills ahead (512 KiB).
const readAheadChunks = 128

// chunkSpan is the part [lo, hi) of chunk k that [off, off+n) covers.
func chunkSpan(k, off, n int64) (lo, hi int64) {
	base := k * ChunkSize
	lo = max(off, base) - base
	hi = min(off+n, base+ChunkSize) - base
	return lo, hi
}

// fillRun reads the contiguous chunks ks from the device, copies the
// requested part into p, and caches them clean unless a buffer left the
// cache since gen (then the device copy might be older than one that was
// cached and evicted meanwhile, so it is returned but not cached). The
// buffer of chunk markAt, if cached here, carries the readahead mark.
func (v *CachedVolume) fillRun(p []byte, off int64, ks []int64, gen uint64, markAt int64) error {
	n := int64(len(ks))
	v.cache.reserve(n * ChunkSize)
	bufs := make([]*[ChunkSize]byte, n)
	for i := range bufs {
		bufs[i] = v.cache.allocNoZero()
	}
	if err := v.readChunks(ks[0], bufs); err != nil {
		for _, d := range bufs {
			v.cache.free(d)
		}
		return err
	}
	for i, k := range ks {
		if k*ChunkSize >= off+int64(len(p)) {
			break // readahead: cached only
		}
		lo, hi := chunkSpan(k, off, int64(len(p)))
		copy(p[k*ChunkSize+lo-off:k*ChunkSize+hi-off], bufs[i][lo:hi])
	}
	var added []*buf
	v.lock()
	for i, k := range ks {
		if v.evictGen == gen && v.chunks.get(k) == nil {
			b := &buf{vol: v, key: k}
			b.data.Store(bufs[i])
			if k == markAt {
				b.raMark.Store(true)
			}
			v.chunks.set(k, b)
			added = append(added, b)
			bufs[i] = nil
		}
	}
	v.unlock()
	for _, d := range bufs {
		if d != nil {
			v.cache.free(d)
		}
	}
	v.cache.track(added)
	return nil
}

// readChunks reads consecutive chunks starting at k into bufs.
func (v *CachedVolume) readChunks(k int64, bufs []*[ChunkSize]byte) error {
	off := k * ChunkSize
	total := min(int64(len(bufs))*ChunkSize, v.size.Load()-off)
	if len(bufs) == 1 {
		_, err := v.data.ReadAt(bufs[0][:total], off)
		return v.readErr(err, off, total)
	}
	iov := make([][]byte, 0, len(bufs))
	for i, d := range bufs {
		n := min(ChunkSize, total-int64(i)*ChunkSize)
		if n <= 0 {
			clear(d[:]) // past the end of a volume being shrunk
			continue
		}
		if n < ChunkSize {
			clear(d[n:])
		}
		iov = append(iov, d[:n])
	}
	return v.readErr(readAtv(v.data, iov, off), off, total)
}

func (v *CachedVolume) readErr(err error, off, n int64) error {
	if err == nil {
		return nil
	}
	v.log.Error("backing read failed", "off", off, "len", n, "err", err)
	return fmt.Errorf("engine: %s read [%d,+%d): %v: %w", v.name, off, n, err, ErrMedium)
}

// writeKind says what a write does to its range.
type writeKind uint8

const (
	kindData  writeKind = iota // copy p into the range
	kindZero                   // make the range read zeroes, keep it allocated
	kindUnmap                  // make the range read zeroes and deallocate it
)

// WriteAt implements Volume. Writes up to AtomicWriteMax are applied to the
// cache atomically with respect to epoch boundaries; larger writes are split.
func (v *CachedVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.check(off, int64(len(p))); err != nil {
		v.st.writeErrs.Add(1)
		return err
	}
	if err := v.writable(); err != nil {
		v.st.writeErrs.Add(1)
		return err
	}
	start := time.Now()
	err := v.write(ctx, kindData, p, off, int64(len(p)), fua)
	if err != nil {
		v.st.writeErrs.Add(1)
	} else {
		v.st.writes.Add(1)
		v.st.writeBytes.Add(uint64(len(p)))
	}
	v.st.writeLat.observe(time.Since(start))
	return err
}

// WriteZeroes implements Volume. With unmap whole chunks become holes.
func (v *CachedVolume) WriteZeroes(ctx context.Context, off, n int64, unmap bool) error {
	if err := v.check(off, n); err != nil {
		v.st.unmapErrs.Add(1)
		return err
	}
	if err := v.writable(); err != nil {
		v.st.unmapErrs.Add(1)
		return err
	}
	kind := kindZero
	if unmap {
		kind = kindUnmap
	}
	start := time.Now()
	err := v.write(ctx, kind, nil, off, n, false)
	if err != nil {
		v.st.unmapErrs.Add(1)
	} else {
		v.st.unmaps.Add(1)
		v.st.unmapBytes.Add(uint64(n))
	}
	v.st.unmapLat.observe(time.Since(start))
	return err
}

// Unmap implements Volume.
func (v *CachedVolume) Unmap(ctx context.Context, off, n int64) error {
	return v.WriteZeroes(ctx, off, n, true)
}

// write applies a write in pieces of at most AtomicWriteMax, then commits
// when the write cache is off or fua asks for it.
func (v *CachedVolume) write(ctx context.Context, kind writeKind, p []byte, off, n int64, fua bool) error {
	if v.noGroup && !v.wce.Load() {
		v.serialMu.Lock()
		defer v.serialMu.Unlock()
	}
	var ep uint64
	for done := int64(0); done < n; {
		k := min(n-done, v.limit.AtomicWriteMax)
		var piece []byte
		if p != nil {
			piece = p[done : done+k]
		}
		var err error
		if ep, err = v.apply(ctx, kind, piece, off+done, k); err != nil {
			return err
		}
		done += k
	}
	if fua || !v.wce.Load() {
		return v.syncTo(ep)
	}
	return nil
}

// apply puts one piece into the cache as part of the open epoch and returns
// that epoch.
func (v *CachedVolume) apply(ctx context.Context, kind writeKind, p []byte, off, n int64) (uint64, error) {
	first, last := off/ChunkSize, (off+n-1)/ChunkSize
	nch := last - first + 1
	partial := func(k int64) bool {
		lo, hi := chunkSpan(k, off, n)
		return lo != 0 || int(hi) < v.chunkLen(k)
	}
	// Memory this piece may need: one buffer per chunk, except that an
	// unmap only needs buffers for partially covered chunks at its ends.
	need := nch * ChunkSize
	if kind == kindUnmap {
		need = min(nch, 2) * ChunkSize
	} else {
		v.cache.waitDirty(need)
	}
	v.cache.reserve(need)
	reserved := need
	defer func() { v.cache.unreserve(reserved) }()

	var fills map[int64]*[ChunkSize]byte
	defer func() {
		for _, d := range fills {
			v.cache.free(d)
		}
	}()
	for attempt := 0; ; attempt++ {
		// Read the partially covered chunks that are not cached: their
		// untouched bytes must come from the device. Every fill is read
		// after gen was sampled in this same attempt; a fill from an
		// earlier attempt is never kept (see below).
		if v.fillHook != nil {
			v.fillHook(attempt, false)
		}
		v.mu.RLock()
		gen := v.evictGen
		var toFill []int64
		for _, k := range []int64{first, last} {
			if partial(k) && v.chunks.get(k) == nil && fills[k] == nil && (len(toFill) == 0 || toFill[0] != k) {
				toFill = append(toFill, k)
			}
		}
		v.mu.RUnlock()
		for _, k := range toFill {
			// Fills are accounted on their own: freed if unused, kept as
			// the buffer's memory if adopted.
			v.cache.used.Add(ChunkSize)
			d := v.cache.allocNoZero()
			if err := v.readChunks(k, []*[ChunkSize]byte{d}); err != nil {
				v.cache.free(d)
				return 0, err
			}
			if fills == nil {
				fills = map[int64]*[ChunkSize]byte{}
			}
			fills[k] = d
		}
		if v.fillHook != nil {
			v.fillHook(attempt, true)
		}

		v.lock()
		if err := v.writable(); err != nil {
			v.unlock()
			return 0, err
		}
		if v.evictGen != gen {
			// A buffer left the cache since we looked: a fill might be
			// older than a version of its chunk that was cached, written
			// back and evicted meanwhile, and a chunk we found cached
			// might be gone. Drop every fill, including those of chunks
			// cached right now: such a chunk can be evicted again before
			// the next attempt samples gen, and a fill kept across that
			// attempt would then be adopted with the older contents.
			for k, d := range fills {
				delete(fills, k)
				v.cache.free(d)
			}
			stale := false
			for _, k := range []int64{first, last} {
				if partial(k) && v.chunks.get(k) == nil {
					stale = true
				}
			}
			if stale {
				v.unlock()
				continue
			}
		}
		break
	}
	// An open epoch with no room for the piece is cut and queued for the
	// flusher, not waited on: writers wait only for the dirty limit
	// (waitDirty above), so a burst larger than one epoch goes into
	// memory at the speed it arrives, while the flusher commits the
	// queue in order.
	if v.epochChunks > 0 && v.epochChunks+nch > v.maxEpochChunks {
		ep, set := v.cutLocked()
		v.queue = append(v.queue, cutEpoch{ep, set})
		v.kickFlusher()
	}
	// Apply under v.mu: the piece is atomic with respect to epoch cuts and
	// to other writers.
	var added, dropped []*buf
	ep := v.epoch
	for k := first; k <= last; k++ {
		lo, hi := chunkSpan(k, off, n)
		full := !partial(k)
		b := v.chunks.get(k)
		if b != nil && b.frozen {
			// Copy-on-write: the commit owns the frozen version; this
			// write and later ones go to a new version.
			nb := &buf{vol: v, key: k}
			if d := b.data.Load(); d != nil && !(kind == kindUnmap && full) {
				nd := v.cache.allocNoZero()
				*nd = *d
				nb.data.Store(nd)
				reserved -= ChunkSize
				added = append(added, nb)
				v.addDirtyLocked(ChunkSize)
			}
			// The new version is dirty from birth: its contents are not
			// the device's, so it must never be taken for a clean buffer
			// (whose contents would serve as the undo record's old data).
			nb.state.Store(stateDirty)
			v.chunks.set(k, nb)
			b = nb
		}
		if b == nil {
			b = &buf{vol: v, key: k}
			if d := fills[k]; d != nil {
				b.data.Store(d)
				delete(fills, k)
				added = append(added, b)
			}
			v.chunks.set(k, b)
		}
		d := b.data.Load()
		if d != nil && b.state.Load() == stateClean && b.orig == nil {
			// First change to a clean buffer in this epoch: keep its
			// content (the device's) for the undo record, and modify a copy.
			b.orig = d
			v.addDirtyLocked(ChunkSize) // pinned until the commit
			if kind == kindUnmap && full {
				d = nil
				dropped = append(dropped, b)
			} else {
				d = v.cache.allocNoZero()
				reserved -= ChunkSize
				if kind != kindData || !full {
					*d = *b.orig
				}
			}
			b.data.Store(d)
		}
		if kind == kindUnmap && full {
			if d != nil {
				dropped = append(dropped, b)
				if b.state.Load() != stateClean {
					v.addDirtyLocked(-ChunkSize)
				}
				b.data.Store(nil)
				v.cache.free(d)
				d = nil
			}
		} else {
			if d == nil {
				if kind == kindData && full {
					d = v.cache.allocNoZero() // overwritten whole below
				} else {
					d = v.cache.alloc()
				}
				b.data.Store(d)
				reserved -= ChunkSize
				if b.state.Load() != stateClean {
					v.addDirtyLocked(ChunkSize)
				}
				added = append(added, b)
			}
			if kind == kindData {
				copy(d[lo:hi], p[k*ChunkSize+lo-off:k*ChunkSize+hi-off])
			} else {
				clear(d[lo:hi])
			}
		}
		if b.state.Load() != stateDirty {
			b.state.Store(stateDirty)
			if d != nil {
				v.addDirtyLocked(ChunkSize)
			}
		}
		if !b.queued {
			b.queued = true
			v.dirty = append(v.dirty, b)
			v.epochChunks++
		}
	}
	if v.applyHook != nil {
		v.applyHook(kind, off, n, p)
	}
	// Start a background commit once the open epoch holds an eighth of
	// what it may hold (16 MiB with the default FIFO). A streaming writer
	// then fills the next epoch on one CPU while the last one is written
	// out on another, instead of the whole batch waiting for the flush.
	// The count is of distinct chunks, so rewriting a small hot set does
	// not cut epochs any sooner (which would cost more undo records).
	kickNow := v.epochChunks >= v.maxEpochChunks/8
	v.unlock()
	v.cache.untrack(dropped)
	v.cache.track(added)
	if kickNow || v.cache.dirty.Load() >= v.cache.dirtyLimit/2 {
		v.kickFlusher()
	}
	return ep, nil
}

// addDirtyLocked accounts dirty bytes; v.mu is held.
func (v *CachedVolume) addDirtyLocked(n int64) {
	v.dirtyBytes += n
	if !v.pinned {
		v.cache.addDirty(n)
	}
}

// dropClean removes b from the cache if it is still a clean, unfrozen
// buffer of v, and reports whether it did. The evictor calls it with b taken
// off the LRU; a buffer that stays cached goes back on the LRU here, under
// v.mu, so that a buffer leaving the cache concurrently is never put back.
func (v *CachedVolume) dropClean(b *buf) bool {
	v.lock()
	defer v.unlock()
	d := b.data.Load()
	if v.chunks.get(b.key) != b || d == nil {
		return false
	}
	if b.state.Load() != stateClean || b.frozen {
		v.cache.track([]*buf{b})
		return false
	}
	v.chunks.del(b.key)
	v.evictGen++
	b.data.Store(nil)
	v.cache.free(d)
	return true
}

// Mapped implements Volume. Dirty chunks answer from the cache (data is
// mapped, a pending unmap is not); the rest asks the device.
func (v *CachedVolume) Mapped(ctx context.Context, off, n int64) (bool, int64, error) {
	if err := v.check(off, n); err != nil {
		return false, 0, err
	}
	if n == 0 {
		return false, 0, nil
	}
	n = min(n, 64<<20) // bound the chunk scan; callers iterate
	pending := func(k int64) (*buf, bool) {
		b := v.chunks.get(k)
		return b, b != nil && (b.state.Load() == stateDirty || b.frozen)
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	k := off / ChunkSize
	if b, ok := pending(k); ok {
		mapped := b.data.Load() != nil
		end := (k + 1) * ChunkSize
		for end < off+n {
			nb, ok := pending(end / ChunkSize)
			if !ok || (nb.data.Load() != nil) != mapped {
				break
			}
			end += ChunkSize
		}
		return mapped, min(end, off+n) - off, nil
	}
	mapped, length, err := v.data.Mapped(off, n)
	if err != nil {
		return false, 0, fmt.Errorf("engine: %s mapped query: %v: %w", v.name, err, ErrMedium)
	}
	length = max(min(length, n), int64(v.bs))
	// Stop at the first chunk with pending changes.
	for c := k + 1; c*ChunkSize < off+length; c++ {
		if _, ok := pending(c); ok {
			length = c*ChunkSize - off
			break
		}
	}
	// Keep block alignment for the front ends.
	length = max(length/int64(v.bs)*int64(v.bs), int64(v.bs))
	return mapped, length, nil
}

// Flush implements Volume: it commits the open epoch (sharing the commit
// with concurrent flushers) and returns when every write acknowledged before
// the call is durable.
func (v *CachedVolume) Flush(ctx context.Context) error {
	start := time.Now()
	err := v.flush()
	v.st.flushes.Add(1)
	if err != nil {
		v.st.flushErrs.Add(1)
	}
	v.st.flushLat.observe(time.Since(start))
	return err
}

// flush is Flush without counting it, for the engine's own flushes
// (SetWriteCache), which Stats does not report as the caller's.
func (v *CachedVolume) flush() error {
	if v.closed.Load() {
		return ErrClosed
	}
	v.mu.RLock()
	target := v.epoch
	if len(v.dirty) == 0 {
		target--
	}
	v.mu.RUnlock()
	return v.syncTo(target)
}

// ClearError lifts the read-only state a failed commit left: it rolls the
// data device back with the undo FIFO (as recovery at open would) and lets
// the next commits write the failed epochs again, oldest first, before the
// open one.
func (v *CachedVolume) ClearError() error {
	if v.degraded != "" {
		return fmt.Errorf("engine: %s: %s: %w", v.name, v.degraded, ErrDegraded)
	}
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	if v.failed.Load() == nil {
		return nil
	}
	if _, err := v.fifo.Recover(v.data); err != nil {
		return fmt.Errorf("engine: %s: roll back failed epoch: %v: %w", v.name, err, backingErr(err))
	}
	v.lock()
	if v.epoch <= v.fifo.Committed() {
		v.epoch = v.fifo.Committed() + 1
	}
	v.pinned = false
	v.cache.addDirty(v.dirtyBytes)
	v.failed.Store(nil)
	v.unlock()
	v.log.Info("commit error cleared")
	return nil
}

// Resize implements Resizer. It commits everything first, so that the undo
// FIFO never refers past the end; the size change itself is not undo
// protected (it is a metadata operation of the backing file).
func (v *CachedVolume) Resize(ctx context.Context, size int64) error {
	if err := v.writable(); err != nil {
		return err
	}
	if size <= 0 || size%int64(v.bs) != 0 {
		return fmt.Errorf("engine: %s resize to %d: %w", v.name, size, ErrOutOfRange)
	}
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	// Commit everything, then hold off writes while the size changes.
	// Writes that slip in between stay dirty in the open epoch and commit
	// later; if they filled an epoch and queued it, commit again, so that
	// no frozen buffer refers to a range that is about to go.
	for {
		if err := v.commitAll(); err != nil {
			return err
		}
		if v.resizeHook != nil {
			v.resizeHook()
		}
		v.lock()
		if len(v.queue) == 0 {
			break
		}
		v.unlock()
	}
	defer v.unlock()
	if err := v.data.Truncate(size); err != nil {
		return fmt.Errorf("engine: %s resize: %w", v.name, err)
	}
	if err := v.data.Sync(); err != nil {
		return fmt.Errorf("engine: %s resize: %v: %w", v.name, err, ErrMedium)
	}
	// Chunks wholly past a smaller end go, with any writes to them. The
	// chunk the smaller of the two ends falls in stays, but its bytes past
	// that end are cleared: past a new, smaller end they are gone (and must
	// read as zeroes if the volume grows again); past an old end they
	// were never part of the volume, and a buffer filled by a write that
	// reached the old end holds whatever its memory held before.
	var gone []*buf
	v.chunks.each(func(k int64, b *buf) {
		if k*ChunkSize >= size {
			v.chunks.del(k)
			gone = append(gone, b)
		}
	})
	v.dirty = slices.DeleteFunc(v.dirty, func(b *buf) bool { return b.key*ChunkSize >= size })
	v.epochChunks = int64(len(v.dirty))
	if edge := min(v.size.Load(), size); edge%ChunkSize != 0 {
		if b := v.chunks.get(edge / ChunkSize); b != nil {
			tail := edge % ChunkSize
			if d := b.data.Load(); d != nil {
				clear(d[tail:])
			}
			if b.orig != nil {
				clear(b.orig[tail:])
			}
		}
	}
	v.evictGen++
	v.size.Store(size)
	for _, b := range gone {
		if d := b.data.Load(); d != nil {
			if b.state.Load() != stateClean {
				v.addDirtyLocked(-ChunkSize)
			}
			b.data.Store(nil)
			v.cache.free(d)
		}
		if b.orig != nil {
			v.addDirtyLocked(-ChunkSize)
			v.cache.free(b.orig)
			b.orig = nil
		}
	}
	v.cache.untrack(gone)
	return nil
}

// Close implements Volume: it stops the flusher, commits, and releases the
// devices. A volume frozen by a failed commit closes with that error; its
// uncommitted epoch is rolled back at the next open.
func (v *CachedVolume) Close() error {
	var err error
	v.closeOnce.Do(func() {
		close(v.stop)
		<-v.done
		if v.failed.Load() == nil {
			v.commitMu.Lock()
			err = v.commitAll()
			v.commitMu.Unlock()
		} else {
			err = fmt.Errorf("engine: %s closed with unflushed data after a failed commit: %w", v.name, ErrMedium)
		}
		v.closed.Store(true)
		// A reader that decided to start a background readahead did so
		// under v.mu before it could see closed; once we hold v.mu every
		// such readahead is counted in raWG.
		v.lock()
		v.unlock()
		v.raWG.Wait()
		v.lock()
		var all []*buf
		v.chunks.each(func(_ int64, b *buf) { all = append(all, b) })
		// Epochs left in the queue (there are some only after a failed
		// commit) have frozen buffers that no commit owns any more:
		// release them too, cached or replaced.
		var queued []*buf
		for _, f := range v.queue {
			for _, b := range f.set {
				b.frozen = false
				if v.chunks.get(b.key) != b {
					queued = append(queued, b)
				}
			}
		}
		v.queue = nil
		all = append(all, queued...)
		if !v.pinned {
			v.cache.addDirty(-v.dirtyBytes)
		}
		v.dirtyBytes = 0
		v.chunks.reset()
		v.dirty = nil
		v.unlock()
		v.cache.untrack(all)
		for _, b := range all {
			if d := b.data.Load(); d != nil && !b.frozen {
				v.cache.free(d)
			}
			if b.orig != nil && !b.frozen {
				v.cache.free(b.orig)
			}
		}
		v.cache.unregister(v)
		v.cache.wakeDirtyWaiters()
		if e := v.data.Close(); e != nil && err == nil {
			err = e
		}
		if e := v.udev.Close(); e != nil && err == nil {
			err = e
		}
	})
	return err
}
