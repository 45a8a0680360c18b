package iscsi

import (
	"bytes"
	"errors"
	"testing"
)

func TestPDURoundTrip(t *testing.T) {
	ext := make([]byte, 20) // 32-byte CDB: 16 in the BHS, 16 in the AHS
	ext[0], ext[1], ext[2], ext[3] = 0, 17, ahsExtendedCDB, 0
	for i := 4; i < 20; i++ {
		ext[i] = byte(i)
	}
	bidi := []byte{0, 5, ahsBidiReadLen, 0, 0, 0x10, 0, 0}
	cases := []struct {
		name   string
		op     byte
		ahs    []byte
		data   []byte
		hd, dd bool
	}{
		{"nop no data", opNOPOut, nil, nil, false, false},
		{"nop 1 byte (padding)", opNOPOut, nil, []byte{7}, false, false},
		{"scsi ext cdb", opSCSICmd, ext, bytes.Repeat([]byte{1}, 513), false, false},
		{"scsi bidi ahs", opSCSICmd, bidi, nil, false, false},
		{"data-out digests", opDataOut, nil, bytes.Repeat([]byte{0xab}, 4095), true, true},
		{"login header digest", opLoginReq, nil, []byte("InitiatorName=x\x00"), true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h bhs
			h[0] = tc.op
			h[1] = 0x80
			h.setITT(0x11223344)
			h.setU32(24, 99)
			raw := encodePDU(&h, tc.ahs, tc.data, tc.hd, tc.dd)
			if len(raw)%4 != 0 {
				t.Fatalf("encoded length %d not padded", len(raw))
			}
			p, err := decodePDU(raw, 1<<20, tc.hd, tc.dd)
			if err != nil {
				t.Fatal(err)
			}
			if p.hdr.opcode() != tc.op || p.hdr.itt() != 0x11223344 || p.hdr.u32(24) != 99 {
				t.Fatalf("header mismatch % x", p.hdr[:])
			}
			if !bytes.Equal(p.data, tc.data) || !bytes.Equal(p.ahs, tc.ahs) {
				t.Fatalf("data/ahs mismatch")
			}
			if tc.op == opSCSICmd {
				extCDB, bidiLen, err := parseAHS(p.ahs)
				if err != nil {
					t.Fatal(err)
				}
				if tc.ahs[2] == ahsExtendedCDB && len(extCDB) != 16 {
					t.Fatalf("ext CDB %d bytes", len(extCDB))
				}
				if tc.ahs[2] == ahsBidiReadLen && bidiLen != 0x100000 {
					t.Fatalf("bidi read length %#x", bidiLen)
				}
			}
			// Flip a bit anywhere covered by a digest: decoding must fail.
			if tc.hd || tc.dd {
				bad := append([]byte(nil), raw...)
				pos := 5 // header byte
				if !tc.hd {
					pos = bhsLen + 1
				}
				bad[pos] ^= 0x01
				if _, err := decodePDU(bad, 1<<20, tc.hd, tc.dd); err == nil {
					t.Fatal("corrupted PDU decoded without error")
				}
			}
			// Truncation is an error, never a panic.
			for cut := 1; cut < len(raw); cut += 7 {
				if _, err := decodePDU(raw[:cut], 1<<20, tc.hd, tc.dd); err == nil {
					t.Fatalf("truncated at %d decoded", cut)
				}
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	var h bhs
	h[0] = opNOPOut
	raw := encodePDU(&h, nil, make([]byte, 9000), false, false)
	if _, err := decodePDU(raw, 8192, false, false); !errors.Is(err, errPDU) {
		t.Fatalf("oversized data segment: %v", err)
	}
	h[0] = 0x3e // not an initiator opcode
	raw = encodePDU(&h, nil, nil, false, false)
	if _, err := decodePDU(raw, 8192, false, false); !errors.Is(err, errPDU) {
		t.Fatalf("bad opcode: %v", err)
	}
	for _, ahs := range [][]byte{
		{0, 0, 1, 0},                          // zero length
		{0, 9, 1, 0, 0, 0, 0, 0},              // length past the end
		{0, 1, 9, 0},                          // unknown type
		{0, 4, ahsBidiReadLen, 0, 0, 0, 0, 0}, // bidi with wrong length
	} {
		h[0] = opSCSICmd
		raw = encodePDU(&h, ahs, nil, false, false)
		if _, err := decodePDU(raw, 8192, false, false); !errors.Is(err, errPDU) {
			t.Fatalf("AHS % x: %v", ahs, err)
		}
	}
}

func TestSerialArithmetic(t *testing.T) {
	cases := []struct {
		a, b uint32
		less bool
	}{
		{1, 2, true}, {2, 1, false}, {5, 5, false},
		{0xffffffff, 0, true}, {0, 0xffffffff, false},
		{0xfffffff0, 0x10, true}, {0x10, 0xfffffff0, false},
	}
	for _, tc := range cases {
		if got := snLess(tc.a, tc.b); got != tc.less {
			t.Errorf("snLess(%#x, %#x) = %v", tc.a, tc.b, got)
		}
		if got := snLE(tc.a, tc.b); got != (tc.less || tc.a == tc.b) {
			t.Errorf("snLE(%#x, %#x) = %v", tc.a, tc.b, got)
		}
	}
}

func TestBufPool(t *testing.T) {
	for _, n := range []int{1, 512, 4096, 4097, 65536, 1 << 20, 3<<20 + 1} {
		b := getBuf(n)
		if len(*b) < n {
			t.Fatalf("getBuf(%d) = %d bytes", n, len(*b))
		}
		putBuf(b)
	}
}

// TestPDUWriter checks that batched output (small segments copied, large
// ones passed to writev) produces exactly the bytes encodePDU would.
func TestPDUWriter(t *testing.T) {
	for _, digests := range []bool{false, true} {
		var out bytes.Buffer
		w := pduWriter{w: &out}
		var want []byte
		sizes := []int{0, 1, 4095, directThreshold, directThreshold + 3, 7, 128 << 10, 0}
		for i, n := range sizes {
			var h bhs
			h[0] = opDataIn
			h.setITT(uint32(i))
			data := bytes.Repeat([]byte{byte(i + 1)}, n)
			want = append(want, encodePDU(&h, nil, data, digests, digests)...)
			w.write(&h, data, digests, digests)
			if i == 3 {
				if err := w.flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("digests=%v: writer output differs from encodePDU (%d vs %d bytes)", digests, out.Len(), len(want))
		}
		if w.size != 0 || len(w.vec) != 0 {
			t.Fatal("writer not reset after flush")
		}
	}
}
