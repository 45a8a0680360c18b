package engine

import (
	"container/list"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ChunkSize is the size of one cache buffer. Buffers are keyed by
// (volume, offset / ChunkSize); it is also the granularity of undo records.
const ChunkSize = 4096

// Buffer states. A buffer is clean (matches the backing device), dirty
// (holds acknowledged data not yet committed) or in flight, which is a dirty
// buffer frozen by a commit (buf.frozen). Writers never touch a frozen
// buffer; they install a copy instead (copy-on-write).
const (
	stateClean uint32 = iota
	stateDirty
)

// buf is one cache buffer.
type buf struct {
	vol *CachedVolume
	key int64 // chunk index
	// data is nil for a hole buffer: a dirty "this chunk is unmapped" marker
	// that reads as zeroes and commits as a punched hole. It is changed
	// only with vol.mu held exclusively; it is atomic because the lock-free
	// hit path reads it.
	data atomic.Pointer[[ChunkSize]byte]

	// orig, for a dirty buffer that was clean (so equal to the device) when
	// the epoch first changed it, is that clean content, kept for the undo
	// record so the commit need not read it back from the device.
	orig *[ChunkSize]byte

	// Guarded by vol.mu (state is atomic so the evictor can peek).
	state  atomic.Uint32
	frozen bool
	queued bool // in vol.dirty, the open epoch's list

	ref    atomic.Bool   // referenced since the evictor last looked (CLOCK bit)
	raMark atomic.Bool   // a read reaching it starts the next readahead window
	elem   *list.Element // position in Cache.lru; guarded by Cache.mu
}

// Cache is the buffer cache shared by every CachedVolume that uses it. Its
// memory budget bounds clean, dirty and in-flight buffers together; dirty plus
// in-flight bytes are further bounded by the dirty limit, past which writers
// wait for the flushers (backpressure).
type Cache struct {
	budget     int64
	dirtyLimit int64

	used  atomic.Int64 // bytes of buffer memory allocated or reserved
	dirty atomic.Int64 // dirty + in-flight bytes of healthy volumes

	mu   sync.Mutex
	cond *sync.Cond // signalled when dirty bytes drop
	lru  list.List  // data buffers, most recently inserted at the front
	vols map[*CachedVolume]struct{}
}

// chunkSlab is shared by every Cache in the process, so that memory one
// cache frees (or a closed test cache leaves behind) serves the others.
var chunkSlab slab

// slab hands out chunk arrays carved from large anonymous mappings that
// are outside the Go heap (no GC cost for a cache of many GiB) and advised
// to use transparent huge pages, so cache hits do not pay a TLB miss per
// 4 KiB buffer. Memory, once touched, stays with the process for reuse.
type slab struct {
	mu     sync.Mutex
	free   []*[ChunkSize]byte
	arenas [][]byte
}

// slabArena is the size of one mapping (a multiple of 2 MiB).
const slabArena = 32 << 20

func (s *slab) get() *[ChunkSize]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.free) == 0 {
		mem, err := unix.Mmap(-1, 0, slabArena, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			// Out of address space: fall back to the Go heap.
			return new([ChunkSize]byte)
		}
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE) // best effort
		s.arenas = append(s.arenas, mem)
		for i := slabArena/ChunkSize - 1; i >= 0; i-- {
			s.free = append(s.free, (*[ChunkSize]byte)(mem[i*ChunkSize:(i+1)*ChunkSize]))
		}
	}
	d := s.free[len(s.free)-1]
	s.free = s.free[:len(s.free)-1]
	return d
}

func (s *slab) put(d *[ChunkSize]byte) {
	s.mu.Lock()
	s.free = append(s.free, d)
	s.mu.Unlock()
}

// CacheOptions configure a Cache.
type CacheOptions struct {
	// Size is the memory budget in bytes; 0 means DefaultCacheSize().
	Size int64
	// DirtyLimit bounds dirty plus in-flight bytes; 0 means Size/2. Half
	// the cache lets a write burst of several epochs go into memory while
	// the flusher commits them (epochs queue behind the one committing),
	// and bounds what a flush may have to commit.
	DirtyLimit int64
}

// DefaultCacheSize is min(1 GiB, RAM/4).
func DefaultCacheSize() int64 {
	const gib = 1 << 30
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return gib
	}
	ram := int64(si.Totalram) * int64(si.Unit)
	return max(min(gib, ram/4), 16<<20)
}

// NewCache makes a cache.
func NewCache(o CacheOptions) *Cache {
	if o.Size <= 0 {
		o.Size = DefaultCacheSize()
	}
	o.Size = max(o.Size, 64*ChunkSize)
	if o.DirtyLimit <= 0 || o.DirtyLimit > o.Size {
		o.DirtyLimit = o.Size / 2
	}
	c := &Cache{budget: o.Size, dirtyLimit: o.DirtyLimit, vols: map[*CachedVolume]struct{}{}}
	c.cond = sync.NewCond(&c.mu)
	return c
}

