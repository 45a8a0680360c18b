package engine

// chunkTable maps chunk indexes of one volume to buffers. It is a two-level
// radix table rather than a Go map: a lookup is two indexed loads, which
// matters on the cache-hit read path, and leaves are allocated only for the
// 2 MiB regions that have ever been cached. Callers hold the volume lock.
type chunkTable struct {
	top []*chunkLeaf
	n   int // buffers in the table
}

const leafBits = 9 // 512 chunks = 2 MiB per leaf

type chunkLeaf struct {
	b [1 << leafBits]*buf
	n int
}

// get returns the buffer of chunk k, or nil.
func (t *chunkTable) get(k int64) *buf {
	i := k >> leafBits
	if i >= int64(len(t.top)) {
		return nil
	}
	l := t.top[i]
	if l == nil {
		return nil
	}
	return l.b[k&(1<<leafBits-1)]
}

// set installs b as the buffer of chunk k (b non-nil).
func (t *chunkTable) set(k int64, b *buf) {
	i := k >> leafBits
	if i >= int64(len(t.top)) {
		t.top = append(t.top, make([]*chunkLeaf, i+1-int64(len(t.top)))...)
	}
	l := t.top[i]
	if l == nil {
		l = new(chunkLeaf)
		t.top[i] = l
	}
	slot := &l.b[k&(1<<leafBits-1)]
	if *slot == nil {
		l.n++
		t.n++
	}
	*slot = b
}

// del removes chunk k's buffer, freeing its leaf when it becomes empty.
func (t *chunkTable) del(k int64) {
	i := k >> leafBits
	if i >= int64(len(t.top)) || t.top[i] == nil {
		return
	}
	l := t.top[i]
	slot := &l.b[k&(1<<leafBits-1)]
	if *slot != nil {
		*slot = nil
		l.n--
		t.n--
		if l.n == 0 {
			t.top[i] = nil
		}
	}
}

// each calls f for every buffer in chunk order; f may delete the chunk it
// is given.
func (t *chunkTable) each(f func(k int64, b *buf)) {
	for i, l := range t.top {
		if l == nil {
			continue
		}
		for j := range l.b {
			if b := l.b[j]; b != nil {
				f(int64(i)<<leafBits|int64(j), b)
			}
			if t.top[i] == nil {
				break // the leaf emptied and was freed
			}
		}
	}
}

// len is the number of buffers in the table.
func (t *chunkTable) len() int { return t.n }
