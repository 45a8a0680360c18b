package nvme

import (
	"context"
	"fmt"
	"sync"

	"github.com/anvilproject/anvil/engine"
)

// nsVolume is an in-memory engine.Volume for the namespace tests, with a
// per-block allocation map and switches for read-only, frozen, degraded,
// closed and failing volumes. It honours ctx like the engine does.
type nsVolume struct {
	mu       sync.Mutex
	name     string
	bs       int
	data     []byte
	mapped   []bool
	wce      bool
	ro       bool
	frozen   error // Err(): why a commit froze the volume (FrozenErr)
	failErr  error // returned by every data call when set (ErrNoSpace, ErrClosed, ...)
	limits   engine.Limits
	badRead  map[int64]bool // blocks whose reads fail with ErrMedium
	badWrite map[int64]bool // blocks whose writes fail with ErrMedium
	failSync bool

	writes, fuaWrites, flushes, unmaps, zeroes, zeroUnmaps int
}

func newNSVolume(blocks, bs int) *nsVolume {
	return &nsVolume{
		name: "vol0", bs: bs, data: make([]byte, blocks*bs), mapped: make([]bool, blocks), wce: true,
		limits:  engine.Limits{OptimalTransfer: 64 << 10, MaxUnmap: 1 << 30, AtomicWriteMax: 64 << 10},
		badRead: map[int64]bool{}, badWrite: map[int64]bool{},
	}
}

func (v *nsVolume) Name() string   { return v.name }
func (v *nsVolume) Size() int64    { v.mu.Lock(); defer v.mu.Unlock(); return int64(len(v.data)) }
func (v *nsVolume) BlockSize() int { return v.bs }
func (v *nsVolume) Err() error     { v.mu.Lock(); defer v.mu.Unlock(); return v.frozen }

// pre is every data call's common prologue; v.mu is held.
func (v *nsVolume) pre(ctx context.Context, off, n int64, write bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if v.failErr != nil {
		return fmt.Errorf("mem: %w", v.failErr)
	}
	if write && v.ro {
		return fmt.Errorf("mem: %w", engine.ErrReadOnly)
	}
	if off < 0 || n < 0 || off%int64(v.bs) != 0 || n%int64(v.bs) != 0 || off+n > int64(len(v.data)) {
		return fmt.Errorf("mem: [%d,+%d): %w", off, n, engine.ErrOutOfRange)
	}
	bad := v.badRead
	if write {
		bad = v.badWrite
	}
	for b := off / int64(v.bs); b < (off+n)/int64(v.bs); b++ {
		if bad[b] {
			return fmt.Errorf("mem: block %d: %w", b, engine.ErrMedium)
		}
	}
	return nil
}

func (v *nsVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.pre(ctx, off, int64(len(p)), false); err != nil {
		return err
	}
	copy(p, v.data[off:])
	return nil
}

func (v *nsVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.pre(ctx, off, int64(len(p)), true); err != nil {
		return err
	}
	copy(v.data[off:], p)
	v.setMapped(off, int64(len(p)), true)
	v.writes++
	if fua {
		v.fuaWrites++
	}
	return nil
}

func (v *nsVolume) setMapped(off, n int64, m bool) {
	for b := off / int64(v.bs); b < (off+n)/int64(v.bs); b++ {
		v.mapped[b] = m
	}
}

func (v *nsVolume) WriteZeroes(ctx context.Context, off, n int64, unmap bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.pre(ctx, off, n, true); err != nil {
		return err
	}
	clear(v.data[off : off+n])
	v.setMapped(off, n, !(unmap && v.limits.MaxUnmap > 0))
	v.zeroes++
	if unmap {
		v.zeroUnmaps++
	}
	return nil
}

func (v *nsVolume) Unmap(ctx context.Context, off, n int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.pre(ctx, off, n, true); err != nil {
		return err
	}
	if n > v.limits.MaxUnmap {
		return fmt.Errorf("mem: unmap of %d bytes past MaxUnmap %d: %w", n, v.limits.MaxUnmap, engine.ErrOutOfRange)
	}
	clear(v.data[off : off+n])
	v.setMapped(off, n, false)
	v.unmaps++
	return nil
}

func (v *nsVolume) Flush(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if v.failSync {
		return fmt.Errorf("mem: flush: %w", engine.ErrMedium)
	}
	v.flushes++
	return nil
}

func (v *nsVolume) Mapped(ctx context.Context, off, n int64) (bool, int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.pre(ctx, off, n, false); err != nil {
		return false, 0, err
	}
	first := off / int64(v.bs)
	state := v.mapped[first]
	b := first
	for b < (off+n)/int64(v.bs) && v.mapped[b] == state {
		b++
	}
	return state, (b - first) * int64(v.bs), nil
}

func (v *nsVolume) WriteCache() bool { v.mu.Lock(); defer v.mu.Unlock(); return v.wce }
func (v *nsVolume) SetWriteCache(on bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.failErr != nil {
		return fmt.Errorf("mem: set write cache: %w", v.failErr)
	}
	v.wce = on
	return nil
}
func (v *nsVolume) ReadOnly() bool        { v.mu.Lock(); defer v.mu.Unlock(); return v.ro }
func (v *nsVolume) Limits() engine.Limits { return v.limits }
func (v *nsVolume) Close() error          { return nil }

var _ engine.Volume = (*nsVolume)(nil)
