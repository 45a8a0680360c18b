package engine

import "sync/atomic"

// chunkTable maps chunk indexes of one volume to buffers. It is a two-level
// radix table rather than a Go map: a lookup is two indexed loads, which
// matters on the cache-hit read path, and leaves are allocated only for the
// 2 MiB regions that have ever been cached.
//
// Changes (set, del) happen with the volume lock held exclusively. Lookups
// (get) are atomic loads, so the lock-free hit path (CachedVolume.readHit)
// may look up chunks while a writer changes the table; it then sees either
// the old or the new buffer of a chunk, and the volume's write sequence
// tells it that a change happened.
type chunkTable struct {
	top atomic.Pointer[[]atomic.Pointer[chunkLeaf]]
}

const leafBits = 9 // 512 chunks = 2 MiB per leaf

type chunkLeaf struct {
	b [1 << leafBits]atomic.Pointer[buf]
	n int // guarded by the volume lock
}

// leaf returns the leaf for chunk k, or nil.
func (t *chunkTable) leaf(k int64) *chunkLeaf {
	top := t.top.Load()
	i := k >> leafBits
	if top == nil || i >= int64(len(*top)) {
		return nil
	}
	return (*top)[i].Load()
}

// get returns the buffer of chunk k, or nil.
func (t *chunkTable) get(k int64) *buf {
	if l := t.leaf(k); l != nil {
		return l.b[k&(1<<leafBits-1)].Load()
	}
	return nil
}

// set installs b as the buffer of chunk k (b non-nil).
func (t *chunkTable) set(k int64, b *buf) {
	i := k >> leafBits
	var top []atomic.Pointer[chunkLeaf]
	if p := t.top.Load(); p != nil {
		top = *p
	}
	if i >= int64(len(top)) {
		// Grow into a new top array and publish it whole: lookups keep
		// using the old one until then.
		grown := make([]atomic.Pointer[chunkLeaf], i+1)
		for j := range top {
			grown[j].Store(top[j].Load())
		}
		t.top.Store(&grown)
		top = grown
	}
	l := top[i].Load()
	if l == nil {
		l = new(chunkLeaf)
		top[i].Store(l)
	}
	slot := &l.b[k&(1<<leafBits-1)]
	if slot.Load() == nil {
		l.n++
	}
	slot.Store(b)
}

// del removes chunk k's buffer, freeing its leaf when it becomes empty.
func (t *chunkTable) del(k int64) {
	p := t.top.Load()
	i := k >> leafBits
	if p == nil || i >= int64(len(*p)) {
		return
	}
	l := (*p)[i].Load()
	if l == nil {
		return
	}
	slot := &l.b[k&(1<<leafBits-1)]
	if slot.Swap(nil) != nil {
		l.n--
		if l.n == 0 {
			(*p)[i].Store(nil)
		}
	}
}

// each calls f for every buffer in chunk order; f may delete the chunk it
// is given.
func (t *chunkTable) each(f func(k int64, b *buf)) {
	p := t.top.Load()
	if p == nil {
		return
	}
	for i := range *p {
		l := (*p)[i].Load()
		if l == nil {
			continue
		}
		for j := range l.b {
			if b := l.b[j].Load(); b != nil {
				f(int64(i)<<leafBits|int64(j), b)
			}
			if (*p)[i].Load() == nil {
				break // the leaf emptied and was freed
			}
		}
	}
}

// reset empties the table.
func (t *chunkTable) reset() {
	t.top.Store(nil)
}
