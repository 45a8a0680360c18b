package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/anvilproject/anvil/engine"
)

func TestPowerOnUnitAttention(t *testing.T) {
	f := newFixture(t)
	n3 := &Nexus{InitiatorPort: "iqn.i3,i,0x1"}
	// INQUIRY and REPORT LUNS neither report nor clear the UA.
	r := f.exec(n3, inquiryCDB(false, 0, 96), nil)
	expectGood(t, r)
	r = f.exec(n3, reportLUNsCDB(0, 64), nil)
	expectGood(t, r)
	// The first other command reports it...
	r = f.exec(n3, cdb(opTestUnitReady, 6), nil)
	expectSense(t, r, SenseUnitAttention, ascPowerOnReset)
	// ...once.
	expectGood(t, f.exec(n3, cdb(opTestUnitReady, 6), nil))

	// REQUEST SENSE returns a pending UA as data and clears it.
	n4 := &Nexus{InitiatorPort: "iqn.i4,i,0x1"}
	c := cdb(opRequestSense, 6)
	c[4] = 252
	r = f.exec(n4, c, nil)
	expectGood(t, r)
	p := parseSense(t, r.DataIn)
	if p.key != SenseUnitAttention || p.asc != 0x29 || p.ascq != 0 {
		t.Fatalf("REQUEST SENSE data %#x/%02x/%02x, want 6/29/00", p.key, p.asc, p.ascq)
	}
	r = f.exec(n4, c, nil)
	expectGood(t, r)
	if p := parseSense(t, r.DataIn); p.key != SenseNoSense || p.asc != 0 {
		t.Fatalf("second REQUEST SENSE %#x/%02x, want NO SENSE", p.key, p.asc)
	}
	expectGood(t, f.exec(n4, cdb(opTestUnitReady, 6), nil))
}

func TestRequestSenseFormats(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		desc   bool
		format byte
	}{{false, 0x70}, {true, 0x72}} {
		c := cdb(opRequestSense, 6)
		if tc.desc {
			c[1] = 1
		}
		c[4] = 252
		r := f.run(c, nil)
		expectGood(t, r)
		if r.DataIn[0] != tc.format {
			t.Errorf("DESC=%v: response code %#x, want %#x", tc.desc, r.DataIn[0], tc.format)
		}
	}
	// Allocation length truncates.
	c := cdb(opRequestSense, 6)
	c[4] = 4
	r := f.run(c, nil)
	expectGood(t, r)
	if len(r.DataIn) != 4 {
		t.Errorf("REQUEST SENSE alloc 4 returned %d bytes", len(r.DataIn))
	}
}

func inquiryCDB(evpd bool, page byte, alloc uint16) []byte {
	c := cdb(opInquiry, 6)
	if evpd {
		c[1] = 1
	}
	c[2] = page
	binary.BigEndian.PutUint16(c[3:], alloc)
	return c
}

