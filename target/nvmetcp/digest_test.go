package nvmetcp

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/anvilproject/anvil/target/nvme"
)

// connectDigests runs ICReq asking for both digests (and hpda) and a
// Connect with digests on.
func (h *rawHost) connectDigests(hpda uint8) {
	h.t.Helper()
	ic := icreq(0, hpda)
	ic[11] = dgstHeader | dgstData
	h.send(ic)
	hdr, _ := h.recv()
	if hdr[0] != typeICResp || hdr[11] != dgstHeader|dgstData {
		h.t.Fatalf("digests not granted: % x", hdr[:16])
	}
	e := sqe(nvme.OpFabrics, 1, 0x01, 1024)
	e[4] = nvme.FabricsConnect
	h.send(withDigests(capsule(e, make([]byte, 1024)), false))
	hdr, _ = h.recv()
	if hdr[0] != typeCapsuleResp || hdr[1]&flagHDGST == 0 {
		h.t.Fatalf("Connect response without header digest: % x", hdr)
	}
}

// withDigests rewrites a digest-less PDU with header and data digests;
// badData corrupts the data digest.
func withDigests(p []byte, badData bool) []byte {
	hl := int(p[2])
	hdr := append([]byte(nil), p[:hl]...)
	data := p[hl:]
	hdr[1] |= flagHDGST
	pdo := 0
	plen := hl + 4
	if len(data) > 0 {
		hdr[1] |= flagDDGST
		pdo = hl + 4
		plen = pdo + len(data) + 4
	}
	hdr[3] = uint8(pdo)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(plen))
	out := binary.LittleEndian.AppendUint32(hdr, digest(hdr))
	if len(data) > 0 {
		out = append(out, data...)
		d := digest(data)
		if badData {
			d++
		}
		out = binary.LittleEndian.AppendUint32(out, d)
	}
	return out
}

func TestHeaderDigestError(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.connectDigests(0)
	b := withDigests(capsule(sqe(nvme.OpFlush, 2, 0x5a, 0), nil), false)
	b[capsuleCmdLen]++ // break the header digest
	h.send(b)
	h.expectTermReq(fesHeaderDigest, 0)
}

// TestDataDigestErrorFailsCommand: a bad data digest fails the command
// with Transient Transport Error; the connection goes on. With HPDA 3
// the C2HData of the following read starts at a 16-byte boundary.
func TestDataDigestErrorFailsCommand(t *testing.T) {
	_, addr := startServer(t, Config{})
	h := dial(t, addr)
	h.connectDigests(3)
	h.send(withDigests(capsule(sqe(nvme.OpWrite, 4, 0x01, 512), make([]byte, 512)), true))
	hdr, _ := h.recv()
	if st := nvme.Status(binary.LittleEndian.Uint16(hdr[8+14:]) >> 1); hdr[0] != typeCapsuleResp || st != nvme.StatusTransientTransport {
		t.Fatalf("want Transient Transport Error, got % x", hdr)
	}
	h.send(withDigests(capsule(sqe(nvme.OpRead, 5, 0x5a, 512), nil), false))
	ch := make([]byte, 8)
	if _, err := io.ReadFull(h.r, ch); err != nil {
		t.Fatal(err)
	}
	if ch[0] != typeC2HData || ch[2] != 24 || ch[3] != 32 || ch[1]&(flagHDGST|flagDDGST) != flagHDGST|flagDDGST {
		t.Fatalf("C2HData header % x: want HLEN 24, PDO 32 (28 aligned to 16), both digests", ch)
	}
	rest := make([]byte, binary.LittleEndian.Uint32(ch[4:])-8)
	if _, err := io.ReadFull(h.r, rest); err != nil {
		t.Fatal(err)
	}
	full := append(ch, rest...)
	if binary.LittleEndian.Uint32(full[24:]) != digest(full[:24]) {
		t.Fatalf("bad header digest on C2HData")
	}
	data := full[32 : 32+512]
	if binary.LittleEndian.Uint32(full[32+512:]) != digest(data) {
		t.Fatalf("bad data digest on C2HData")
	}
}
