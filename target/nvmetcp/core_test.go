package nvmetcp

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
)

// TestRealCoreDiscovery connects to the real core's discovery subsystem
// through the transport and reads Identify Controller (C2HData, then
// CapsuleResp with SQHD advanced).
func TestRealCoreDiscovery(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	tgt := nvme.NewTarget(nvme.TargetConfig{Logger: quiet})
	s := NewServer(Config{Logger: quiet}, tgt)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	h := dial(t, ln.Addr().String())
	h.send(icreq(0, 0))
	if hdr, _ := h.recv(); hdr[0] != typeICResp {
		t.Fatalf("bad ICResp % x", hdr)
	}
	e := sqe(nvme.OpFabrics, 1, 0x01, 1024)
	e[4] = nvme.FabricsConnect
	binary.LittleEndian.PutUint16(e[44:], 31) // SQSIZE
	data := make([]byte, 1024)
	data[0] = 1 // host ID
	binary.LittleEndian.PutUint16(data[16:], 0xffff)
	copy(data[256:], "nqn.2014-08.org.nvmexpress.discovery")
	copy(data[512:], "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555")
	h.send(capsule(e, data))
	hdr, _ := h.recv()
	if hdr[0] != typeCapsuleResp {
		t.Fatalf("want CapsuleResp, got % x", hdr)
	}
	if st := binary.LittleEndian.Uint16(hdr[8+14:]) >> 1; st != 0 {
		t.Fatalf("Connect status %#x", st)
	}
	// Enable the controller: Property Set CC.EN.
	ps := sqe(nvme.OpFabrics, 3, 0x5a, 0)
	ps[4] = nvme.FabricsPropertySet
	binary.LittleEndian.PutUint32(ps[44:], 0x14)
	binary.LittleEndian.PutUint32(ps[48:], 0x00460001)
	h.send(capsule(ps, nil))
	if hdr, _ := h.recv(); hdr[0] != typeCapsuleResp || binary.LittleEndian.Uint16(hdr[8+14:])>>1 != 0 {
		t.Fatalf("Property Set CC failed: % x", hdr)
	}
	id := sqe(nvme.OpIdentify, 2, 0x5a, 4096)
	binary.LittleEndian.PutUint32(id[40:], 1) // CNS 1: controller
	h.send(capsule(id, nil))
	hdr, got := h.recv()
	if hdr[0] != typeC2HData || len(got) != 4096 || binary.LittleEndian.Uint16(hdr[8:]) != 2 {
		t.Fatalf("want 4096-byte C2HData for CID 2, got % x (%d bytes)", hdr, len(got))
	}
	if nqn := string(got[768:804]); nqn != "nqn.2014-08.org.nvmexpress.discovery" {
		t.Fatalf("SUBNQN %q", nqn)
	}
	hdr, _ = h.recv()
	if hdr[0] != typeCapsuleResp || binary.LittleEndian.Uint16(hdr[8+8:]) != 3 {
		t.Fatalf("want CapsuleResp with SQHD 3, got % x", hdr)
	}
}