func TestInquiryStandard(t *testing.T) {
	f := newFixture(t)
	r := f.run(inquiryCDB(false, 0, 255), nil)
	expectGood(t, r)
	d := r.DataIn
	if len(d) != 96 || int(d[4])+5 != len(d) {
		t.Fatalf("standard INQUIRY length %d additional %d", len(d), d[4])
	}
	if d[0] != 0 || d[1]&0x80 != 0 || d[2] != 6 || d[3]&0x0f != 2 || d[3]&0x10 == 0 || d[7]&0x02 == 0 {
		t.Fatalf("standard INQUIRY header % x", d[:8])
	}
	if d[5]&0x08 == 0 {
		t.Errorf("standard INQUIRY byte 5 %#x: 3PC clear although EXTENDED COPY is supported", d[5])
	}
	if got := string(d[8:16]); got != "ANVIL   " {
		t.Errorf("vendor %q", got)
	}
	if got := string(d[16:32]); got != "Anvil Volume    " {
		t.Errorf("product %q", got)
	}
	if got := binary.BigEndian.Uint16(d[58+4:]); got != 0x0460 {
		t.Errorf("version descriptor 3 = %#x, want SPC-4", got)
	}
	// Truncation to the allocation length.
	r = f.run(inquiryCDB(false, 0, 5), nil)
	expectGood(t, r)
	if len(r.DataIn) != 5 || r.TransferLength != 5 {
		t.Errorf("alloc 5: got %d bytes, transfer length %d", len(r.DataIn), r.TransferLength)
	}
	// Unmapped LUN: peripheral qualifier 011b, device type 1Fh.
	r = f.tgt.Execute(context.Background(), &Command{Nexus: f.n1, LUN: 7, CDB: inquiryCDB(false, 0, 96)})
	expectGood(t, r)
	if r.DataIn[0] != 0x7f {
		t.Errorf("unmapped LUN INQUIRY byte 0 = %#x, want 0x7f", r.DataIn[0])
	}
	// Page code without EVPD.
	p := expectSense(t, f.run(inquiryCDB(false, 0x80, 96), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if !p.sksv || !p.cd || p.field != 2 {
		t.Errorf("field pointer %+v, want CDB byte 2", p)
	}
	// CMDDT.
	c := inquiryCDB(false, 0, 96)
	c[1] = 0x02
	expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
}

func TestInquiryVPD(t *testing.T) {
	f := newFixture(t)
	get := func(page byte) []byte {
		t.Helper()
		r := f.run(inquiryCDB(true, page, 1024), nil)
		expectGood(t, r)
		d := r.DataIn
		if d[1] != page || int(binary.BigEndian.Uint16(d[2:]))+4 != len(d) {
			t.Fatalf("VPD %#x header % x len %d", page, d[:4], len(d))
		}
		return d
	}
	if d := get(0x00); !bytes.Equal(d[4:], supportedVPDPages) {
		t.Errorf("supported pages % x", d[4:])
	}
	if d := get(0x80); string(d[4:]) != "SN0001" {
		t.Errorf("serial %q", d[4:])
	}
	d := get(0x83)
	var sawNAA, sawPort, sawRel, sawTPG, sawT10 bool
	for p := d[4:]; len(p) >= 4; p = p[4+int(p[3]):] {
		body := p[4 : 4+int(p[3])]
		assoc, typ := (p[1]>>4)&3, p[1]&0xf
		switch {
		case assoc == 0 && typ == desigNAA:
			sawNAA = bytes.Equal(body, f.lu.cfg.NAA)
		case assoc == 0 && typ == desigT10Vendor:
			sawT10 = strings.HasPrefix(string(body), "ANVIL   ")
		case assoc == 1 && typ == desigSCSIName:
			sawPort = strings.TrimRight(string(body), "\x00") == "iqn.2026-11.io.anvil:test,t,0x0001" && len(body)%4 == 0
		case assoc == 1 && typ == desigRelTgtPort:
			sawRel = binary.BigEndian.Uint16(body[2:]) == 1
		case assoc == 1 && typ == desigTPG:
			sawTPG = binary.BigEndian.Uint16(body[2:]) == 1
		}
	}
	if !sawNAA || !sawPort || !sawRel || !sawTPG || !sawT10 {
		t.Errorf("device identification: NAA %v port %v rel %v tpg %v t10 %v", sawNAA, sawPort, sawRel, sawTPG, sawT10)
	}
	d = get(0xb0)
	if got := binary.BigEndian.Uint32(d[8:]); got != 65536 {
		t.Errorf("MAXIMUM TRANSFER LENGTH %d, want 65536 (32 MiB / 512)", got)
	}
	if got := binary.BigEndian.Uint32(d[12:]); got != 128 {
		t.Errorf("OPTIMAL TRANSFER LENGTH %d, want 128", got)
	}
	if got := binary.BigEndian.Uint32(d[20:]); got != maxUnmapLBACount {
		t.Errorf("MAXIMUM UNMAP LBA COUNT %d", got)
	}
	if got := binary.BigEndian.Uint32(d[44:]); got != 128 {
		t.Errorf("MAXIMUM ATOMIC TRANSFER LENGTH %d, want 128", got)
	}
	if d := get(0xb1); binary.BigEndian.Uint16(d[4:]) != 1 {
		t.Errorf("rotation rate % x", d[4:6])
	}
	if d := get(0xb2); d[5]&0xe0 != 0xe0 || d[6]&7 != 2 {
		t.Errorf("provisioning % x", d[4:])
	}
	p := expectSense(t, f.run(inquiryCDB(true, 0x99, 255), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 2 {
		t.Errorf("invalid VPD page pointer %d", p.field)
	}
	// Thick volume: no provisioning bits.
	f.vol.limits.MaxUnmap = 0
	if d := get(0xb2); d[5] != 0 || d[6] != 0 {
		t.Errorf("thick provisioning % x", d[4:])
	}
}

func reportLUNsCDB(sel byte, alloc uint32) []byte {
	c := cdb(opReportLUNs, 12)
	c[2] = sel
	binary.BigEndian.PutUint32(c[6:], alloc)
	return c
}

func TestReportLUNs(t *testing.T) {
	f := newFixture(t)
	if err := f.tgt.AddLUN(3, NewLogicalUnit(newMemVolume(8, 512), LUConfig{})); err != nil {
		t.Fatal(err)
	}
	if err := f.tgt.AddLUN(3, f.lu); err == nil {
		t.Fatal("AddLUN on a taken LUN succeeded")
	}
	r := f.run(reportLUNsCDB(0, 256), nil)
	expectGood(t, r)
	if got := binary.BigEndian.Uint32(r.DataIn); got != 16 || r.DataIn[9] != 0 || r.DataIn[17] != 3 {
		t.Fatalf("REPORT LUNS % x", r.DataIn)
	}
	// REPORT LUNS cleared the REPORTED LUNS DATA HAS CHANGED UA for n1, but
	// n2 still has it.
	expectGood(t, f.run(cdb(opTestUnitReady, 6), nil))
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascReportedLUNsChanged)

	p := expectSense(t, f.run(reportLUNsCDB(0, 15), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 6 {
		t.Errorf("alloc < 16 pointer %d", p.field)
	}
	expectSense(t, f.run(reportLUNsCDB(3, 256), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	r = f.run(reportLUNsCDB(1, 256), nil)
	expectGood(t, r)
	if binary.BigEndian.Uint32(r.DataIn) != 0 {
		t.Errorf("well-known LUN list % x", r.DataIn)
	}
	// Works on an unmapped LUN too.
	r = f.tgt.Execute(context.Background(), &Command{Nexus: f.n1, LUN: 9, CDB: reportLUNsCDB(0, 256)})
	expectGood(t, r)
	if !slicesEqual(f.tgt.LUNs(), []uint64{0, 3}) || !f.tgt.HasLUN(3) {
		t.Errorf("LUNs %v", f.tgt.LUNs())
	}
	if err := f.tgt.RemoveLUN(3); err != nil || f.tgt.HasLUN(3) {
		t.Fatalf("RemoveLUN: %v", err)
	}
	if err := f.tgt.RemoveLUN(3); err == nil {
		t.Fatal("RemoveLUN twice succeeded")
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestUnmappedLUN(t *testing.T) {
	f := newFixture(t)
	ex := func(c []byte) Result {
		return f.tgt.Execute(context.Background(), &Command{Nexus: f.n1, LUN: 5, CDB: c})
	}
	expectSense(t, ex(cdb(opTestUnitReady, 6)), SenseIllegalRequest, ascLUNotSupported)
	expectSense(t, ex(rw(opRead10, 10, 0, 1)), SenseIllegalRequest, ascLUNotSupported)
	c := cdb(opRequestSense, 6)
	c[4] = 18
	r := ex(c)
	expectGood(t, r)
	if p := parseSense(t, r.DataIn); p.key != SenseIllegalRequest || p.asc != 0x25 {
		t.Errorf("REQUEST SENSE on unmapped LUN: %#x/%02x", p.key, p.asc)
	}
}

func TestInvalidOpcode(t *testing.T) {
	f := newFixture(t)
	for _, op := range []byte{0x02, 0x04, 0x7f, 0xc0, 0xff, opServiceActionIn16} {
		c := cdb(op, 16)
		c[1] = 0x1f // an unknown service action for 0x9e
		r := f.run(c, nil)
		if r.Status != StatusCheckCondition {
			t.Fatalf("opcode %#x: status %#x", op, r.Status)
		}
		p := parseSense(t, r.Sense)
		if p.key != SenseIllegalRequest || (p.asc != 0x20 && p.asc != 0x24) {
			t.Errorf("opcode %#x: sense %#x/%02x", op, p.key, p.asc)
		}
	}
	expectSense(t, f.run(nil, nil), SenseIllegalRequest, ascInvalidOpcode)
	// A pending unit attention beats an invalid CDB.
	f.lu.CapacityChanged()
	expectSense(t, f.run(cdb(0xc0, 16), nil), SenseUnitAttention, ascCapacityDataChanged)
	expectSense(t, f.run(cdb(0xc0, 16), nil), SenseIllegalRequest, ascInvalidOpcode)
	// A CDB shorter than its opcode's group.
	expectSense(t, f.run([]byte{opRead10, 0, 0}, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	// NACA is not supported.
	c := cdb(opTestUnitReady, 6)
	c[5] = 0x04
	p := expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 5 || !p.bitValid || p.bit != 2 {
		t.Errorf("NACA pointer %+v", p)
	}
}

func TestReadCapacity(t *testing.T) {
	f := newFixture(t)
	r := f.run(cdb(opReadCapacity10, 10), nil)
	expectGood(t, r)
	if binary.BigEndian.Uint32(r.DataIn) != testBlocks-1 || binary.BigEndian.Uint32(r.DataIn[4:]) != 512 {
		t.Errorf("READ CAPACITY(10) % x", r.DataIn)
	}
	c := cdb(opReadCapacity10, 10)
	c[5] = 1 // LBA without PMI
	expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)

	rc16 := func(alloc uint32) []byte {
		c := cdb(opServiceActionIn16, 16)
		c[1] = saReadCapacity16
		binary.BigEndian.PutUint32(c[10:], alloc)
		return c
	}
	r = f.run(rc16(32), nil)
	expectGood(t, r)
	if binary.BigEndian.Uint64(r.DataIn) != testBlocks-1 || binary.BigEndian.Uint32(r.DataIn[8:]) != 512 || r.DataIn[14]&0xc0 != 0xc0 {
		t.Errorf("READ CAPACITY(16) % x", r.DataIn)
	}
	r = f.run(rc16(12), nil)
	expectGood(t, r)
	if len(r.DataIn) != 12 {
		t.Errorf("alloc 12 gave %d bytes", len(r.DataIn))
	}
	r = f.run(rc16(0), nil)
	expectGood(t, r)
	if len(r.DataIn) != 0 {
		t.Errorf("alloc 0 gave %d bytes", len(r.DataIn))
	}

	// A volume bigger than READ CAPACITY(10) can express.
	big := &hugeVolume{memVolume: newMemVolume(1, 512)}
	tgt := NewTarget("big")
	tgt.AddLUN(0, NewLogicalUnit(big, LUConfig{}))
	n := &Nexus{}
	tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb(opTestUnitReady, 6)})
	r = tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb(opReadCapacity10, 10)})
	expectGood(t, r)
	if binary.BigEndian.Uint32(r.DataIn) != 0xffffffff {
		t.Errorf("huge READ CAPACITY(10) % x", r.DataIn)
	}
	// Above MAXIMUM TRANSFER LENGTH (32 MiB).
	r = tgt.Execute(context.Background(), &Command{Nexus: n, CDB: rw(opRead16, 16, 0, 65537)})
	p := expectSense(t, r, SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 10 {
		t.Errorf("transfer length pointer %d", p.field)
	}
}

// hugeVolume claims 4 TiB of 512-byte blocks.
type hugeVolume struct{ *memVolume }

func (h *hugeVolume) Size() int64 { return 4 << 40 }

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestReadWrite(t *testing.T) {
	type fam struct {
		name        string
		read, write byte
		size        int
	}
	for _, fm := range []fam{{"6", opRead6, opWrite6, 6}, {"10", opRead10, opWrite10, 10}, {"12", opRead12, opWrite12, 12}, {"16", opRead16, opWrite16, 16}} {
		t.Run(fm.name, func(t *testing.T) {
			f := newFixture(t)
			data := fill(4*512, byte(fm.size))
			r := f.run(rw(fm.write, fm.size, 100, 4), data)
			expectGood(t, r)
			if r.TransferLength != len(data) {
				t.Errorf("write transfer length %d", r.TransferLength)
			}
			r = f.run(rw(fm.read, fm.size, 100, 4), nil)
			expectGood(t, r)
			if !bytes.Equal(r.DataIn, data) {
				t.Fatal("read back differs")
			}
			// Last block is fine, one past is out of range.
			expectGood(t, f.run(rw(fm.read, fm.size, testBlocks-1, 1), nil))
			expectSense(t, f.run(rw(fm.read, fm.size, testBlocks-1, 2), nil), SenseIllegalRequest, ascLBAOutOfRange)
			expectSense(t, f.run(rw(fm.write, fm.size, testBlocks, 1), make([]byte, 512)), SenseIllegalRequest, ascLBAOutOfRange)
			if fm.size == 6 {
				// Transfer length 0 means 256 blocks.
				r = f.run(rw(fm.read, 6, 0, 0), nil)
				expectGood(t, r)
				if len(r.DataIn) != 256*512 {
					t.Errorf("READ(6) length 0 read %d bytes", len(r.DataIn))
				}
				return
			}
			// Zero blocks is not an error, even at the end.
			r = f.run(rw(fm.read, fm.size, testBlocks, 0), nil)
			expectGood(t, r)
			if len(r.DataIn) != 0 {
				t.Errorf("0-block read returned %d bytes", len(r.DataIn))
			}
			expectSense(t, f.run(rw(fm.read, fm.size, testBlocks+1, 0), nil), SenseIllegalRequest, ascLBAOutOfRange)
			// RDPROTECT / WRPROTECT.
			for _, op := range []byte{fm.read, fm.write} {
				c := rw(op, fm.size, 0, 1)
				c[1] = 0x20
				p := expectSense(t, f.run(c, make([]byte, 512)), SenseIllegalRequest, ascInvalidFieldInCDB)
				if !p.sksv || !p.cd || p.field != 1 || p.bit != 7 {
					t.Errorf("protect pointer %+v", p)
				}
			}
			// FUA goes to the engine, DPO is accepted.
			c := rw(fm.write, fm.size, 0, 1)
			c[1] = 0x18
			expectGood(t, f.run(c, make([]byte, 512)))
			if f.vol.fuaWrites != 1 {
				t.Errorf("FUA writes %d", f.vol.fuaWrites)
			}
			// A large FUA transfer is one engine call, with FUA.
			big := fill(256*512, 5)
			w0, fua0 := f.vol.writes, f.vol.fuaWrites
			c = rw(fm.write, fm.size, 300, 256)
			c[1] = 0x08
			expectGood(t, f.run(c, big))
			if f.vol.writes-w0 != 1 || f.vol.fuaWrites-fua0 != 1 {
				t.Errorf("large write: %d engine writes, %d FUA", f.vol.writes-w0, f.vol.fuaWrites-fua0)
			}
			if r := f.run(rw(fm.read, fm.size, 300, 256), nil); !bytes.Equal(r.DataIn, big) {
				t.Error("large read differs")
			}
		})
	}
}

func TestWriteShortDataOut(t *testing.T) {
	f := newFixture(t)
	a := bytes.Repeat([]byte{'a'}, 1024)
	expectGood(t, f.run(rw(opWrite10, 10, 0, 2), a))
	// Two blocks asked for, one sent: only the first is written.
	expectGood(t, f.run(rw(opWrite10, 10, 0, 2), bytes.Repeat([]byte{'b'}, 512)))
	r := f.run(rw(opRead10, 10, 0, 2), nil)
	if !bytes.Equal(r.DataIn[:512], bytes.Repeat([]byte{'b'}, 512)) || !bytes.Equal(r.DataIn[512:], a[:512]) {
		t.Fatal("short write wrote the wrong blocks")
	}
	// Partial block: nothing written, still GOOD.
	expectGood(t, f.run(rw(opWrite10, 10, 0, 1), make([]byte, 200)))
	r = f.run(rw(opRead10, 10, 0, 1), nil)
	if r.DataIn[0] != 'b' {
		t.Fatal("partial block was written")
	}
}

func TestWriteProtectAndMediumErrors(t *testing.T) {
	f := newFixture(t)
	f.vol.ro = true
	for _, c := range [][]byte{rw(opWrite10, 10, 0, 1), rw(opWrite6, 6, 0, 1), rw(opWriteVerify16, 16, 0, 1), cdbWriteSame(opWriteSame10, 0, 1, false)} {
		expectSense(t, f.run(c, make([]byte, 512)), SenseDataProtect, ascWriteProtected)
	}
	expectGood(t, f.run(rw(opRead10, 10, 0, 1), nil))
	f.vol.ro = false

	f.vol.badRead[10] = true
	expectSense(t, f.run(rw(opRead16, 16, 8, 4), nil), SenseMediumError, ascUnrecoveredReadError)
	expectSense(t, f.run(rw(opVerify10, 10, 8, 4), nil), SenseMediumError, ascUnrecoveredReadError)
	f.vol.badWrite[20] = true
	expectSense(t, f.run(rw(opWrite12, 12, 20, 1), make([]byte, 512)), SenseMediumError, ascWriteError)
	f.vol.failSync = true
	expectSense(t, f.run(cdb(opSyncCache10, 10), nil), SenseMediumError, ascWriteError)
}

func TestVerify(t *testing.T) {
	for _, size := range []int{10, 12, 16} {
		op := map[int]byte{10: opVerify10, 12: opVerify12, 16: opVerify16}[size]
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			f := newFixture(t)
			data := fill(2048, 3)
			expectGood(t, f.run(rw(opWrite10, 10, 50, 4), data))
			expectGood(t, f.run(rw(op, size, 50, 4), nil)) // BYTCHK=0
			c := rw(op, size, 50, 4)
			c[1] = 0x02 // BYTCHK=1
			r := f.run(c, data)
			expectGood(t, r)
			bad := append([]byte(nil), data...)
			bad[1000] ^= 0xff
			p := expectSense(t, f.run(c, bad), SenseMiscompare, ascMiscompareDuringVerify)
			if !p.infoValid || p.info != 1000 {
				t.Errorf("miscompare info %d valid %v", p.info, p.infoValid)
			}
			expectSense(t, f.run(rw(op, size, testBlocks-1, 2), nil), SenseIllegalRequest, ascLBAOutOfRange)
			c = rw(op, size, 0, 1)
			c[1] = 0x04 // BYTCHK=2 is reserved
			expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
			c[1] = 0x20 // VRPROTECT
			expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
			// BYTCHK=3: one block compared with each.
			blk := fill(512, 9)
			expectGood(t, f.run(rw(opWrite10, 10, 200, 3), bytes.Repeat(blk, 3)))
			c = rw(op, size, 200, 3)
			c[1] = 0x06
			expectGood(t, f.run(c, blk))
			c = rw(op, size, 199, 3)
			c[1] = 0x06
			expectSense(t, f.run(c, blk), SenseMiscompare, ascMiscompareDuringVerify)
		})
	}
}

func TestWriteAndVerify(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		op   byte
		size int
	}{{opWriteVerify10, 10}, {opWriteVerify12, 12}, {opWriteVerify16, 16}} {
		data := fill(1024, tc.op)
		expectGood(t, f.run(rw(tc.op, tc.size, 30, 2), data))
		r := f.run(rw(opRead10, 10, 30, 2), nil)
		if !bytes.Equal(r.DataIn, data) {
			t.Fatalf("%#x: data not written", tc.op)
		}
		expectSense(t, f.run(rw(tc.op, tc.size, testBlocks-1, 2), make([]byte, 1024)), SenseIllegalRequest, ascLBAOutOfRange)
		c := rw(tc.op, tc.size, 0, 1)
		c[1] = 0x40
		expectSense(t, f.run(c, make([]byte, 512)), SenseIllegalRequest, ascInvalidFieldInCDB)
	}
}

func TestSyncCacheAndPrefetch(t *testing.T) {
	f := newFixture(t)
	expectGood(t, f.run(cdb(opSyncCache10, 10), nil))
	expectGood(t, f.run(rw(opSyncCache16, 16, 10, 10), nil))
	if f.vol.flushes != 2 {
		t.Errorf("flushes %d", f.vol.flushes)
	}
	expectSense(t, f.run(rw(opSyncCache10, 10, testBlocks, 1), nil), SenseIllegalRequest, ascLBAOutOfRange)
	for _, c := range [][]byte{rw(opPreFetch10, 10, 0, 10), rw(opPreFetch16, 16, testBlocks-5, 5), rw(opPreFetch10, 10, testBlocks, 0)} {
		expectGood(t, f.run(c, nil))
	}
	expectSense(t, f.run(rw(opPreFetch16, 16, testBlocks-5, 6), nil), SenseIllegalRequest, ascLBAOutOfRange)
	expectSense(t, f.run(rw(opPreFetch10, 10, testBlocks+1, 0), nil), SenseIllegalRequest, ascLBAOutOfRange)
}

func modeSense6(dbd bool, pc, page, sub, alloc byte) []byte {
	c := cdb(opModeSense6, 6)
	if dbd {
		c[1] = 0x08
	}
	c[2] = pc<<6 | page
	c[3] = sub
	c[4] = alloc
	return c
}

func TestModeSense(t *testing.T) {
	f := newFixture(t)
	r := f.run(modeSense6(false, 0, pageAll, 0, 255), nil)
	expectGood(t, r)
	d := r.DataIn
	if int(d[0])+1 != len(d) || d[3] != 8 || d[2]&0x80 != 0 {
		t.Fatalf("MODE SENSE(6) header % x", d[:4])
	}
	if binary.BigEndian.Uint32(d[4:]) != testBlocks || binary.BigEndian.Uint32(d[8:])&0xffffff != 512 {
		t.Errorf("block descriptor % x", d[4:12])
	}
	pages := map[byte][]byte{}
	for p := d[12:]; len(p) >= 2; p = p[2+int(p[1]):] {
		pages[p[0]&0x3f] = p[:2+int(p[1])]
	}
	if c := pages[pageCaching]; c == nil || c[2]&0x04 == 0 {
		t.Errorf("caching page % x", c)
	}
	if c := pages[pageControl]; c == nil || c[2]&0x04 != 0 {
		t.Errorf("control page % x", c)
	}
	if pages[pageInfoExcept] == nil {
		t.Error("no informational exceptions page")
	}
	// DBD, single page, and the write cache reflected.
	f.vol.wce = false
	r = f.run(modeSense6(true, 0, pageCaching, 0, 255), nil)
	expectGood(t, r)
	if r.DataIn[3] != 0 || len(r.DataIn) != 4+20 || r.DataIn[4+2]&0x04 != 0 {
		t.Errorf("DBD caching % x", r.DataIn)
	}
	// Changeable values.
	r = f.run(modeSense6(true, pcChangeable, pageCaching, 0, 255), nil)
	if r.DataIn[4+2] != 0x04 {
		t.Errorf("changeable caching % x", r.DataIn)
	}
	// Saved values are not supported.
	expectSense(t, f.run(modeSense6(false, pcSaved, pageAll, 0, 255), nil), SenseIllegalRequest, ascSavingNotSupported)
	// Unknown page and subpage.
	p := expectSense(t, f.run(modeSense6(false, 0, 0x11, 0, 255), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 2 {
		t.Errorf("bad page pointer %d", p.field)
	}
	expectSense(t, f.run(modeSense6(false, 0, pageCaching, 5, 255), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	expectGood(t, f.run(modeSense6(false, 0, pageAll, 0xff, 255), nil))
	// Truncation.
	r = f.run(modeSense6(false, 0, pageAll, 0, 4), nil)
	if len(r.DataIn) != 4 || int(r.DataIn[0])+1 <= 4 {
		t.Errorf("truncated MODE SENSE % x", r.DataIn)
	}
	// WP in the device-specific parameter.
	f.vol.ro = true
	r = f.run(modeSense6(true, 0, pageAll, 0, 255), nil)
	if r.DataIn[2]&0x80 == 0 {
		t.Error("WP not set on a read-only volume")
	}
	f.vol.ro = false

	// MODE SENSE(10) with LLBAA.
	c := cdb(opModeSense10, 10)
	c[1] = 0x10
	c[2] = pageControl
	binary.BigEndian.PutUint16(c[7:], 512)
	r = f.run(c, nil)
	expectGood(t, r)
	d = r.DataIn
	if int(binary.BigEndian.Uint16(d))+2 != len(d) || d[4]&1 == 0 || binary.BigEndian.Uint16(d[6:]) != 16 {
		t.Fatalf("MODE SENSE(10) header % x", d[:8])
	}
	if binary.BigEndian.Uint64(d[8:]) != testBlocks || binary.BigEndian.Uint32(d[20:]) != 512 || d[24] != pageControl {
		t.Errorf("long descriptor % x", d[8:25])
	}
}

// modeSelect6 wraps pages in a MODE SELECT(6) parameter list header.
func modeSelect6(pages []byte, sp bool) ([]byte, []byte) {
	c := cdb(opModeSelect6, 6)
	c[1] = 0x10
	if sp {
		c[1] |= 1
	}
	pl := append(make([]byte, 4), pages...)
	c[4] = byte(len(pl))
	return c, pl
}

func TestModeSelect(t *testing.T) {
	f := newFixture(t)
	caching := f.lu.modePage(pageCaching, pcCurrent)
	caching[2] &^= 0x04
	c, pl := modeSelect6(caching, false)
	expectGood(t, f.run(c, pl))
	if f.vol.wce {
		t.Fatal("WCE=0 not applied")
	}
	// The other nexus learns about it; this one does not.
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascModeParametersChanged)
	expectGood(t, f.run(cdb(opTestUnitReady, 6), nil))

	// D_SENSE switches to descriptor sense.
	ctl := f.lu.modePage(pageControl, pcCurrent)
	ctl[2] |= 0x04
	c, pl = modeSelect6(ctl, false)
	expectGood(t, f.run(c, pl))
	r := f.run(rw(opRead10, 10, testBlocks, 1), nil)
	if r.Sense[0] != 0x72 {
		t.Fatalf("sense format %#x after D_SENSE=1", r.Sense[0])
	}
	expectSense(t, r, SenseIllegalRequest, ascLBAOutOfRange)
	// Field pointers survive descriptor format.
	p := expectSense(t, f.run(inquiryCDB(true, 0x42, 64), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if !p.sksv || p.field != 2 {
		t.Errorf("descriptor field pointer %+v", p)
	}

	// Non-changeable field: 26/00 pointing into the parameter list.
	ctl = f.lu.modePage(pageControl, pcCurrent)
	ctl[5] |= 0x40 // TAS
	c, pl = modeSelect6(ctl, false)
	p = expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidFieldInParamList)
	if !p.sksv || p.cd || p.field != 4+5 || !p.bitValid || p.bit != 6 {
		t.Errorf("param pointer %+v", p)
	}
	// Wrong page length.
	bad := append(f.lu.modePage(pageCaching, pcCurrent), 0, 0)
	bad[1] += 2
	c, pl = modeSelect6(bad, false)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidFieldInParamList)
	// SP is not supported.
	c, pl = modeSelect6(f.lu.modePage(pageCaching, pcCurrent), true)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidFieldInCDB)
	// Parameter list longer than the data sent.
	c, pl = modeSelect6(f.lu.modePage(pageCaching, pcCurrent), false)
	expectSense(t, f.run(c, pl[:5]), SenseIllegalRequest, ascParameterListLength)
	// SWP makes writes fail.
	ctl = f.lu.modePage(pageControl, pcCurrent)
	ctl[4] |= 0x08
	c, pl = modeSelect6(ctl, false)
	expectGood(t, f.run(c, pl))
	expectSense(t, f.run(rw(opWrite10, 10, 0, 1), make([]byte, 512)), SenseDataProtect, ascSoftwareWriteProtected)

	// MODE SELECT(10) with a block descriptor of the right size.
	c = cdb(opModeSelect10, 10)
	c[1] = 0x10
	pl = make([]byte, 8+8)
	binary.BigEndian.PutUint16(pl[6:], 8)
	binary.BigEndian.PutUint32(pl[8+4:], 512)
	ctl = f.lu.modePage(pageControl, pcCurrent)
	ctl[4] &^= 0x08
	pl = append(pl, ctl...)
	binary.BigEndian.PutUint16(c[7:], uint16(len(pl)))
	expectGood(t, f.run(c, pl))
	expectGood(t, f.run(rw(opWrite10, 10, 0, 1), make([]byte, 512)))
	binary.BigEndian.PutUint32(pl[8+4:], 4096)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidFieldInParamList)
}

func cdbWriteSame(op byte, lba uint64, n uint32, unmap bool) []byte {
	c := rw(op, map[byte]int{opWriteSame10: 10, opWriteSame16: 16}[op], lba, n)
	if unmap {
		c[1] |= 0x08
	}
	return c
}

func TestWriteSameUnmapLBAStatus(t *testing.T) {
	f := newFixture(t)
	blk := fill(512, 1)
	expectGood(t, f.run(cdbWriteSame(opWriteSame10, 10, 5, false), blk))
	r := f.run(rw(opRead10, 10, 10, 5), nil)
	if !bytes.Equal(r.DataIn, bytes.Repeat(blk, 5)) {
		t.Fatal("WRITE SAME data wrong")
	}
	// UNMAP bit with a zero block deallocates.
	expectGood(t, f.run(cdbWriteSame(opWriteSame16, 10, 2, true), make([]byte, 512)))
	if f.vol.mapped[10] || f.vol.mapped[11] || !f.vol.mapped[12] {
		t.Fatal("WRITE SAME UNMAP did not deallocate exactly 2 blocks")
	}
	expectSense(t, f.run(cdbWriteSame(opWriteSame16, testBlocks-1, 2, false), blk), SenseIllegalRequest, ascLBAOutOfRange)
	c := cdbWriteSame(opWriteSame10, 0, 1, false)
	c[1] |= 0x20
	expectSense(t, f.run(c, blk), SenseIllegalRequest, ascInvalidFieldInCDB)

	// UNMAP command.
	expectGood(t, f.run(rw(opWrite10, 10, 100, 8), fill(8*512, 2)))
	c = cdb(opUnmap, 10)
	pl := make([]byte, 8+16)
	binary.BigEndian.PutUint16(pl, 6+16)
	binary.BigEndian.PutUint16(pl[2:], 16)
	binary.BigEndian.PutUint64(pl[8:], 102)
	binary.BigEndian.PutUint32(pl[16:], 3)
	binary.BigEndian.PutUint16(c[7:], uint16(len(pl)))
	expectGood(t, f.run(c, pl))
	r = f.run(rw(opRead10, 10, 102, 3), nil)
	if !isZero(r.DataIn) || f.vol.mapped[102] || !f.vol.mapped[105] {
		t.Fatal("UNMAP did not deallocate")
	}
	binary.BigEndian.PutUint64(pl[8:], testBlocks-1)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascLBAOutOfRange)
	expectSense(t, f.run(c, pl[:10]), SenseIllegalRequest, ascParameterListLength)

	// GET LBA STATUS sees mapped 100-101, deallocated 102-104.
	c = cdb(opServiceActionIn16, 16)
	c[1] = saGetLBAStatus
	binary.BigEndian.PutUint64(c[2:], 100)
	binary.BigEndian.PutUint32(c[10:], 8+16*2)
	r = f.run(c, nil)
	expectGood(t, r)
	d := r.DataIn
	if len(d) != 40 || binary.BigEndian.Uint64(d[8:]) != 100 || binary.BigEndian.Uint32(d[16:]) != 2 || d[20] != 0 ||
		binary.BigEndian.Uint64(d[24:]) != 102 || binary.BigEndian.Uint32(d[32:]) != 3 || d[36] != 1 {
		t.Errorf("GET LBA STATUS % x", d)
	}
	binary.BigEndian.PutUint64(c[2:], testBlocks)
	expectSense(t, f.run(c, nil), SenseIllegalRequest, ascLBAOutOfRange)
}

func TestCompareAndWrite(t *testing.T) {
	f := newFixture(t)
	old, nw := fill(1024, 1), fill(1024, 2)
	expectGood(t, f.run(rw(opWrite10, 10, 7, 2), old))
	c := cdb(opCompareAndWrite, 16)
	binary.BigEndian.PutUint64(c[2:], 7)
	c[13] = 2
	expectGood(t, f.run(c, append(append([]byte(nil), old...), nw...)))
	r := f.run(rw(opRead10, 10, 7, 2), nil)
	if !bytes.Equal(r.DataIn, nw) {
		t.Fatal("COMPARE AND WRITE did not write")
	}
	// Now the compare data is stale: miscompare at offset 0 and no write.
	p := expectSense(t, f.run(c, append(append([]byte(nil), old...), old...)), SenseMiscompare, ascMiscompareDuringVerify)
	if !p.infoValid || p.info != 0 {
		t.Errorf("miscompare info %d", p.info)
	}
	r = f.run(rw(opRead10, 10, 7, 2), nil)
	if !bytes.Equal(r.DataIn, nw) {
		t.Fatal("COMPARE AND WRITE wrote after a miscompare")
	}
	binary.BigEndian.PutUint64(c[2:], testBlocks-1)
	expectSense(t, f.run(c, make([]byte, 2048)), SenseIllegalRequest, ascLBAOutOfRange)
}

func TestReportSupportedOpcodes(t *testing.T) {
	f := newFixture(t)
	c := cdb(opMaintenanceIn, 12)
	c[1] = saReportSupportedOpcs
	binary.BigEndian.PutUint32(c[6:], 8192)
	r := f.run(c, nil)
	expectGood(t, r)
	d := r.DataIn
	n := int(binary.BigEndian.Uint32(d))
	if n+4 != len(d) || n%8 != 0 {
		t.Fatalf("all-commands length %d of %d", n, len(d))
	}
	found := map[[2]byte]int{}
	for p := d[4:]; len(p) >= 8; p = p[8:] {
		found[[2]byte{p[0], byte(binary.BigEndian.Uint16(p[2:]))}] = int(binary.BigEndian.Uint16(p[6:]))
	}
	if found[[2]byte{opRead10, 0}] != 10 || found[[2]byte{opServiceActionIn16, saReadCapacity16}] != 16 {
		t.Errorf("descriptors %v", found)
	}
	// One command, with timeouts.
	c[2] = 0x80 | 1
	c[3] = opWrite16
	r = f.run(c, nil)
	expectGood(t, r)
	d = r.DataIn
	if d[1]&0x07 != 3 || d[1]&0x80 == 0 || binary.BigEndian.Uint16(d[2:]) != 16 || d[4] != opWrite16 || len(d) != 4+16+12 {
		t.Errorf("one command % x", d)
	}
	// A service-action opcode asked without one.
	c[3] = opServiceActionIn16
	expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	c[2] = 2
	binary.BigEndian.PutUint16(c[4:], uint16(saReadCapacity16))
	r = f.run(c, nil)
	expectGood(t, r)
	if r.DataIn[1]&7 != 3 {
		t.Errorf("READ CAPACITY(16) support % x", r.DataIn[:4])
	}
	c[3] = 0xc5
	c[2] = 1
	r = f.run(c, nil)
	if r.DataIn[1]&7 != 1 {
		t.Errorf("unknown opcode support % x", r.DataIn[:4])
	}
}

func TestReserveRelease(t *testing.T) {
	f := newFixture(t)
	expectGood(t, f.run(cdb(opReserve6, 6), nil))
	// The holder works, the other nexus conflicts except for INQUIRY etc.
	expectGood(t, f.run(rw(opRead10, 10, 0, 1), nil))
	if r := f.exec(f.n2, rw(opRead10, 10, 0, 1), nil); r.Status != StatusReservationConflict {
		t.Fatalf("other nexus read status %#x", r.Status)
	}
	if r := f.exec(f.n2, cdb(opReserve10, 10), nil); r.Status != StatusReservationConflict {
		t.Fatalf("other nexus RESERVE status %#x", r.Status)
	}
	expectGood(t, f.exec(f.n2, inquiryCDB(false, 0, 96), nil))
	expectGood(t, f.exec(f.n2, cdb(opRelease6, 6), nil)) // no effect
	if r := f.exec(f.n2, cdb(opTestUnitReady, 6), nil); r.Status != StatusReservationConflict {
		t.Fatal("RELEASE by a non-holder released the reservation")
	}
	expectGood(t, f.run(cdb(opRelease10, 10), nil))
	expectGood(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil))

	// Nexus loss releases it.
	expectGood(t, f.run(cdb(opReserve10, 10), nil))
	f.tgt.NexusLoss(f.n1)
	expectGood(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil))
	// The same I_T nexus coming back (a new Nexus value with the same
	// names) learns that it was lost.
	back := *f.n1
	f.n1 = &back
	expectSense(t, f.run(cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascNexusLoss)
	expectGood(t, f.run(cdb(opTestUnitReady, 6), nil))

	// LU reset releases it and tells the other nexus.
	expectGood(t, f.run(cdb(opReserve6, 6), nil))
	if err := f.tgt.Reset(f.n1, TMFLogicalUnitReset, 0); err != nil {
		t.Fatal(err)
	}
	// Every path sees the reset, the one that asked for it too.
	expectSense(t, f.run(cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascBusDeviceReset)
	expectGood(t, f.run(cdb(opTestUnitReady, 6), nil))
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascBusDeviceReset)
	expectGood(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil))
	// Extents are not supported.
	c := cdb(opReserve6, 6)
	c[1] = 1
	expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
}

func TestResets(t *testing.T) {
	f := newFixture(t)
	ctl := f.lu.modePage(pageControl, pcCurrent)
	ctl[2] |= 0x04
	c, pl := modeSelect6(ctl, false)
	expectGood(t, f.run(c, pl))
	f.clearUA(f.n2)
	if err := f.tgt.Reset(f.n1, TMFTargetWarmReset, 0); err != nil {
		t.Fatal(err)
	}
	if f.lu.dsense.Load() {
		t.Error("target reset kept D_SENSE")
	}
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascBusReset)
	if err := f.tgt.Reset(f.n1, TMFTargetColdReset, 0); err != nil {
		t.Fatal(err)
	}
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascPowerOnOccurred)
	if err := f.tgt.Reset(f.n1, TMFLogicalUnitReset, 9); err == nil {
		t.Error("LU reset of an unmapped LUN succeeded")
	}
	if err := f.tgt.Reset(f.n1, TMFClearTaskSet, 0); err != nil {
		t.Error(err)
	}
	if err := f.tgt.Reset(f.n1, TMF(99), 0); err == nil {
		t.Error("unknown TMF accepted")
	}
}

