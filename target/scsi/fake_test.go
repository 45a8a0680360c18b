package scsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/anvilproject/anvil/engine"
)

// memVolume is an in-memory engine.Volume for tests, with switches for
// read-only mode and medium-error injection, and a per-block allocation map
// so that UNMAP and GET LBA STATUS can be checked.
type memVolume struct {
	mu       sync.Mutex
	name     string
	bs       int
	data     []byte
	mapped   []bool
	wce      bool
	ro       bool
	limits   engine.Limits
	badRead  map[int64]bool // block offsets whose reads fail
	badWrite map[int64]bool // block offsets whose writes fail
	failSync bool

	writes, fuaWrites, flushes, unmaps, zeroes int
}

func newMemVolume(blocks, bs int) *memVolume {
	return &memVolume{
		name: "vol0", bs: bs, data: make([]byte, blocks*bs), mapped: make([]bool, blocks), wce: true,
		limits:  engine.Limits{OptimalTransfer: 64 << 10, MaxUnmap: 1 << 30, AtomicWriteMax: 64 << 10},
		badRead: map[int64]bool{}, badWrite: map[int64]bool{},
	}
}

func (v *memVolume) Name() string   { return v.name }
func (v *memVolume) Size() int64    { v.mu.Lock(); defer v.mu.Unlock(); return int64(len(v.data)) }
func (v *memVolume) BlockSize() int { return v.bs }

func (v *memVolume) check(off, n int64) error {
	if off < 0 || n < 0 || off%int64(v.bs) != 0 || n%int64(v.bs) != 0 || off+n > int64(len(v.data)) {
		return fmt.Errorf("mem: [%d,+%d): %w", off, n, engine.ErrOutOfRange)
	}
	return nil
}

func (v *memVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	for b := off; b < off+int64(len(p)); b += int64(v.bs) {
		if v.badRead[b/int64(v.bs)] {
			return fmt.Errorf("mem: read block %d: %w", b/int64(v.bs), engine.ErrMedium)
		}
	}
	copy(p, v.data[off:])
	return nil
}

func (v *memVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ro {
		return engine.ErrReadOnly
	}
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	for b := off; b < off+int64(len(p)); b += int64(v.bs) {
		if v.badWrite[b/int64(v.bs)] {
			return fmt.Errorf("mem: write block %d: %w", b/int64(v.bs), engine.ErrMedium)
		}
	}
	copy(v.data[off:], p)
	for b := off / int64(v.bs); b < (off+int64(len(p)))/int64(v.bs); b++ {
		v.mapped[b] = true
	}
	v.writes++
	if fua {
		v.fuaWrites++
	}
	return nil
}

func (v *memVolume) WriteZeroes(ctx context.Context, off, n int64, unmap bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, n); err != nil {
		return err
	}
	clear(v.data[off : off+n])
	for b := off / int64(v.bs); b < (off+n)/int64(v.bs); b++ {
		v.mapped[b] = !unmap
	}
	v.zeroes++
	return nil
}

func (v *memVolume) Unmap(ctx context.Context, off, n int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, n); err != nil {
		return err
	}
	clear(v.data[off : off+n])
	for b := off / int64(v.bs); b < (off+n)/int64(v.bs); b++ {
		v.mapped[b] = false
	}
	v.unmaps++
	return nil
}

func (v *memVolume) Flush(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.failSync {
		return fmt.Errorf("mem: flush: %w", engine.ErrMedium)
	}
	v.flushes++
	return nil
}

func (v *memVolume) Mapped(ctx context.Context, off, n int64) (bool, int64, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, n); err != nil {
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

func (v *memVolume) WriteCache() bool { v.mu.Lock(); defer v.mu.Unlock(); return v.wce }
func (v *memVolume) SetWriteCache(on bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.wce = on
	return nil
}
func (v *memVolume) ReadOnly() bool        { v.mu.Lock(); defer v.mu.Unlock(); return v.ro }
func (v *memVolume) Limits() engine.Limits { return v.limits }
func (v *memVolume) Close() error          { return nil }

var _ engine.Volume = (*memVolume)(nil)

// fixture is a target with one LU at LUN 0 over a memVolume, and two
// nexuses whose power-on unit attentions have been cleared.
type fixture struct {
	t      *testing.T
	vol    *memVolume
	lu     *LogicalUnit
	tgt    *Target
	n1, n2 *Nexus
}

const testBlocks = 2048

func newFixture(t *testing.T) *fixture {
	t.Helper()
	vol := newMemVolume(testBlocks, 512)
	lu := NewLogicalUnit(vol, LUConfig{VendorID: "ANVIL", ProductID: "Anvil Volume", Revision: "0001", Serial: "SN0001",
		NAA: []byte{0x60, 0x01, 0x40, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01}})
	tgt := NewTarget("iqn.2026-11.io.anvil:test")
	if err := tgt.AddLUN(0, lu); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, vol: vol, lu: lu, tgt: tgt,
		n1: &Nexus{InitiatorPort: "iqn.i1,i,0x1", TargetPort: "iqn.2026-11.io.anvil:test,t,0x0001", RelativeTargetPortID: 1, TargetPortGroup: 1},
		n2: &Nexus{InitiatorPort: "iqn.i2,i,0x1", TargetPort: "iqn.2026-11.io.anvil:test,t,0x0001", RelativeTargetPortID: 1, TargetPortGroup: 1},
	}
	f.clearUA(f.n1)
	f.clearUA(f.n2)
	return f
}

