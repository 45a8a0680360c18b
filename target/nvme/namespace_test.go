package nvme

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anvilproject/anvil/internal/rangelock"
	"github.com/anvilproject/anvil/target/scsi"
)

func TestIdentifyNamespace(t *testing.T) {
	le := binary.LittleEndian
	vol := newNSVolume(nsTestBlocks, 512)
	n := NewNamespace(vol, NamespaceConfig{NSID: 3, NGUID: [16]byte{0xaa, 1}, UUID: [16]byte{0xbb, 2}})
	id := n.identify(identifyContext{multiController: true})
	for name, off := range map[string]int{"NSZE": idnsNSZE, "NCAP": idnsNCAP, "NUSE": idnsNUSE} {
		if got := le.Uint64(id[off:]); got != nsTestBlocks {
			t.Errorf("%s %d, want %d", name, got, nsTestBlocks)
		}
	}
	// Thin (MaxUnmap), atomic units (64 KiB = 128 blocks), never-reused
	// identifiers, optimal performance fields.
	if got, want := id[idnsNSFEAT], byte(nsfeatThin|nsfeatAtom|nsfeatNoUID|nsfeatOpt); got != want {
		t.Errorf("NSFEAT %#x, want %#x", got, want)
	}
	for name, off := range map[string]int{"NAWUN": idnsNAWUN, "NAWUPF": idnsNAWUPF, "NACWU": idnsNACWU} {
		if got := le.Uint16(id[off:]); got != 127 {
			t.Errorf("%s %d, want 127 (128 blocks, 0's based)", name, got)
		}
	}
	if le.Uint16(id[idnsNPWG:]) != 0 || le.Uint16(id[idnsNOWS:]) != 127 {
		t.Errorf("NPWG %d NOWS %d, want 0 and 127", le.Uint16(id[idnsNPWG:]), le.Uint16(id[idnsNOWS:]))
	}
	if id[idnsNLBAF] != 0 || id[idnsFLBAS] != 0 {
		t.Errorf("NLBAF %d FLBAS %d", id[idnsNLBAF], id[idnsFLBAS])
	}
	if lbaf := le.Uint32(id[idnsLBAF0:]); lbaf != 9<<16 {
		t.Errorf("LBAF0 %#x, want LBADS 9, no metadata", lbaf)
	}
	if id[idnsNMIC] != 1 {
		t.Errorf("NMIC %#x with several controllers", id[idnsNMIC])
	}
	if id[idnsDLFEAT] != 0x09 {
		t.Errorf("DLFEAT %#x, want 0x09", id[idnsDLFEAT])
	}
	if !bytes.Equal(id[idnsNGUID:idnsNGUID+16], n.cfg.NGUID[:]) || !bytes.Equal(id[idnsEUI64:idnsEUI64+8], make([]byte, 8)) {
		t.Errorf("NGUID % x EUI64 % x", id[idnsNGUID:idnsNGUID+16], id[idnsEUI64:idnsEUI64+8])
	}
	if id[idnsNSATTR] != 0 {
		t.Errorf("NSATTR %#x on a writable volume", id[idnsNSATTR])
	}

	// One controller, a thick 4 KiB volume with one-block atomicity and
	// no optimal transfer: none of the optional features.
	v4 := newNSVolume(256, 4096)
	v4.limits.MaxUnmap, v4.limits.AtomicWriteMax, v4.limits.OptimalTransfer = 0, 0, 0
	id = NewNamespace(v4, NamespaceConfig{NSID: 1}).identify(identifyContext{})
	if id[idnsNSFEAT] != nsfeatNoUID || id[idnsNMIC] != 0 {
		t.Errorf("thick volume: NSFEAT %#x NMIC %#x", id[idnsNSFEAT], id[idnsNMIC])
	}
	if le.Uint16(id[idnsNAWUPF:]) != 0 || le.Uint16(id[idnsNOWS:]) != 0 {
		t.Error("thick volume: atomic or optimal fields set without their NSFEAT bits")
	}
	if lbaf := le.Uint32(id[idnsLBAF0:]); lbaf != 12<<16 || le.Uint64(id[idnsNSZE:]) != 256 {
		t.Errorf("4 KiB volume: LBAF0 %#x NSZE %d", lbaf, le.Uint64(id[idnsNSZE:]))
	}
	// An atomic size past the 16-bit field is capped, not wrapped.
	v4.limits.AtomicWriteMax = 1 << 40
	id = NewNamespace(v4, NamespaceConfig{NSID: 1}).identify(identifyContext{})
	if got := le.Uint16(id[idnsNAWUPF:]); got != 0xffff {
		t.Errorf("huge atomic size: NAWUPF %#x", got)
	}
}