func TestCapacityChanged(t *testing.T) {
	f := newFixture(t)
	f.lu.CapacityChanged()
	expectSense(t, f.run(cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascCapacityDataChanged)
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascCapacityDataChanged)
	expectGood(t, f.run(cdb(opTestUnitReady, 6), nil))
	if f.lu.Volume() != f.vol {
		t.Error("Volume() returned another volume")
	}
}

func TestStartStopPreventAllow(t *testing.T) {
	f := newFixture(t)
	c := cdb(opStartStopUnit, 6)
	c[4] = 0x01
	expectGood(t, f.run(c, nil))
	c[4] = 0x00 // stop: flushes
	expectGood(t, f.run(c, nil))
	c[4] = 0x02 // LOEJ: a fixed disk cannot eject
	p := expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 4 || p.bit != 1 {
		t.Errorf("LOEJ pointer %+v", p)
	}
	if f.vol.flushes != 1 {
		t.Errorf("stop flushed %d times", f.vol.flushes)
	}
	c[4] = 0x40 // reserved power condition
	expectSense(t, f.run(c, nil), SenseIllegalRequest, ascInvalidFieldInCDB)
	for _, prevent := range []byte{0, 1} {
		c := cdb(opPreventAllow, 6)
		c[4] = prevent
		expectGood(t, f.run(c, nil))
	}
}

