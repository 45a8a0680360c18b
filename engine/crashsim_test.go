package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
)

// The crash simulator: simWorld is a set of devices (a volume's data device
// and its undo FIFO) that crash together. Each simDev keeps a durable image
// and, in a volatile layer, every write and discard since its last Sync. At
// the crash point the world stops accepting I/O and each device persists a
// random subset of its volatile operations, tearing some of them at 512-byte
// granularity, the way a disk with a volatile write cache may.

const simSector = 512

var errSimCrashed = errors.New("simulated crash: device is gone")

type simWorld struct {
	mu      sync.Mutex
	rng     *rand.Rand
	ops     int64 // mutating operations and syncs so far
	crashAt int64 // crash when ops reaches it; 0 = never
	crashed bool
	devs    []*simDev
	// loseAll makes a crash persist none of the unsynced operations
	// (instead of a random, torn subset), for deterministic tests.
	loseAll bool
}

func newSimWorld(seed uint64) *simWorld {
	return &simWorld{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// simImage is a device's persistent state: bytes plus a per-sector
// allocation map.
type simImage struct {
	data   []byte
	mapped []bool
}

func newSimImage(size int64) simImage {
	return simImage{data: make([]byte, size), mapped: make([]bool, size/simSector)}
}

func (im simImage) clone() simImage {
	return simImage{data: append([]byte(nil), im.data...), mapped: append([]bool(nil), im.mapped...)}
}

// apply performs one operation on the image, limited to the sectors for
// which keep returns true (nil keeps all).
func (im simImage) apply(op simOp, keep func(int) bool) {
	for s := 0; s < int(op.n/simSector); s++ {
		if keep != nil && !keep(s) {
			continue
		}
		off := op.off + int64(s)*simSector
		if op.data == nil {
			clear(im.data[off : off+simSector])
			im.mapped[off/simSector] = false
		} else {
			copy(im.data[off:off+simSector], op.data[s*simSector:])
			im.mapped[off/simSector] = true
		}
	}
}

type simOp struct {
	off, n int64
	data   []byte // nil: discard
}

type simDev struct {
	w        *simWorld
	durable  simImage
	view     simImage // durable + volatile, what reads see
	volatile []simOp
	crashImg simImage // set at the crash
}

func (w *simWorld) newDev(img simImage) *simDev {
	d := &simDev{w: w, durable: img.clone(), view: img.clone()}
	w.devs = append(w.devs, d)
	return d
}

// tick counts a mutating operation and crashes the world at the crash
// point; the operation that hits the point is still recorded as volatile
// first (it was in flight).
func (w *simWorld) tick(before func()) error {
	if w.crashed {
		return errSimCrashed
	}
	w.ops++
	if w.crashAt > 0 && w.ops >= w.crashAt {
		if before != nil {
			before()
		}
		w.crashLocked()
		return errSimCrashed
	}
	return nil
}

// crash crashes the world now (if it has not already).
func (w *simWorld) crash() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.crashed {
		w.crashLocked()
	}
}

func (w *simWorld) crashLocked() {
	w.crashed = true
	for _, d := range w.devs {
		img := d.durable.clone()
		for _, op := range d.volatile {
			if w.loseAll {
				break
			}
			switch r := w.rng.IntN(100); {
			case r < 45: // lost
			case r < 80: // persisted whole
				img.apply(op, nil)
			default: // torn: a random subset of its sectors
				mask := make([]bool, op.n/simSector)
				for i := range mask {
					mask[i] = w.rng.IntN(2) == 0
				}
				img.apply(op, func(s int) bool { return mask[s] })
			}
		}
		d.crashImg = img
	}
}

func (d *simDev) ReadAt(p []byte, off int64) (int, error) {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	if d.w.crashed {
		return 0, errSimCrashed
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.view.data)) {
		return 0, fmt.Errorf("sim: read [%d,+%d) out of range", off, len(p))
	}
	copy(p, d.view.data[off:])
	return len(p), nil
}

func (d *simDev) write(op simOp) error {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	if op.off%simSector != 0 || op.n%simSector != 0 || op.off < 0 || op.off+op.n > int64(len(d.view.data)) {
		return fmt.Errorf("sim: unaligned or out-of-range op [%d,+%d)", op.off, op.n)
	}
	if op.data != nil {
		op.data = append([]byte(nil), op.data...)
	}
	record := func() { d.volatile = append(d.volatile, op) }
	if err := d.w.tick(record); err != nil {
		return err
	}
	record()
	d.view.apply(op, nil)
	return nil
}

func (d *simDev) WriteAt(p []byte, off int64) (int, error) {
	if err := d.write(simOp{off: off, n: int64(len(p)), data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (d *simDev) WriteAtv(bufs [][]byte, off int64) error {
	var all []byte
	for _, b := range bufs {
		all = append(all, b...)
	}
	return d.write(simOp{off: off, n: int64(len(all)), data: all})
}

func (d *simDev) Discard(off, n int64) error {
	return d.write(simOp{off: off, n: n})
}

func (d *simDev) Sync() error {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	if err := d.w.tick(nil); err != nil {
		return err
	}
	for _, op := range d.volatile {
		d.durable.apply(op, nil)
	}
	d.volatile = nil
	return nil
}

func (d *simDev) Mapped(off, n int64) (bool, int64, error) {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	if d.w.crashed {
		return false, 0, errSimCrashed
	}
	s := off / simSector
	m := d.view.mapped[s]
	e := s
	for e < int64(len(d.view.mapped)) && d.view.mapped[e] == m && (e-s)*simSector < n {
		e++
	}
	return m, min(n, (e-s)*simSector), nil
}

func (d *simDev) Size() int64 { return int64(len(d.view.data)) }

func (d *simDev) Truncate(size int64) error {
	return errors.New("sim: truncate not supported")
}

func (d *simDev) Close() error { return nil }