func TestNamespaceDescriptors(t *testing.T) {
	n, _ := newTestNamespace(t)
	d := n.descriptors()
	if len(d) != 4096 {
		t.Fatalf("descriptor list is %d bytes", len(d))
	}
	type desc struct {
		typ byte
		val []byte
	}
	var got []desc
	for p := d; len(p) >= 4 && p[0] != 0; {
		l := int(p[1])
		if p[2] != 0 || p[3] != 0 || 4+l > len(p) {
			t.Fatalf("malformed descriptor % x", p[:4])
		}
		got = append(got, desc{p[0], p[4 : 4+l]})
		p = p[4+l:]
	}
	want := []desc{{nidtNGUID, n.cfg.NGUID[:]}, {nidtUUID, n.cfg.UUID[:]}, {nidtCSI, []byte{csiNVM}}}
	if len(got) != len(want) {
		t.Fatalf("descriptors %v, want %v", got, want)
	}
	for i := range want {
		if got[i].typ != want[i].typ || !bytes.Equal(got[i].val, want[i].val) {
			t.Errorf("descriptor %d: %d % x, want %d % x", i, got[i].typ, got[i].val, want[i].typ, want[i].val)
		}
	}
}

// gatedNSVolume holds the first read of gateOff, after reading it, until
// release is closed: it stops a fused compare-and-write between its
// compare and its write.
type gatedNSVolume struct {
	*nsVolume
	gateOff int64
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (g *gatedNSVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := g.nsVolume.ReadAt(ctx, p, off)
	if off == g.gateOff && g.armed.CompareAndSwap(true, false) {
		close(g.reached)
		<-g.release
	}
	return err
}

// TestFusedExcludesWriters stops a fused compare-and-write between its
// compare and its write and sends another write of the same blocks, from
// a second namespace of the volume and from an iSCSI LU of it, both sharing
// the range locks: the write must wait and land after the fused write.
// Without the exclusive lock it slips in and is then silently overwritten.
func TestFusedExcludesWriters(t *testing.T) {
	const lba = 300
	old, cawData, other := pattern(1024, 1), pattern(1024, 2), pattern(1024, 3)
	for _, via := range []string{"nvme", "scsi"} {
		t.Run(via, func(t *testing.T) {
			mem := newNSVolume(nsTestBlocks, 512)
			copy(mem.data[lba*512:], old)
			g := &gatedNSVolume{nsVolume: mem, gateOff: lba * 512, reached: make(chan struct{}), release: make(chan struct{})}
			locks := new(rangelock.Locks)
			caw := NewNamespace(g, NamespaceConfig{NSID: 1, Locks: locks})
			var write func() bool
			switch via {
			case "nvme":
				w := NewNamespace(mem, NamespaceConfig{NSID: 2, Locks: locks})
				write = func() bool {
					c, _ := w.execute(context.Background(), ioCmd(OpWrite, lba, 2, 0, other, 512))
					return c.Status.OK()
				}
			case "scsi":
				lu := scsi.NewLogicalUnit(mem, scsi.LUConfig{RangeLocks: locks})
				tgt := scsi.NewTarget("iqn.2026-11.io.anvil:test")
				if err := tgt.AddLUN(0, lu); err != nil {
					t.Fatal(err)
				}
				nx := &scsi.Nexus{InitiatorPort: "iqn.i,i,0x1"}
				cdb := make([]byte, 10)
				cdb[0] = 0x2a // WRITE(10)
				binary.BigEndian.PutUint32(cdb[2:], lba)
				binary.BigEndian.PutUint16(cdb[7:], 2)
				write = func() bool {
					for range 4 { // the first commands report the power-on unit attention
						r := tgt.Execute(context.Background(), &scsi.Command{Nexus: nx, CDB: cdb, DataOut: other})
						if r.Status == scsi.StatusGood {
							return true
						}
					}
					return false
				}
			}
			g.armed.Store(true)
			fused := make(chan [2]Completion)
			go func() {
				a, b := fusedPair(lba, 2, old, cawData)
				x, y := caw.executeFused(context.Background(), a, b)
				fused <- [2]Completion{x, y}
			}()
			<-g.reached
			wrote := make(chan bool)
			go func() { wrote <- write() }()
			select {
			case <-wrote:
				t.Fatal("a write of the blocks completed between the compare and the write of a fused compare-and-write")
			case <-time.After(50 * time.Millisecond):
			}
			close(g.release)
			if r := <-fused; !r[0].Status.OK() || !r[1].Status.OK() {
				t.Fatalf("fused compare-and-write: %v %v", r[0].Status, r[1].Status)
			}
			if !<-wrote {
				t.Fatal("the other write failed")
			}
			if !bytes.Equal(mem.data[lba*512:(lba+2)*512], other) {
				t.Fatal("the other write did not land last")
			}
		})
	}
}

// yieldingNSVolume gives other goroutines a chance to run after every
// read, widening the window between a compare and its write.
type yieldingNSVolume struct{ *nsVolume }

func (y yieldingNSVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := y.nsVolume.ReadAt(ctx, p, off)
	for range 3 {
		runtime.Gosched()
	}
	return err
}

// TestFusedHammer runs fused compare-and-write increments of a counter
// block against a writer, on a second namespace sharing the locks, that
// keeps rewriting the block next to it inside the fused range. Each fused
// write puts back the neighbour it compared, so one that let a write in
// between would restore an old neighbour: the writer reads its last write
// back after every write, and the counter must equal the number of fused
// commands that succeeded.
func TestFusedHammer(t *testing.T) {
	iters := 20000
	if testing.Short() {
		iters = 2000
	}
	mem := newNSVolume(nsTestBlocks, 512)
	locks := new(rangelock.Locks)
	caw := NewNamespace(yieldingNSVolume{mem}, NamespaceConfig{NSID: 1, Locks: locks})
	wr := NewNamespace(mem, NamespaceConfig{NSID: 2, Locks: locks})
	const lba = 64
	block := func(v uint64) []byte {
		b := make([]byte, 512)
		binary.LittleEndian.PutUint64(b, v)
		b[511] = 0xa5
		return b
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	var good atomic.Int64
	stop := make(chan struct{})
	errs := make(chan string, 16)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, cur := caw.execute(ctx, ioCmd(OpRead, lba, 2, 0, nil, 512))
				if !c.Status.OK() {
					errs <- "read failed: " + c.Status.String()
					return
				}
				next := append(block(binary.LittleEndian.Uint64(cur)+1), cur[512:]...)
				a, b := fusedPair(lba, 2, cur, next)
				x, y := caw.executeFused(ctx, a, b)
				switch {
				case x.Status.OK() && y.Status.OK():
					good.Add(1)
				case x.Status == StatusCompareFailure && y.Status == StatusAbortFailedFused:
				default:
					errs <- "fused: " + x.Status.String() + " / " + y.Status.String()
					return
				}
			}
		}()
	}
	lost := 0
	for i := 1; i <= iters; i++ {
		if c, _ := wr.execute(ctx, ioCmd(OpWrite, lba+1, 1, 0, block(uint64(i)), 512)); !c.Status.OK() {
			t.Fatalf("write %d: %v", i, c.Status)
		}
		_, got := wr.execute(ctx, ioCmd(OpRead, lba+1, 1, 0, nil, 512))
		if binary.LittleEndian.Uint64(got) != uint64(i) {
			lost++
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if binary.LittleEndian.Uint64(mem.data[(lba+1)*512:]) != uint64(iters) {
		lost++
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged writes were overwritten by fused compare-and-writes that compared the data before them", lost)
	}
	if got := binary.LittleEndian.Uint64(mem.data[lba*512:]); got != uint64(good.Load()) {
		t.Fatalf("counter %d after %d successful fused increments", got, good.Load())
	}
	if good.Load() == 0 {
		t.Fatal("no fused compare-and-write succeeded: the test proved nothing")
	}
}
