package nvmetcp

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
)

// TestSuccessFlagWithoutSQFlow: with SQ flow control disabled at Connect,
// a successful read ends with C2HData LAST_PDU|SUCCESS and no
// CapsuleResp; a write still gets its CapsuleResp (DW0 is not zero).
func TestSuccessFlagWithoutSQFlow(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.send(icreq(0, 0))
	h.recv()
	e := sqe(nvme.OpFabrics, 1, 0x01, 1024)
	e[4] = nvme.FabricsConnect
	e[46] = cattrDisableSQFlow
	h.send(capsule(e, make([]byte, 1024)))
	if hdr, _ := h.recv(); hdr[0] != typeCapsuleResp {
		t.Fatalf("Connect: % x", hdr)
	}
	h.send(capsule(sqe(nvme.OpRead, 2, 0x5a, 512), nil))
	hdr, data := h.recv()
	if hdr[0] != typeC2HData || hdr[1] != flagLastPDU|flagSuccess || len(data) != 512 {
		t.Fatalf("want C2HData LAST|SUCCESS, got % x", hdr)
	}
	h.send(capsule(sqe(nvme.OpWrite, 3, 0x01, 512), make([]byte, 512)))
	hdr, _ = h.recv()
	if hdr[0] != typeCapsuleResp || binary.LittleEndian.Uint16(hdr[8+12:]) != 3 || binary.LittleEndian.Uint16(hdr[8+8:]) != 0 {
		t.Fatalf("want CapsuleResp for CID 3 with SQHD 0 (flow control off), got % x", hdr)
	}
}

// TestPerAddressCap closes connections over MaxConnectionsPerAddress at
// accept, before ICResp.
func TestPerAddressCap(t *testing.T) {
	s, addr := startServer(t, Config{MaxConnectionsPerAddress: 1})
	h := dial(t, addr)
	h.connect()
	h2 := dial(t, addr)
	h2.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := h2.r.ReadByte(); err != io.EOF {
		t.Fatalf("second connection from one address not closed: %v", err)
	}
	if st := s.Stats(); st.RefusedPerAddress != 1 || st.Connections != 1 {
		t.Fatalf("stats %+v", st)
	}
}