func TestCancelledContext(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := f.tgt.Execute(ctx, &Command{Nexus: f.n1, CDB: rw(opRead10, 10, 0, 1)})
	if r.Status != StatusTaskAborted {
		t.Fatalf("status %#x, want TASK ABORTED", r.Status)
	}
}

// TestConcurrentIO hammers one LU from many goroutines and nexuses; run
// with -race.
func TestConcurrentIO(t *testing.T) {
	f := newFixture(t)
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			n := &Nexus{InitiatorPort: fmt.Sprintf("iqn.w%d", w)}
			ex := func(c, out []byte) Result {
				for {
					r := f.tgt.Execute(context.Background(), &Command{Nexus: n, CDB: c, DataOut: out})
					// Unit attentions from the LUN churn below are
					// expected; retry like an initiator would.
					if r.Status == StatusCheckCondition && len(r.Sense) > 2 && r.Sense[2]&0xf == SenseUnitAttention {
						continue
					}
					return r
				}
			}
			ex(cdb(opTestUnitReady, 6), nil) // power-on UA
			for i := 0; i < 50; i++ {
				lba := uint64(w*200 + i)
				data := fill(512, byte(w+i))
				if r := ex(rw(opWrite16, 16, lba, 1), data); r.Status != StatusGood {
					errs <- fmt.Errorf("worker %d write status %#x", w, r.Status)
					return
				}
				r := ex(rw(opRead16, 16, lba, 1), nil)
				if r.Status != StatusGood || !bytes.Equal(r.DataIn, data) {
					errs <- fmt.Errorf("worker %d read back mismatch at %d", w, lba)
					return
				}
				if i%10 == 0 {
					ex(modeSense6(false, 0, pageAll, 0, 255), nil)
					ex(inquiryCDB(true, 0x83, 255), nil)
				}
			}
		}(w)
	}
	// Meanwhile LUNs come and go and a capacity change is announced.
	for i := 0; i < 20; i++ {
		lu := NewLogicalUnit(newMemVolume(8, 512), LUConfig{})
		f.tgt.AddLUN(uint64(10+i), lu)
		f.lu.CapacityChanged()
		f.tgt.RemoveLUN(uint64(10 + i))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWriteAtomic(t *testing.T) {
	f := newFixture(t)
	wa := func(lba uint64, n uint16) []byte {
		c := cdb(opWriteAtomic16, 16)
		binary.BigEndian.PutUint64(c[2:], lba)
		binary.BigEndian.PutUint16(c[12:], n)
		return c
	}
	data := fill(128*512, 4)
	w0 := f.vol.writes
	expectGood(t, f.run(wa(10, 128), data))
	if f.vol.writes-w0 != 1 {
		t.Errorf("atomic write took %d engine calls", f.vol.writes-w0)
	}
	if r := f.run(rw(opRead10, 10, 10, 128), nil); !bytes.Equal(r.DataIn, data) {
		t.Fatal("atomic write data differs")
	}
	p := expectSense(t, f.run(wa(0, 129), make([]byte, 129*512)), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 12 {
		t.Errorf("atomic length pointer %d", p.field)
	}
	expectSense(t, f.run(wa(testBlocks-1, 2), make([]byte, 1024)), SenseIllegalRequest, ascLBAOutOfRange)
	expectSense(t, f.run(wa(0, 2), make([]byte, 512)), SenseIllegalRequest, ascParameterListLength)
	c := wa(0, 1)
	c[11] = 1 // ATOMIC BOUNDARY
	expectSense(t, f.run(c, make([]byte, 512)), SenseIllegalRequest, ascInvalidFieldInCDB)
	expectGood(t, f.run(wa(0, 0), nil))
	f.vol.ro = true
	expectSense(t, f.run(wa(0, 1), make([]byte, 512)), SenseDataProtect, ascWriteProtected)
}

func TestEdgeCasesFromLibiscsi(t *testing.T) {
	f := newFixture(t)
	// COMPARE AND WRITE of 256 blocks wraps NUMBER OF LOGICAL BLOCKS to 0
	// while 256 blocks of data arrive.
	c := cdb(opCompareAndWrite, 16)
	p := expectSense(t, f.run(c, make([]byte, 2*256*512)), SenseIllegalRequest, ascInvalidFieldInCDB)
	if p.field != 13 {
		t.Errorf("CAW pointer %d", p.field)
	}
	expectGood(t, f.run(c, nil))
	// WRITE SAME with UNMAP on a thin volume writes a data block that is
	// not zeroes (deallocating would make the blocks read zeroes), in
	// both CDB sizes; with a zero block it deallocates.
	for _, op := range []byte{opWriteSame10, opWriteSame16} {
		expectGood(t, f.run(rw(opWrite10, 10, 40, 4), fill(2048, 1)))
		expectGood(t, f.run(cdbWriteSame(op, 40, 4, true), bytes.Repeat([]byte{0xff}, 512)))
		if r := f.run(rw(opRead10, 10, 40, 4), nil); !bytes.Equal(r.DataIn, bytes.Repeat([]byte{0xff}, 2048)) || !f.vol.mapped[40] {
			t.Fatalf("WRITE SAME(%d) UNMAP with 0xff data did not write it", map[byte]int{opWriteSame10: 10, opWriteSame16: 16}[op])
		}
		expectGood(t, f.run(cdbWriteSame(op, 40, 4, true), make([]byte, 512)))
		if r := f.run(rw(opRead10, 10, 40, 4), nil); !isZero(r.DataIn) || f.vol.mapped[40] || f.vol.mapped[43] {
			t.Fatal("WRITE SAME UNMAP with a zero block did not deallocate")
		}
	}
	// On a thick volume the data is written.
	f.vol.limits.MaxUnmap = 0
	expectGood(t, f.run(cdbWriteSame(opWriteSame10, 40, 4, true), bytes.Repeat([]byte{0xff}, 512)))
	if r := f.run(rw(opRead10, 10, 40, 4), nil); !bytes.Equal(r.DataIn, bytes.Repeat([]byte{0xff}, 2048)) {
		t.Fatal("thick WRITE SAME UNMAP did not write the data")
	}
	// UNMAP is not offered on a thick volume, nor WRITE ATOMIC when the
	// engine only promises single-block atomicity; neither is listed.
	expectSense(t, f.run(cdb(opUnmap, 10), nil), SenseIllegalRequest, ascInvalidOpcode)
	f.vol.limits.AtomicWriteMax = 512
	expectSense(t, f.run(cdb(opWriteAtomic16, 16), nil), SenseIllegalRequest, ascInvalidOpcode)
	c = cdb(opMaintenanceIn, 12)
	c[1] = saReportSupportedOpcs
	binary.BigEndian.PutUint32(c[6:], 8192)
	r := f.run(c, nil)
	for p := r.DataIn[4:]; len(p) >= 8; p = p[8:] {
		if p[0] == opUnmap || p[0] == opWriteAtomic16 {
			t.Errorf("unavailable opcode %#x listed", p[0])
		}
	}
	r = f.run(inquiryCDB(true, 0xb0, 64), nil)
	if binary.BigEndian.Uint32(r.DataIn[44:]) != 0 {
		t.Error("atomic transfer length reported without WRITE ATOMIC")
	}
}

func TestOrWriteAndDefectData(t *testing.T) {
	f := newFixture(t)
	expectGood(t, f.run(rw(opWrite16, 16, 5, 2), bytes.Repeat([]byte{0x0f}, 1024)))
	expectGood(t, f.run(rw(opOrWrite16, 16, 5, 2), bytes.Repeat([]byte{0xa0}, 1024)))
	if r := f.run(rw(opRead16, 16, 5, 2), nil); !bytes.Equal(r.DataIn, bytes.Repeat([]byte{0xaf}, 1024)) {
		t.Fatal("ORWRITE result wrong")
	}
	expectSense(t, f.run(rw(opOrWrite16, 16, testBlocks-1, 2), make([]byte, 1024)), SenseIllegalRequest, ascLBAOutOfRange)
	c := rw(opOrWrite16, 16, 0, 1)
	c[1] = 0x20
	expectSense(t, f.run(c, make([]byte, 512)), SenseIllegalRequest, ascInvalidFieldInCDB)

	c = cdb(opReadDefectData10, 10)
	c[2] = 0x0c // GLIST, format 4
	c[8] = 32
	r := f.run(c, nil)
	expectGood(t, r)
	if len(r.DataIn) != 4 || r.DataIn[1] != 0x0c || binary.BigEndian.Uint16(r.DataIn[2:]) != 0 {
		t.Errorf("READ DEFECT DATA(10) % x", r.DataIn)
	}
	c = cdb(opReadDefectData12, 12)
	c[1] = 0x14
	c[9] = 32
	r = f.run(c, nil)
	expectGood(t, r)
	if len(r.DataIn) != 8 || r.DataIn[1] != 0x14 {
		t.Errorf("READ DEFECT DATA(12) % x", r.DataIn)
	}
}

// panicVolume panics on reads, standing in for a bug below the command
// core.
type panicVolume struct{ *memVolume }

func (p *panicVolume) ReadAt(ctx context.Context, b []byte, off int64) error { panic("boom") }

// lyingVolume says it is writable but refuses writes, as a volume frozen
// by a failed commit between the check and the write would.
type lyingVolume struct{ *memVolume }

func (l *lyingVolume) WriteAt(ctx context.Context, b []byte, off int64, fua bool) error {
	return fmt.Errorf("frozen: %w", engine.ErrReadOnly)
}

func TestEngineFailuresBecomeSense(t *testing.T) {
	for _, tc := range []struct {
		name string
		vol  engine.Volume
		cdb  []byte
		key  byte
		asc  uint16
	}{
		{"panic", &panicVolume{newMemVolume(16, 512)}, rw(opRead10, 10, 0, 1), SenseHardwareError, ascInternalTargetFailure},
		{"read-only race", &lyingVolume{newMemVolume(16, 512)}, rw(opWrite10, 10, 0, 1), SenseDataProtect, ascWriteProtected},
		{"closed", &closedVolume{newMemVolume(16, 512)}, rw(opRead10, 10, 0, 1), SenseNotReady, ascLUNotReady},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tgt := NewTarget("t")
			tgt.AddLUN(0, NewLogicalUnit(tc.vol, LUConfig{}))
			n := &Nexus{}
			tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb(opTestUnitReady, 6)})
			r := tgt.Execute(context.Background(), &Command{Nexus: n, CDB: tc.cdb, DataOut: make([]byte, 512)})
			expectSense(t, r, tc.key, tc.asc)
			// The target keeps working.
			expectGood(t, tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb(opTestUnitReady, 6)}))
		})
	}
	if NewTarget("x").Name() != "x" {
		t.Error("Name")
	}
}