// clearUA consumes the nexus's unit attentions with TEST UNIT READY, as
// initiators do after login.
func (f *fixture) clearUA(n *Nexus) {
	f.t.Helper()
	for i := 0; i < maxUAs+2; i++ {
		r := f.exec(n, cdb(opTestUnitReady, 6), nil)
		if r.Status == StatusGood {
			return
		}
	}
	f.t.Fatal("unit attentions never cleared")
}

func (f *fixture) exec(n *Nexus, c []byte, out []byte) Result {
	return f.tgt.Execute(context.Background(), &Command{Nexus: n, LUN: 0, CDB: c, DataOut: out, ExpectedDataIn: 1 << 20})
}

// run executes on n1.
func (f *fixture) run(c []byte, out []byte) Result { return f.exec(f.n1, c, out) }

// cdb returns a zeroed CDB of length n with the opcode set.
func cdb(op byte, n int) []byte {
	b := make([]byte, n)
	b[0] = op
	return b
}

// rw builds a READ/WRITE-family CDB of the given length.
func rw(op byte, n int, lba uint64, blocks uint32) []byte {
	c := cdb(op, n)
	switch n {
	case 6:
		c[1] = byte(lba>>16) & 0x1f
		c[2], c[3] = byte(lba>>8), byte(lba)
		c[4] = byte(blocks)
	case 10:
		binary.BigEndian.PutUint32(c[2:], uint32(lba))
		binary.BigEndian.PutUint16(c[7:], uint16(blocks))
	case 12:
		binary.BigEndian.PutUint32(c[2:], uint32(lba))
		binary.BigEndian.PutUint32(c[6:], blocks)
	case 16:
		binary.BigEndian.PutUint64(c[2:], lba)
		binary.BigEndian.PutUint32(c[10:], blocks)
	}
	return c
}

// parsedSense is sense data decoded from either format.
type parsedSense struct {
	format    byte
	key       byte
	asc, ascq byte
	info      uint64
	infoValid bool
	sksv      bool
	cd        bool
	field     uint16
	bitValid  bool
	bit       byte
}

func parseSense(t *testing.T, s []byte) parsedSense {
	t.Helper()
	if len(s) < 8 {
		t.Fatalf("sense too short: % x", s)
	}
	var p parsedSense
	p.format = s[0] & 0x7f
	var sks []byte
	switch p.format {
	case 0x70:
		if len(s) < 18 || int(s[7])+8 != len(s) {
			t.Fatalf("bad fixed sense length: % x", s)
		}
		p.key, p.asc, p.ascq = s[2]&0xf, s[12], s[13]
		p.infoValid = s[0]&0x80 != 0
		p.info = uint64(binary.BigEndian.Uint32(s[3:]))
		sks = s[15:18]
	case 0x72:
		if int(s[7])+8 != len(s) {
			t.Fatalf("bad descriptor sense length: % x", s)
		}
		p.key, p.asc, p.ascq = s[1]&0xf, s[2], s[3]
		for d := s[8:]; len(d) >= 2; d = d[2+int(d[1]):] {
			if len(d) < 2+int(d[1]) {
				t.Fatalf("truncated sense descriptor: % x", s)
			}
			switch d[0] {
			case 0x00:
				p.infoValid = d[2]&0x80 != 0
				p.info = binary.BigEndian.Uint64(d[4:])
			case 0x02:
				sks = d[4:7]
			}
		}
	default:
		t.Fatalf("unknown sense format %#x", p.format)
	}
	if sks != nil && sks[0]&0x80 != 0 {
		p.sksv = true
		p.cd = sks[0]&0x40 != 0
		p.bitValid = sks[0]&0x08 != 0
		p.bit = sks[0] & 7
		p.field = binary.BigEndian.Uint16(sks[1:])
	}
	return p
}

// expectSense fails unless r is CHECK CONDITION with key/asc/ascq.
func expectSense(t *testing.T, r Result, key byte, asc uint16) parsedSense {
	t.Helper()
	if r.Status != StatusCheckCondition {
		t.Fatalf("status %#x, want CHECK CONDITION with %#x/%04x", r.Status, key, asc)
	}
	p := parseSense(t, r.Sense)
	if p.key != key || uint16(p.asc)<<8|uint16(p.ascq) != asc {
		t.Fatalf("sense %#x/%02x/%02x, want %#x/%04x", p.key, p.asc, p.ascq, key, asc)
	}
	return p
}

func expectGood(t *testing.T, r Result) {
	t.Helper()
	if r.Status != StatusGood {
		s := ""
		if r.Sense != nil {
			p := parseSense(t, r.Sense)
			s = fmt.Sprintf(" sense %#x/%02x/%02x", p.key, p.asc, p.ascq)
		}
		t.Fatalf("status %#x%s, want GOOD", r.Status, s)
	}
}
