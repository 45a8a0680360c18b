package nvmetcp

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
)

// fakeQueue is a one-namespace memory store: writes (opcode 1) store
// their data at SLBA*512, reads (opcode 2) return it.
type fakeQueue struct {
	mu   sync.Mutex
	mem  []byte
	done chan struct{}
}

func (q *fakeQueue) ID() uint16             { return 1 }
func (q *fakeQueue) Size() int              { return 4 }
func (q *fakeQueue) InCapsuleDataSize() int { return 8192 }
func (q *fakeQueue) Close()                 {}
func (q *fakeQueue) Done() <-chan struct{}  { return q.done }
func (q *fakeQueue) Execute(ctx context.Context, cmd *nvme.Command) (nvme.Completion, []byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	off := int(cmd.CDW(10)) * 512
	switch cmd.Opcode() {
	case nvme.OpWrite:
		copy(q.mem[off:], cmd.Data)
	case nvme.OpRead:
		return nvme.Completion{}, append([]byte(nil), q.mem[off:off+int(cmd.DataLength())]...)
	}
	return nvme.Completion{DW0: 7}, nil
}
func (q *fakeQueue) ExecuteFused(ctx context.Context, a, b *nvme.Command) (nvme.Completion, nvme.Completion, []byte) {
	return nvme.Completion{}, nvme.Completion{}, nil
}

type fakeCore struct{ q *fakeQueue }

func (f *fakeCore) connect(ctx context.Context, cmd *nvme.Command, local net.Addr) (coreQueue, nvme.Completion) {
	return f.q, nvme.Completion{}
}
func (f *fakeCore) maxDataTransfer() int { return 1 << 20 }

type rawHost struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s := newServer(cfg, &fakeCore{q: &fakeQueue{mem: make([]byte, 1<<20), done: make(chan struct{})}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, ln.Addr().String()
}

func dial(t *testing.T, addr string) *rawHost {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return &rawHost{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (h *rawHost) send(b []byte) {
	if _, err := h.nc.Write(b); err != nil {
		h.t.Fatal(err)
	}
}

// recv reads one PDU (no digests) and returns header and data.
func (h *rawHost) recv() (hdr, data []byte) {
	h.t.Helper()
	ch := make([]byte, 8)
	if _, err := io.ReadFull(h.r, ch); err != nil {
		h.t.Fatalf("recv: %v", err)
	}
	plen := binary.LittleEndian.Uint32(ch[4:])
	rest := make([]byte, plen-8)
	if _, err := io.ReadFull(h.r, rest); err != nil {
		h.t.Fatalf("recv body: %v", err)
	}
	all := append(ch, rest...)
	hl, pdo := int(all[2]), int(all[3])
	if pdo == 0 {
		return all[:hl], nil
	}
	return all[:hl], all[pdo:]
}

func icreq(pfv uint16, hpda uint8) []byte {
	b := make([]byte, icLen)
	b[0], b[2] = typeICReq, icLen
	binary.LittleEndian.PutUint32(b[4:], icLen)
	binary.LittleEndian.PutUint16(b[8:], pfv)
	b[10] = hpda
	return b
}

func capsule(sqe [64]byte, icd []byte) []byte {
	b := make([]byte, capsuleCmdLen, capsuleCmdLen+len(icd))
	b[0], b[2] = typeCapsuleCmd, capsuleCmdLen
	if len(icd) > 0 {
		b[3] = capsuleCmdLen
	}
	copy(b[8:], sqe[:])
	b = append(b, icd...)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(b)))
	return b
}

func sqe(op uint8, cid uint16, sglType uint8, sglLen uint32) [64]byte {
	var e [64]byte
	e[0], e[1] = op, 1<<6
	binary.LittleEndian.PutUint16(e[2:], cid)
	binary.LittleEndian.PutUint32(e[32:], sglLen)
	e[39] = sglType
	return e
}

func (h *rawHost) connect() {
	h.send(icreq(0, 0))
	hdr, _ := h.recv()
	if hdr[0] != typeICResp || binary.LittleEndian.Uint32(hdr[12:]) < 4096 {
		h.t.Fatalf("bad ICResp % x", hdr[:16])
	}
	e := sqe(nvme.OpFabrics, 1, 0x01, 1024)
	e[4] = nvme.FabricsConnect
	h.send(capsule(e, make([]byte, 1024)))
	hdr, _ = h.recv()
	if hdr[0] != typeCapsuleResp || binary.LittleEndian.Uint16(hdr[8+14:])>>1 != 0 {
		h.t.Fatalf("Connect failed: % x", hdr)
	}
}

func h2c(cid, ttag uint16, off uint32, data []byte, last bool) []byte {
	b := make([]byte, dataHdrLen, dataHdrLen+len(data))
	b[0], b[2], b[3] = typeH2CData, dataHdrLen, dataHdrLen
	if last {
		b[1] = flagLastPDU
	}
	binary.LittleEndian.PutUint16(b[8:], cid)
	binary.LittleEndian.PutUint16(b[10:], ttag)
	binary.LittleEndian.PutUint32(b[12:], off)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(data)))
	b = append(b, data...)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(b)))
	return b
}

