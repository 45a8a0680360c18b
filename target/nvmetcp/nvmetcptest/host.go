// Package nvmetcptest is a minimal NVMe/TCP host for tests: it dials a
// target, runs ICReq (with the digests a test asks for), sends Connect and
// any SQE with its data (in-capsule or answering R2Ts), reads C2HData and
// CapsuleResp, and can send raw bytes for bad-input tests. One command at
// a time; it is test tooling, not an initiator.
package nvmetcptest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"time"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Host is one NVMe/TCP connection (one queue).
type Host struct {
	nc net.Conn
	r  *bufio.Reader
	// HeaderDigest and DataDigest are what ICResp granted.
	HeaderDigest, DataDigest bool
	// MaxH2CData is the target's MAXH2CDATA.
	MaxH2CData uint32
	// Timeout bounds each exchange (default 10 s).
	Timeout time.Duration
}

// Dial connects to addr and runs ICReq/ICResp asking for the digests given.
func Dial(addr string, headerDigest, dataDigest bool) (*Host, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("nvmetcptest: dial %s: %w", addr, err)
	}
	h := &Host{nc: nc, r: bufio.NewReader(nc), Timeout: 10 * time.Second}
	ic := make([]byte, 128)
	ic[2] = 128
	binary.LittleEndian.PutUint32(ic[4:], 128)
	if headerDigest {
		ic[11] |= 1
	}
	if dataDigest {
		ic[11] |= 2
	}
	if err := h.SendRaw(ic); err != nil {
		nc.Close()
		return nil, err
	}
	typ, hdr, _, err := h.RecvPDU()
	if err != nil || typ != 0x01 {
		nc.Close()
		return nil, fmt.Errorf("nvmetcptest: no ICResp (type %#x): %v", typ, err)
	}
	h.HeaderDigest, h.DataDigest = hdr[11]&1 != 0, hdr[11]&2 != 0
	h.MaxH2CData = binary.LittleEndian.Uint32(hdr[12:])
	return h, nil
}

// Close closes the connection.
func (h *Host) Close() error { return h.nc.Close() }

// SendRaw writes b as is.
func (h *Host) SendRaw(b []byte) error {
	h.nc.SetWriteDeadline(time.Now().Add(h.Timeout))
	if _, err := h.nc.Write(b); err != nil {
		return fmt.Errorf("nvmetcptest: write: %w", err)
	}
	return nil
}

// RecvPDU reads one PDU and returns its type, header (HLEN bytes) and
// data, checking digests.
func (h *Host) RecvPDU() (typ uint8, hdr, data []byte, err error) {
	h.nc.SetReadDeadline(time.Now().Add(h.Timeout))
	ch := make([]byte, 8)
	if _, err := io.ReadFull(h.r, ch); err != nil {
		return 0, nil, nil, fmt.Errorf("nvmetcptest: read PDU: %w", err)
	}
	plen := binary.LittleEndian.Uint32(ch[4:])
	if plen < 8 || plen > 64<<20 {
		return 0, nil, nil, fmt.Errorf("nvmetcptest: PLEN %d", plen)
	}
	all := make([]byte, plen)
	copy(all, ch)
	if _, err := io.ReadFull(h.r, all[8:]); err != nil {
		return 0, nil, nil, fmt.Errorf("nvmetcptest: read PDU body: %w", err)
	}
	hl, pdo, flags := int(all[2]), int(all[3]), all[1]
	if hl > len(all) {
		return 0, nil, nil, fmt.Errorf("nvmetcptest: HLEN %d > PLEN %d", hl, plen)
	}
	if flags&1 != 0 {
		if hl+4 > len(all) || binary.LittleEndian.Uint32(all[hl:]) != crc32.Checksum(all[:hl], castagnoli) {
			return 0, nil, nil, fmt.Errorf("nvmetcptest: header digest mismatch")
		}
	}
	if pdo > 0 {
		end := len(all)
		if flags&2 != 0 {
			end -= 4
			if end < pdo || binary.LittleEndian.Uint32(all[end:]) != crc32.Checksum(all[pdo:end], castagnoli) {
				return 0, nil, nil, fmt.Errorf("nvmetcptest: data digest mismatch")
			}
		}
		if pdo > end {
			return 0, nil, nil, fmt.Errorf("nvmetcptest: PDO %d beyond data", pdo)
		}
		data = all[pdo:end]
	}
	return all[0], all[:hl], data, nil
}

