package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedVolume holds the first read of gateOff, after reading it, until
// release is closed: it stops a COMPARE AND WRITE between its compare and
// its write.
type gatedVolume struct {
	*memVolume
	gateOff int64
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (g *gatedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := g.memVolume.ReadAt(ctx, p, off)
	if off == g.gateOff && g.armed.CompareAndSwap(true, false) {
		close(g.reached)
		<-g.release
	}
	return err
}

// yieldingVolume gives other goroutines a chance to run after every read,
// widening the window between a read-modify-write's read and its write.
type yieldingVolume struct{ *memVolume }

func (y yieldingVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := y.memVolume.ReadAt(ctx, p, off)
	for range 3 {
		runtime.Gosched()
	}
	return err
}

func cawCDB(lba uint64, n byte) []byte {
	c := cdb(opCompareAndWrite, 16)
	binary.BigEndian.PutUint64(c[2:], lba)
	c[13] = n
	return c
}

func unmapCmd(lba uint64, n uint32) ([]byte, []byte) {
	c := cdb(opUnmap, 10)
	pl := make([]byte, 8+16)
	binary.BigEndian.PutUint16(pl, 6+16)
	binary.BigEndian.PutUint16(pl[2:], 16)
	binary.BigEndian.PutUint64(pl[8:], lba)
	binary.BigEndian.PutUint32(pl[16:], n)
	binary.BigEndian.PutUint16(c[7:], uint16(len(pl)))
	return c, pl
}

// TestCompareAndWriteExcludesWriters stops a COMPARE AND WRITE between its
// compare and its write and sends another command writing the same blocks:
// it must wait, so that it lands after the COMPARE AND WRITE. Without the
// lock it slips in and the COMPARE AND WRITE then overwrites it while
// reporting GOOD for a compare against data that was no longer there.
func TestCompareAndWriteExcludesWriters(t *testing.T) {
	const lba = 300 // blocks 300..301, inside one 1 MiB region
	const srcLBA = 1000
	naa := []byte{0x60, 0x01, 0x40, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01}
	old, cawData := fill(1024, 1), fill(1024, 2)
	other := fill(1024, 3)
	ff := bytes.Repeat([]byte{0xf0}, 512)
	for _, tc := range []struct {
		name string
		cdb  []byte
		out  []byte
		want []byte // blocks lba..lba+1 once both commands are done
	}{
		{"WRITE(10)", rw(opWrite10, 10, lba, 2), other, other},
		{"WRITE(16) one block", rw(opWrite16, 16, lba+1, 1), other[:512], append(append([]byte(nil), cawData[:512]...), other[:512]...)},
		{"WRITE AND VERIFY(10)", rw(opWriteVerify10, 10, lba, 2), other, other},
		{"WRITE SAME(16)", rw(opWriteSame16, 16, lba, 2), ff, append(append([]byte(nil), ff...), ff...)},
		{"WRITE ATOMIC(16)", func() []byte {
			c := cdb(opWriteAtomic16, 16)
			binary.BigEndian.PutUint64(c[2:], lba)
			binary.BigEndian.PutUint16(c[12:], 2)
			return c
		}(), other, other},
		{"UNMAP", func() []byte { c, _ := unmapCmd(lba, 2); return c }(), func() []byte { _, p := unmapCmd(lba, 2); return p }(), make([]byte, 1024)},
		{"EXTENDED COPY", nil, nil, other},
		{"ORWRITE", rw(opOrWrite16, 16, lba, 2), other, func() []byte {
			b := append([]byte(nil), cawData...)
			for i := range b {
				b[i] |= other[i]
			}
			return b
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := newMemVolume(testBlocks, 512)
			g := &gatedVolume{memVolume: mem, gateOff: lba * 512, reached: make(chan struct{}), release: make(chan struct{})}
			lu := NewLogicalUnit(g, LUConfig{NAA: naa})
			tgt := NewTarget("iqn.2026-11.io.anvil:test")
			if err := tgt.AddLUN(0, lu); err != nil {
				t.Fatal(err)
			}
			n := &Nexus{InitiatorPort: "iqn.i1,i,0x1", TargetPort: "iqn.2026-11.io.anvil:test,t,0x0001"}
			exec := func(c, out []byte) Result {
				return tgt.Execute(context.Background(), &Command{Nexus: n, CDB: c, DataOut: out, ExpectedDataIn: 1 << 20})
			}
			exec(cdb(opTestUnitReady, 6), nil) // power-on UA
			expectGood(t, exec(rw(opWrite10, 10, lba, 2), old))
			expectGood(t, exec(rw(opWrite10, 10, srcLBA, 2), other))
			c, out := tc.cdb, tc.out
			if c == nil {
				out = xcopyList(0, 2, [][]byte{naa}, [][5]uint64{{0, 0, 2, srcLBA, lba}})
				c = xcopyCDB(len(out))
			}

			g.armed.Store(true)
			cawDone := make(chan Result, 1)
			go func() { cawDone <- exec(cawCDB(lba, 2), append(append([]byte(nil), old...), cawData...)) }()
			<-g.reached
			otherDone := make(chan Result, 1)
			go func() { otherDone <- exec(c, out) }()
			select {
			case r := <-otherDone:
				close(g.release)
				<-cawDone
				t.Fatalf("%s finished (status %#x) between COMPARE AND WRITE's compare and its write", tc.name, r.Status)
			case <-time.After(50 * time.Millisecond):
			}
			close(g.release)
			expectGood(t, <-cawDone)
			expectGood(t, <-otherDone)
			if got := mem.data[lba*512 : (lba+2)*512]; !bytes.Equal(got, tc.want) {
				t.Fatalf("blocks after COMPARE AND WRITE then %s: % x..., want % x...", tc.name, got[:8], tc.want[:8])
			}
		})
	}
}

// TestCompareAndWriteHammer runs COMPARE AND WRITE increments of a counter
// block against a writer that keeps rewriting the block next to it inside
// the same COMPARE AND WRITE range. Each COMPARE AND WRITE writes back the
// neighbour it compared, so one that let a write in between would put an
// old neighbour back: the writer reads its own last write back after every
// write and at the end, and the counter must equal the number of
// COMPARE AND WRITEs that reported GOOD.
func TestCompareAndWriteHammer(t *testing.T) {
	iters := 20000
	if testing.Short() {
		iters = 2000
	}
	vol := newMemVolume(testBlocks, 512)
	lu := NewLogicalUnit(yieldingVolume{vol}, LUConfig{})
	tgt := NewTarget("iqn.2026-11.io.anvil:test")
	if err := tgt.AddLUN(0, lu); err != nil {
		t.Fatal(err)
	}
	const lba = 64 // counter block; lba+1 is the writer's block
	exec := func(n *Nexus, c, out []byte) Result {
		return tgt.Execute(context.Background(), &Command{Nexus: n, CDB: c, DataOut: out, ExpectedDataIn: 1 << 20})
	}
	block := func(v uint64) []byte {
		b := make([]byte, 512)
		binary.BigEndian.PutUint64(b, v)
		b[511] = 0xa5
		return b
	}
	var wg sync.WaitGroup
	var good atomic.Int64
	stop := make(chan struct{})
	errs := make(chan string, 16)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := &Nexus{InitiatorPort: "iqn.caw,i,0x" + string(rune('1'+w))}
			exec(n, cdb(opTestUnitReady, 6), nil)
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := exec(n, rw(opRead10, 10, lba, 2), nil)
				if r.Status != StatusGood {
					errs <- "read failed"
					return
				}
				cur := r.DataIn
				next := append(append(append([]byte(nil), cur...), block(binary.BigEndian.Uint64(cur)+1)...), cur[512:]...)
				r = exec(n, cawCDB(lba, 2), next)
				switch r.Status {
				case StatusGood:
					good.Add(1)
				case StatusCheckCondition:
					if parseSense(t, r.Sense).key != SenseMiscompare {
						errs <- "COMPARE AND WRITE failed"
						return
					}
				default:
					errs <- "COMPARE AND WRITE status"
					return
				}
			}
		}()
	}
	wn := &Nexus{InitiatorPort: "iqn.writer,i,0x1"}
	exec(wn, cdb(opTestUnitReady, 6), nil)
	lost := 0
	for i := 1; i <= iters; i++ {
		if r := exec(wn, rw(opWrite10, 10, lba+1, 1), block(uint64(i))); r.Status != StatusGood {
			t.Fatalf("write %d: status %#x", i, r.Status)
		}
		r := exec(wn, rw(opRead10, 10, lba+1, 1), nil)
		if got := binary.BigEndian.Uint64(r.DataIn); got != uint64(i) {
			lost++
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if got := binary.BigEndian.Uint64(vol.data[(lba+1)*512:]); got != uint64(iters) {
		lost++
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged writes were overwritten by COMPARE AND WRITEs that compared the data before them", lost)
	}
	if got := binary.BigEndian.Uint64(vol.data[lba*512:]); got != uint64(good.Load()) {
		t.Fatalf("counter %d after %d successful COMPARE AND WRITEs", got, good.Load())
	}
	if good.Load() == 0 {
		t.Fatal("no COMPARE AND WRITE succeeded")
	}
}
