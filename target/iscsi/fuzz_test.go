package iscsi

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzDecodePDU feeds arbitrary bytes, as a stream of PDUs, to the reader
// a connection reads with (pduReader over a buffered reader, as in
// conn.readLoop), and parses the AHS of SCSI commands as handleSCSICmd
// does. Every PDU must come out as an error or well formed, never a panic,
// and a PDU read must re-encode to bytes that read back the same.
func FuzzDecodePDU(f *testing.F) {
	var h bhs
	h[0] = opSCSICmd | flagImmed
	h[1] = flagFinal | flagWrite
	h.setITT(1)
	f.Add(encodePDU(&h, nil, []byte("data"), false, false), false, false)
	f.Add(encodePDU(&h, []byte{0, 5, ahsBidiReadLen, 0, 0, 0, 2, 0}, nil, true, false), true, false)
	ext := []byte{0, 17, ahsExtendedCDB, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	f.Add(encodePDU(&h, ext, make([]byte, 513), true, true), true, true)
	h[0] = opLoginReq
	f.Add(encodePDU(&h, nil, keysData("InitiatorName=iqn.x", "AuthMethod=None"), false, false), false, false)
	h[0] = opDataOut
	two := encodePDU(&h, nil, make([]byte, 4096), false, true)
	f.Add(append(two, two...), false, true)
	f.Fuzz(func(t *testing.T, b []byte, hd, dd bool) {
		rd := &pduReader{r: bufio.NewReaderSize(bytes.NewReader(b), 64<<10), maxData: 1 << 16, headerDigest: hd, dataDigest: dd}
		for {
			p, err := readPDU(rd)
			if err != nil {
				return
			}
			if len(p.data) != p.hdr.dataLen() || len(p.ahs) != p.hdr.totalAHSLen() {
				t.Fatalf("read lengths disagree with header")
			}
			if p.hdr.opcode() == opSCSICmd {
				if _, _, err := parseAHS(p.ahs); err != nil {
					continue
				}
			}
			again := &pduReader{r: bufio.NewReader(bytes.NewReader(encodePDU(&p.hdr, p.ahs, p.data, hd, dd))), maxData: 1 << 16, headerDigest: hd, dataDigest: dd}
			q, err := readPDU(again)
			if err != nil {
				t.Fatalf("re-encoded PDU does not read back: %v", err)
			}
			if q.hdr != p.hdr || string(q.data) != string(p.data) || string(q.ahs) != string(p.ahs) {
				t.Fatalf("round trip changed the PDU")
			}
		}
	})
}

// FuzzParseKeys feeds arbitrary text to the key=value parser and the
// login negotiator: no input may panic, parsed keys must be valid names,
// and every answer must be re-parseable.
func FuzzParseKeys(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.1993-08.org.debian:01:x\x00SessionType=Normal\x00"))
	f.Add([]byte("HeaderDigest=CRC32C,None\x00MaxBurstLength=262144\x00FirstBurstLength=65536\x00"))
	f.Add([]byte("InitialR2T=No\x00ImmediateData=Yes\x00MaxRecvDataSegmentLength=512\x00"))
	f.Add([]byte("X-com.example=1\x00=\x00"))
	f.Add([]byte("CHAP_A=5\x00CHAP_R=0xdeadbeef\x00"))
	f.Add([]byte("SendTargets=All\x00\x00\x00"))
	ours := testOurs()
	f.Fuzz(func(t *testing.T, b []byte) {
		kvs, err := parseKeys(b)
		if err != nil {
			return
		}
		n := newNegotiator(ours, true)
		var resp []byte
		for _, p := range kvs {
			if checkKeyName([]byte(p.Key)) != nil {
				t.Fatalf("invalid key %q accepted", p.Key)
			}
			v, err := n.negotiate(p.Key, p.Value)
			if err != nil || v == "" {
				continue
			}
			resp = appendKey(resp, p.Key, v)
		}
		if _, err := parseKeys(resp); err != nil {
			t.Fatalf("our answer %q does not parse: %v", resp, err)
		}
		if n.cur.FirstBurstLength > ours.FirstBurstLength || n.cur.MaxBurstLength > ours.MaxBurstLength ||
			n.cur.MaxOutstandingR2T > ours.MaxOutstandingR2T || n.cur.ErrorRecoveryLevel != 0 || n.cur.MaxConnections != 1 {
			t.Fatalf("negotiated past our limits: %+v", n.cur)
		}
		_ = decodeBinary
	})
}