// pdu frames hdr (HLEN bytes) and data with the negotiated digests.
func (h *Host) pdu(hdr, data []byte) []byte {
	hl := len(hdr)
	hdr[2] = uint8(hl)
	full := hl
	if h.HeaderDigest {
		hdr[1] |= 1
		full += 4
	}
	plen := full
	if len(data) > 0 {
		hdr[3] = uint8(full)
		plen += len(data)
		if h.DataDigest {
			hdr[1] |= 2
			plen += 4
		}
	}
	binary.LittleEndian.PutUint32(hdr[4:], uint32(plen))
	out := append([]byte(nil), hdr...)
	if h.HeaderDigest {
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(hdr, castagnoli))
	}
	if len(data) > 0 {
		out = append(out, data...)
		if h.DataDigest {
			out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(data, castagnoli))
		}
	}
	return out
}

// Command sends sqe (SGL descriptor filled here: in-capsule for write
// data up to inCapsule bytes, else transport SGL with R2T) and returns
// the 16-byte CQE and any C2H data. readLen is the host buffer for
// controller-to-host data.
func (h *Host) Command(sqe [64]byte, write []byte, readLen int, inCapsule int) (cqe [16]byte, data []byte, err error) {
	sqe[1] = sqe[1]&^0xc0 | 0x40 // SGL
	var icd []byte
	switch {
	case len(write) > 0 && len(write) <= inCapsule:
		binary.LittleEndian.PutUint64(sqe[24:], 0)
		binary.LittleEndian.PutUint32(sqe[32:], uint32(len(write)))
		sqe[39] = 0x01
		icd = write
	case len(write) > 0:
		binary.LittleEndian.PutUint32(sqe[32:], uint32(len(write)))
		sqe[39] = 0x5a
	default:
		binary.LittleEndian.PutUint32(sqe[32:], uint32(readLen))
		sqe[39] = 0x5a
	}
	hdr := make([]byte, 72)
	hdr[0] = 0x04
	copy(hdr[8:], sqe[:])
	if err := h.SendRaw(h.pdu(hdr, icd)); err != nil {
		return cqe, nil, err
	}
	cid := binary.LittleEndian.Uint16(sqe[2:])
	for {
		typ, ph, pd, err := h.RecvPDU()
		if err != nil {
			return cqe, data, err
		}
		switch typ {
		case 0x09: // R2T
			ttag := binary.LittleEndian.Uint16(ph[10:])
			off := binary.LittleEndian.Uint32(ph[12:])
			n := binary.LittleEndian.Uint32(ph[16:])
			if uint64(off)+uint64(n) > uint64(len(write)) {
				return cqe, nil, fmt.Errorf("nvmetcptest: R2T %d+%d beyond %d bytes", off, n, len(write))
			}
			for sent := uint32(0); sent < n; {
				m := min(n-sent, h.MaxH2CData)
				d := make([]byte, 24)
				d[0] = 0x06
				if sent+m == n {
					d[1] = 0x04
				}
				binary.LittleEndian.PutUint16(d[8:], cid)
				binary.LittleEndian.PutUint16(d[10:], ttag)
				binary.LittleEndian.PutUint32(d[12:], off+sent)
				binary.LittleEndian.PutUint32(d[16:], m)
				if err := h.SendRaw(h.pdu(d, write[off+sent:off+sent+m])); err != nil {
					return cqe, nil, err
				}
				sent += m
			}
		case 0x07: // C2HData
			data = append(data, pd...)
			if ph[1]&0x08 != 0 {
				binary.LittleEndian.PutUint16(cqe[12:], cid)
				return cqe, data, nil
			}
		case 0x05: // CapsuleResp
			copy(cqe[:], ph[8:24])
			return cqe, data, nil
		default:
			return cqe, data, fmt.Errorf("nvmetcptest: unexpected PDU type %#x: % x", typ, ph)
		}
	}
}

// ConnectData builds the 1024-byte Connect data.
func ConnectData(hostID [16]byte, cntlid uint16, subNQN, hostNQN string) []byte {
	d := make([]byte, 1024)
	copy(d, hostID[:])
	binary.LittleEndian.PutUint16(d[16:], cntlid)
	copy(d[256:512], subNQN)
	copy(d[512:768], hostNQN)
	return d
}

// ConnectSQE builds a Fabrics Connect SQE.
func ConnectSQE(cid, qid, sqsize uint16, cattr uint8, kato uint32) [64]byte {
	var e [64]byte
	e[0], e[4] = 0x7f, 0x01
	binary.LittleEndian.PutUint16(e[2:], cid)
	binary.LittleEndian.PutUint16(e[42:], qid)
	binary.LittleEndian.PutUint16(e[44:], sqsize)
	e[46] = cattr
	binary.LittleEndian.PutUint32(e[48:], kato)
	return e
}

// Status returns a CQE's status field (without the phase bit).
func Status(cqe [16]byte) uint16 { return binary.LittleEndian.Uint16(cqe[14:]) >> 1 }