// TestWriteR2TAndRead writes 16 KiB solicited by R2T in four H2CData PDUs
// and reads it back in one C2HData.
func TestWriteR2TAndRead(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.connect()
	data := make([]byte, 16384)
	for i := range data {
		data[i] = byte(i * 7)
	}
	h.send(capsule(sqe(nvme.OpWrite, 5, 0x5a, 16384), nil))
	hdr, _ := h.recv()
	if hdr[0] != typeR2T || binary.LittleEndian.Uint32(hdr[16:]) != 16384 {
		t.Fatalf("want R2T for 16384 bytes, got % x", hdr)
	}
	ttag := binary.LittleEndian.Uint16(hdr[10:])
	for i := 0; i < 4; i++ {
		h.send(h2c(5, ttag, uint32(i*4096), data[i*4096:(i+1)*4096], i == 3))
	}
	hdr, _ = h.recv()
	if hdr[0] != typeCapsuleResp || binary.LittleEndian.Uint32(hdr[8:]) != 7 || binary.LittleEndian.Uint16(hdr[8+12:]) != 5 {
		t.Fatalf("bad write completion % x", hdr)
	}
	h.send(capsule(sqe(nvme.OpRead, 6, 0x5a, 16384), nil))
	hdr, got := h.recv()
	if hdr[0] != typeC2HData || hdr[1]&flagLastPDU == 0 || string(got) != string(data) {
		t.Fatalf("bad C2HData % x (%d bytes)", hdr, len(got))
	}
	hdr, _ = h.recv()
	if hdr[0] != typeCapsuleResp {
		t.Fatalf("want CapsuleResp after C2HData, got % x", hdr)
	}
}

// expectTermReq reads PDUs until a C2HTermReq, checks FES/FEI, then EOF.
func (h *rawHost) expectTermReq(fes uint16, fei uint32) {
	h.t.Helper()
	for {
		hdr, _ := h.recv()
		if hdr[0] != typeC2HTermReq {
			continue
		}
		if got := binary.LittleEndian.Uint16(hdr[8:]); got != fes {
			h.t.Fatalf("FES %#x, want %#x", got, fes)
		}
		if got := binary.LittleEndian.Uint32(hdr[10:]); got != fei {
			h.t.Fatalf("FEI %#x, want %#x", got, fei)
		}
		break
	}
	if _, err := h.r.ReadByte(); err != io.EOF {
		h.t.Fatalf("connection not closed after C2HTermReq: %v", err)
	}
}

func TestICReqPFV1(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.send(icreq(1, 0))
	h.expectTermReq(fesUnsupportedParam, offICPFV)
}

func TestBadPDUType(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.connect()
	b := capsule(sqe(nvme.OpFlush, 2, 0x5a, 0), nil)
	b[0] = 0x0b
	h.send(b)
	h.expectTermReq(fesInvalidHeaderField, offType)
	// Another connection still works.
	h2 := dial(t, addr)
	h2.connect()
}

func TestH2CDataCorners(t *testing.T) {
	_, addr := startServer(t, Config{})
	cases := []struct {
		name string
		pdu  func(ttag uint16) []byte
		fes  uint16
		fei  uint32
	}{
		{"unknown ttag", func(tt uint16) []byte { return h2c(5, tt+1, 0, make([]byte, 4096), true) }, fesInvalidHeaderField, offTTAG},
		{"datao mismatch", func(tt uint16) []byte { return h2c(5, tt, 4096, make([]byte, 4096), false) }, fesPDUSequence, 0},
		{"beyond r2t", func(tt uint16) []byte { return h2c(5, tt, 0, make([]byte, 8192+4), true) }, fesDataOutOfRange, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := dial(t, addr)
			h.connect()
			h.send(capsule(sqe(nvme.OpWrite, 5, 0x5a, 8192), nil))
			hdr, _ := h.recv()
			if hdr[0] != typeR2T {
				t.Fatalf("want R2T, got % x", hdr)
			}
			h.send(tc.pdu(binary.LittleEndian.Uint16(hdr[10:])))
			h.expectTermReq(tc.fes, tc.fei)
		})
	}
}

func TestTooManyOutstanding(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.connect()
	// Writes waiting for their data stay outstanding: the fifth of a
	// four-entry queue is a protocol error.
	for i := 0; i < 5; i++ {
		h.send(capsule(sqe(nvme.OpWrite, uint16(10+i), 0x5a, 4096), nil))
	}
	h.expectTermReq(fesPDUSequence, 0)
}

func TestInCapsuleTooLarge(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.connect()
	h.send(capsule(sqe(nvme.OpWrite, 3, 0x01, 8196), make([]byte, 8196)))
	h.expectTermReq(fesInvalidHeaderField, offPLEN)
}