var (
	defaultCacheOnce sync.Once
	defaultCache     *Cache
)

// DefaultCache is the process-wide cache volumes use unless told otherwise.
func DefaultCache() *Cache {
	defaultCacheOnce.Do(func() { defaultCache = NewCache(CacheOptions{}) })
	return defaultCache
}

// Size is the cache's memory budget.
func (c *Cache) Size() int64 { return c.budget }

// DirtyLimit is the bound on dirty plus in-flight bytes.
func (c *Cache) DirtyLimit() int64 { return c.dirtyLimit }

// Used is the buffer memory in use (or reserved) right now.
func (c *Cache) Used() int64 { return c.used.Load() }

// DirtyBytes is the dirty plus in-flight bytes of healthy volumes.
func (c *Cache) DirtyBytes() int64 { return c.dirty.Load() }

func (c *Cache) register(v *CachedVolume) {
	c.mu.Lock()
	c.vols[v] = struct{}{}
	c.mu.Unlock()
}

func (c *Cache) unregister(v *CachedVolume) {
	c.mu.Lock()
	delete(c.vols, v)
	c.mu.Unlock()
}

// reserve claims n bytes of buffer memory ahead of taking a volume lock,
// evicting clean buffers when over budget. If everything left is dirty the
// cache overcommits; the dirty limit keeps that bounded.
func (c *Cache) reserve(n int64) {
	if c.used.Add(n) > c.budget {
		c.evict()
	}
}

// unreserve returns reserved bytes that were not used.
func (c *Cache) unreserve(n int64) {
	if n != 0 {
		c.used.Add(-n)
	}
}

// alloc takes a zeroed buffer array (its memory must already be reserved).
func (c *Cache) alloc() *[ChunkSize]byte {
	d := chunkSlab.get()
	clear(d[:])
	return d
}

// allocNoZero takes a buffer array whose contents the caller overwrites.
func (c *Cache) allocNoZero() *[ChunkSize]byte { return chunkSlab.get() }

// free returns a buffer array and its memory.
func (c *Cache) free(d *[ChunkSize]byte) {
	chunkSlab.put(d)
	c.used.Add(-ChunkSize)
}

// track adds data buffers to the LRU.
func (c *Cache) track(bs []*buf) {
	if len(bs) == 0 {
		return
	}
	c.mu.Lock()
	for _, b := range bs {
		if b.elem == nil {
			b.elem = c.lru.PushFront(b)
		}
	}
	c.mu.Unlock()
}

// untrack removes buffers from the LRU.
func (c *Cache) untrack(bs []*buf) {
	if len(bs) == 0 {
		return
	}
	c.mu.Lock()
	for _, b := range bs {
		if b.elem != nil {
			c.lru.Remove(b.elem)
			b.elem = nil
		}
	}
	c.mu.Unlock()
}

// evict frees clean buffers, least recently used first with a second chance
// for referenced ones, until the cache is within budget or nothing clean is
// left. It never holds Cache.mu while taking a volume lock.
func (c *Cache) evict() {
	for c.used.Load() > c.budget {
		var victims []*buf
		c.mu.Lock()
		scan := c.lru.Len()
		for e := c.lru.Back(); e != nil && scan > 0 && len(victims) < 64; scan-- {
			prev := e.Prev()
			b := e.Value.(*buf)
			if b.ref.Swap(false) || b.state.Load() != stateClean {
				c.lru.MoveToFront(e)
			} else {
				c.lru.Remove(e)
				b.elem = nil
				victims = append(victims, b)
			}
			e = prev
		}
		c.mu.Unlock()
		if len(victims) == 0 {
			return
		}
		dropped := 0
		for _, b := range victims {
			if b.vol.dropClean(b) {
				dropped++
			}
		}
		if dropped == 0 {
			return
		}
	}
}

// addDirty accounts n dirty bytes (negative when they are committed).
func (c *Cache) addDirty(n int64) {
	if n == 0 {
		return
	}
	if c.dirty.Add(n); n < 0 {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

// waitDirty blocks while admitting n more dirty bytes would pass the dirty
// limit, kicking every volume's flusher. A writer never waits when the cache
// holds no dirty data at all, so a single oversized write still proceeds.
func (c *Cache) waitDirty(n int64) {
	if c.dirty.Load()+n <= c.dirtyLimit {
		return
	}
	c.mu.Lock()
	for c.dirty.Load()+n > c.dirtyLimit && c.dirty.Load() > 0 {
		for v := range c.vols {
			v.kickFlusher()
		}
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// wakeDirtyWaiters wakes writers waiting in waitDirty, e.g. when a volume's
// dirty bytes stop counting because it failed.
func (c *Cache) wakeDirtyWaiters() {
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
}
