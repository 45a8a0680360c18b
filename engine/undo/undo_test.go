package undo

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
)

// memDev is an in-memory Device and Target. With failAfter > 0 it fails
// every write after that many, to simulate a crash mid-sequence.
type memDev struct {
	b         []byte
	holes     map[int64]int64
	writes    int
	failAfter int
}

var errCrash = errors.New("crashed")

func newMem(n int) *memDev { return &memDev{b: make([]byte, n), holes: map[int64]int64{}} }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) { return copy(p, m.b[off:]), nil }
func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	m.writes++
	if m.failAfter > 0 && m.writes > m.failAfter {
		return 0, errCrash
	}
	return copy(m.b[off:], p), nil
}
func (m *memDev) Sync() error { return nil }
func (m *memDev) Size() int64 { return int64(len(m.b)) }
func (m *memDev) Discard(off, n int64) error {
	m.writes++
	if m.failAfter > 0 && m.writes > m.failAfter {
		return errCrash
	}
	clear(m.b[off : off+n])
	m.holes[off] = n
	return nil
}

func fill(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// writeEpoch records the current contents of the given ranges of data into a
// batch for epoch and then overwrites them with fresh bytes, like the engine.
func writeEpoch(t *testing.T, f *FIFO, data *memDev, epoch uint64, ranges [][2]int64, holes map[int64]bool) *Batch {
	t.Helper()
	b := f.Begin(epoch)
	for _, r := range ranges {
		if holes[r[0]] {
			if err := b.AppendHole(r[0], r[1]); err != nil {
				t.Fatal(err)
			}
		} else {
			p, err := b.AppendData(r[0], int(r[1]))
			if err != nil {
				t.Fatal(err)
			}
			copy(p, data.b[r[0]:r[0]+r[1]])
		}
	}
	if err := b.Write(); err != nil {
		t.Fatal(err)
	}
	for i, r := range ranges {
		copy(data.b[r[0]:], fill(int(r[1]), byte(epoch*31)+byte(i)))
	}
	return b
}

func TestRecoverRollsBackUncommittedEpoch(t *testing.T) {
	fdev := newMem(MinSize * 4)
	f, err := Create(fdev)
	if err != nil {
		t.Fatal(err)
	}
	data := newMem(1 << 20)
	copy(data.b, fill(len(data.b), 1))
	ranges := [][2]int64{{0, 4096}, {8192, 8192}, {4096, 4096}, {65536, 4096}}
	b := writeEpoch(t, f, data, 1, ranges, nil)
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	committed := append([]byte(nil), data.b...)
	// Epoch 2 overwrites overlapping ranges, one of them twice-recorded
	// region, and one range recorded as a hole.
	writeEpoch(t, f, data, 2, [][2]int64{{4096, 8192}, {65536, 4096}, {131072, 4096}}, map[int64]bool{131072: true})
	if bytes.Equal(committed, data.b) {
		t.Fatal("epoch 2 did not change the data")
	}
	f2, err := Open(fdev)
	if err != nil {
		t.Fatal(err)
	}
	if f2.Committed() != 1 {
		t.Fatalf("committed = %d, want 1", f2.Committed())
	}
	res, err := f2.Recover(data)
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 3 || res.Epoch != 2 {
		t.Fatalf("recover = %+v, want 3 records of epoch 2", res)
	}
	// The hole record punches: the committed content there was zero anyway
	// in this test only if it had been a hole, so compare everything else.
	if !bytes.Equal(committed[:131072], data.b[:131072]) || !bytes.Equal(committed[131072+4096:], data.b[131072+4096:]) {
		t.Fatal("data not restored to the committed state")
	}
	if data.holes[131072] != 4096 {
		t.Fatal("hole record not applied as a punch")
	}
	// Recovery again (as after a crash right after it) must change nothing.
	f3, err := Open(fdev)
	if err != nil {
		t.Fatal(err)
	}
	res, err = f3.Recover(data)
	if err != nil || res.Records != 0 {
		t.Fatalf("second recover = %+v, %v; want nothing to do", res, err)
	}
	if f3.Committed() < 2 {
		t.Fatalf("rolled-back epoch not burned: committed = %d", f3.Committed())
	}
}

func TestRecoverStopsAtTornRecord(t *testing.T) {
	fdev := newMem(MinSize * 4)
	f, err := Create(fdev)
	if err != nil {
		t.Fatal(err)
	}
	data := newMem(1 << 20)
	copy(data.b, fill(len(data.b), 9))
	orig := append([]byte(nil), data.b...)
	writeEpoch(t, f, data, 1, [][2]int64{{0, 4096}, {4096, 4096}, {8192, 4096}}, nil)
	// Tear the second record's payload: recovery must apply only the first.
	fdev.b[RingOffset+int64(RecordSize(4096))+recHdrLen+100] ^= 0xff
	f2, _ := Open(fdev)
	res, err := f2.Recover(data)
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 1 {
		t.Fatalf("applied %d records, want 1 (stop at the torn one)", res.Records)
	}
	if !bytes.Equal(orig[:4096], data.b[:4096]) {
		t.Fatal("first record not applied")
	}
}

func TestHeaderTornKeepsPreviousGeneration(t *testing.T) {
	fdev := newMem(MinSize * 2)
	f, err := Create(fdev)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(5); err != nil {
		t.Fatal(err)
	}
	// Tear the next header write (it goes to the other slot).
	fdev.failAfter = fdev.writes
	if err := f.Commit(6); err == nil {
		t.Fatal("commit with failing device succeeded")
	}
	fdev.failAfter = 0
	f.gen++ // simulate a garbage write landing in that slot
	copy(fdev.b[int64(f.gen%2)*slotSize:], []byte("ANVILUF1garbage"))
	f2, err := Open(fdev)
	if err != nil {
		t.Fatal(err)
	}
	if f2.Committed() != 5 {
		t.Fatalf("committed = %d, want 5", f2.Committed())
	}
}

// TestRingWrapAndStaleRecords drives many epochs through a small ring with
// random ranges, crashing (skipping Commit) at random epochs, and checks
// that recovery always restores exactly the last committed state.
func TestRingWrapAndStaleRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fdev := newMem(MinSize)
	f, err := Create(fdev)
	if err != nil {
		t.Fatal(err)
	}
	data := newMem(256 << 10)
	committed := append([]byte(nil), data.b...)
	for epoch := uint64(1); epoch < 400; epoch++ {
		var ranges [][2]int64
		var budget int64
		for range 1 + rng.IntN(6) {
			n := min(int64(1+rng.IntN(4))*4096, f.MaxPayload())
			if budget+RecordSize(n) > f.EpochBudget() {
				break
			}
			budget += RecordSize(n)
			ranges = append(ranges, [2]int64{int64(rng.IntN(60)) * 4096, n})
		}
		next := f.Committed() + 1
		b := writeEpoch(t, f, data, next, ranges, nil)
		if rng.IntN(4) == 0 {
			// Crash before the commit: recovery must roll back.
			f, err = Open(fdev)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Recover(data); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(committed, data.b) {
				t.Fatalf("epoch %d: recovery did not restore the committed state", next)
			}
			continue
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		copy(committed, data.b)
	}
}

// TestCommitWithChainsEpochs: epoch 2's header advance and epoch 3's
// records share one sync. If that sync is lost entirely, recovery must roll
// back epoch 2; if it completed, only epoch 3.
func TestCommitWithChainsEpochs(t *testing.T) {
	for _, lostSync := range []bool{false, true} {
		fdev := newMem(MinSize * 4)
		f, err := Create(fdev)
		if err != nil {
			t.Fatal(err)
		}
		data := newMem(1 << 20)
		copy(data.b, fill(len(data.b), 3))
		orig := append([]byte(nil), data.b...)
		b1 := writeEpoch(t, f, data, 2, [][2]int64{{0, 8192}, {65536, 4096}}, nil)
		after1 := append([]byte(nil), data.b...)
		snapshot := append([]byte(nil), fdev.b...)
		b2 := b1.Next(3)
		p, err := b2.AppendData(4096, 8192)
		if err != nil {
			t.Fatal(err)
		}
		copy(p, data.b[4096:4096+8192])
		if err := b1.CommitWith(b2); err != nil {
			t.Fatal(err)
		}
		if lostSync {
			// Nothing of the shared sync reached the disk, but the first
			// epoch's records (synced before its data went in place) did.
			// Epoch 3's data cannot be in place: it waits for that sync.
			copy(fdev.b, snapshot)
		} else {
			copy(data.b[4096:], fill(8192, 77)) // epoch 3 in place, uncommitted
		}
		f2, err := Open(fdev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f2.Recover(data); err != nil {
			t.Fatal(err)
		}
		want := after1
		if lostSync {
			want = orig
		}
		if !bytes.Equal(data.b, want) {
			t.Fatalf("lostSync=%v: recovery did not restore the right epoch", lostSync)
		}
	}
}

// writebackDev is a memDev that logs StartWriteback calls and Syncs.
type writebackDev struct {
	*memDev
	log []string
}

func (w *writebackDev) StartWriteback(off, n int64) error {
	w.log = append(w.log, fmt.Sprintf("writeback %d+%d", off, n))
	return nil
}

func (w *writebackDev) Sync() error {
	w.log = append(w.log, "sync")
	return nil
}

// TestLargeBatchStartsWriteback: a batch larger than flushThreshold writes
// its records out as it grows and starts their writeback before the Sync
// of Write; every range it names lies in the ring and was written.
func TestLargeBatchStartsWriteback(t *testing.T) {
	dev := &writebackDev{memDev: newMem(64 << 20)}
	f, err := Create(dev)
	if err != nil {
		t.Fatal(err)
	}
	dev.log = nil
	b := f.Begin(f.Committed() + 1)
	const rec = 256 << 10
	for i := range int64(40) { // 10 MiB of payload: two flushes, then the tail
		p, err := b.AppendData(i*rec, rec)
		if err != nil {
			t.Fatal(err)
		}
		copy(p, fill(rec, byte(i)))
	}
	if err := b.Write(); err != nil {
		t.Fatal(err)
	}
	if len(dev.log) != 3 || dev.log[2] != "sync" {
		t.Fatalf("calls %q, want two writebacks and then the sync", dev.log)
	}
	var end int64 = RingOffset
	for _, c := range dev.log[:2] {
		var off, n int64
		if _, err := fmt.Sscanf(c, "writeback %d+%d", &off, &n); err != nil {
			t.Fatal(err)
		}
		if off != end || n < flushThreshold {
			t.Fatalf("%s: want a range of at least %d bytes from %d", c, flushThreshold, end)
		}
		end = off + n
	}
}

// garbleSlot overwrites a header slot with bytes that are neither a valid
// header nor blank, as a bad sector or a stray write would.
func garbleSlot(dev *memDev, slot uint64) {
	copy(dev.b[int64(slot%2)*slotSize:], fill(SectorSize, 0x5a))
}

// TestGarbledNewerHeaderDoesNotRollBackCommittedEpoch: epoch 2 is
// committed (its header is durable), then its header slot is garbled.
// The older slot still says epoch 1 and epoch 2's records are still in the
// ring; recovery must not take them for an uncommitted epoch and roll back
// acknowledged data. It cannot tell whether the garbled slot was the newer
// one, so it refuses with ErrUncertain and leaves the data alone.
func TestGarbledNewerHeaderDoesNotRollBackCommittedEpoch(t *testing.T) {
	fdev := newMem(MinSize * 4)
	f, err := Create(fdev)
	if err != nil {
		t.Fatal(err)
	}
	data := newMem(1 << 20)
	if err := writeEpoch(t, f, data, 1, [][2]int64{{0, 4096}}, nil).Commit(); err != nil {
		t.Fatal(err)
	}
	if err := writeEpoch(t, f, data, 2, [][2]int64{{0, 16384}, {131072, 8192}}, nil).Commit(); err != nil {
		t.Fatal(err)
	}
	committed := append([]byte(nil), data.b...)
	garbleSlot(fdev, f.gen)
	ringBefore := append([]byte(nil), fdev.b...)

	f2, err := Open(fdev)
	if err != nil {
		t.Fatal(err)
	}
	if f2.Committed() != 1 {
		t.Fatalf("test setup: the surviving header says epoch %d, want 1", f2.Committed())
	}
	_, err = f2.Recover(data)
	if !errors.Is(err, ErrUncertain) {
		t.Fatalf("Recover = %v, want ErrUncertain", err)
	}
	if !bytes.Equal(data.b, committed) {
		t.Fatal("recovery rolled back the committed epoch 2")
	}
	if !bytes.Equal(fdev.b, ringBefore) {
		t.Fatal("an uncertain recovery changed the FIFO")
	}
}

// TestGarbledHeaderWithChainedEpochKeepsCommittedOne: epoch 2's header
// advance and epoch 3's records shared a sync and epoch 3 went in place;
// then epoch 2's header slot is garbled. Epoch 3's records prove epoch 2
// is whole in place, so recovery keeps epoch 2 and rolls back only 3.
func TestGarbledHeaderWithChainedEpochKeepsCommittedOne(t *testing.T) {
	for _, garble := range []bool{false, true} {
		fdev := newMem(MinSize * 4)
		f, err := Create(fdev)
		if err != nil {
			t.Fatal(err)
		}
		data := newMem(1 << 20)
		copy(data.b, fill(len(data.b), 3))
		b1 := writeEpoch(t, f, data, 2, [][2]int64{{0, 8192}, {65536, 4096}}, nil)
		after2 := append([]byte(nil), data.b...)
		oldHeader := append([]byte(nil), fdev.b[int64((f.gen+1)%2)*slotSize:][:SectorSize]...)
		b2 := b1.Next(3)
		p, err := b2.AppendData(4096, 8192)
		if err != nil {
			t.Fatal(err)
		}
		copy(p, data.b[4096:4096+8192])
		if err := b1.CommitWith(b2); err != nil {
			t.Fatal(err)
		}
		copy(data.b[4096:], fill(8192, 77)) // epoch 3 in place, uncommitted
		if garble {
			garbleSlot(fdev, f.gen)
		} else {
			// The header write of the shared sync was lost, its records
			// were not.
			copy(fdev.b[int64(f.gen%2)*slotSize:], oldHeader)
		}
		f2, err := Open(fdev)
		if err != nil {
			t.Fatal(err)
		}
		res, err := f2.Recover(data)
		if err != nil {
			t.Fatalf("garble=%v: %v", garble, err)
		}
		if !bytes.Equal(data.b, after2) {
			t.Fatalf("garble=%v: recovery did not restore the state after epoch 2", garble)
		}
		if res.Kept != 1 || res.Epoch != 3 {
			t.Fatalf("garble=%v: kept %d epochs and rolled back %d, want 1 and 3", garble, res.Kept, res.Epoch)
		}
		f3, err := Open(fdev)
		if err != nil {
			t.Fatal(err)
		}
		if f3.Committed() != 3 || f3.suspect != "" {
			t.Fatalf("garble=%v: after recovery committed=%d suspect=%q, want 3 and none", garble, f3.Committed(), f3.suspect)
		}
	}
}