// closedVolume has been closed under a mapped LUN.
type closedVolume struct{ *memVolume }

func (c *closedVolume) ReadAt(ctx context.Context, b []byte, off int64) error {
	return fmt.Errorf("vol0: %w", engine.ErrClosed)
}

func TestReportLUNsFlatAddressing(t *testing.T) {
	f := newFixture(t)
	if err := f.tgt.AddLUN(300, NewLogicalUnit(newMemVolume(8, 512), LUConfig{})); err != nil {
		t.Fatal(err)
	}
	if err := f.tgt.AddLUN(maxLUN+1, f.lu); err == nil {
		t.Fatal("LUN beyond flat addressing accepted")
	}
	if err := f.tgt.AddLUN(5, nil); err == nil {
		t.Fatal("nil logical unit accepted")
	}
	r := f.run(reportLUNsCDB(2, 64), nil)
	expectGood(t, r)
	if got := binary.BigEndian.Uint16(r.DataIn[16:]); got != 0x4000|300 {
		t.Errorf("LUN 300 encoded as %#04x", got)
	}
}

// TestFullyProvisionedReporting checks that a volume whose engine cannot
// deallocate (Limits.MaxUnmap = 0, e.g. a block device without discard) is
// reported fully provisioned everywhere: no LBPME/LBPRZ in READ CAPACITY
// (16), no UNMAP limits in the Block Limits page, no LBP bits, UNMAP not
// offered, and WRITE SAME with UNMAP writing allocated zeroes.
func TestFullyProvisionedReporting(t *testing.T) {
	f := newFixture(t)
	rc16 := func() []byte {
		c := cdb(opServiceActionIn16, 16)
		c[1] = saReadCapacity16
		binary.BigEndian.PutUint32(c[10:], 32)
		r := f.run(c, nil)
		expectGood(t, r)
		return r.DataIn
	}
	vpd := func(page byte) []byte {
		r := f.run(inquiryCDB(true, page, 255), nil)
		expectGood(t, r)
		return r.DataIn
	}
	if d := rc16(); d[14]&0xc0 != 0xc0 {
		t.Fatalf("thin volume: READ CAPACITY(16) byte 14 %#x, want LBPME and LBPRZ", d[14])
	}
	f.vol.limits.MaxUnmap = 0
	if d := rc16(); d[14]&0xc0 != 0 {
		t.Errorf("fully provisioned: READ CAPACITY(16) byte 14 %#x, want LBPME=0 LBPRZ=0", d[14])
	}
	if d := vpd(0xb0); binary.BigEndian.Uint32(d[20:]) != 0 || binary.BigEndian.Uint32(d[24:]) != 0 {
		t.Errorf("fully provisioned: Block Limits unmap fields % x", d[20:28])
	}
	if d := vpd(0xb2); d[5] != 0 || d[6] != 0 {
		t.Errorf("fully provisioned: LBP VPD % x", d[4:])
	}
	c, pl := unmapCmd(10, 4)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidOpcode)
	expectGood(t, f.run(rw(opWrite10, 10, 10, 4), fill(2048, 3)))
	expectGood(t, f.run(cdbWriteSame(opWriteSame16, 10, 4, true), make([]byte, 512)))
	if r := f.run(rw(opRead10, 10, 10, 4), nil); !isZero(r.DataIn) || !f.vol.mapped[10] || f.vol.unmaps != 0 {
		t.Fatal("fully provisioned: WRITE SAME UNMAP did not write allocated zeroes")
	}
	// GET LBA STATUS reports never-written blocks mapped too.
	c = cdb(opServiceActionIn16, 16)
	c[1] = saGetLBAStatus
	binary.BigEndian.PutUint64(c[2:], 100)
	binary.BigEndian.PutUint32(c[10:], 24)
	r := f.run(c, nil)
	expectGood(t, r)
	if len(r.DataIn) < 24 || r.DataIn[8+12]&0x0f != 0 {
		t.Fatalf("fully provisioned: GET LBA STATUS % x, want mapped", r.DataIn)
	}
}
