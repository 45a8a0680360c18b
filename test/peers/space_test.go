package peers

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// writeImmediate runs a WRITE-type command on LUN 0 whose data (at most
// FirstBurstLength) rides in the command PDU as immediate data.
func (r *rawConn) writeImmediate(cdb, data []byte) (*scsiStatus, error) {
	var bhs [bhsLen]byte
	bhs[0] = opSCSICmd
	bhs[1] = 0x80 | 0x20 | 0x01 // Final, Write, SIMPLE
	r.itt++
	binary.BigEndian.PutUint32(bhs[16:], r.itt)
	binary.BigEndian.PutUint32(bhs[20:], uint32(len(data)))
	binary.BigEndian.PutUint32(bhs[24:], r.cmdSN)
	binary.BigEndian.PutUint32(bhs[28:], r.statSN)
	copy(bhs[32:48], cdb)
	r.cmdSN++
	if err := r.writePDU(bhs[:], data); err != nil {
		return nil, err
	}
	for {
		p, err := r.readPDU(10 * time.Second)
		if err != nil {
			return nil, err
		}
		switch p.opcode() {
		case opNopIn:
			continue
		case opSCSIResp:
			r.statSN = binary.BigEndian.Uint32(p.bhs[24:]) + 1
			st := &scsiStatus{status: p.bhs[3]}
			if len(p.data) >= 2 {
				if n := int(binary.BigEndian.Uint16(p.data)); 2+n <= len(p.data) {
					st.sense = p.data[2 : 2+n]
				}
			}
			return st, nil
		default:
			return nil, fmt.Errorf("unexpected opcode %#x while waiting for a write's status", p.opcode())
		}
	}
}

// senseTriple decodes key/ASC/ASCQ from fixed-format sense data.
func senseTriple(s []byte) string {
	if len(s) < 14 {
		return fmt.Sprintf("short sense % x", s)
	}
	return fmt.Sprintf("%02x/%02x/%02x", s[2]&0x0f, s[12], s[13])
}

// TestOutOfSpaceSense: with the demo volume's backing writes failing with
// ENOSPC (a full file system, injected), an initiator sees DATA PROTECT,
// SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07) on the FUA write whose
// commit finds no space, on the writes after it and on SYNCHRONIZE CACHE,
// not MEDIUM ERROR.
func TestOutOfSpaceSense(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	rc, err := dialRaw(d.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := rc.login("iqn.2026-11.io.anvil.test:space", harness.DemoIQN); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ { // TEST UNIT READY past the power-on unit attention
		st, err := rc.readCommand(make([]byte, 6), 0)
		if err != nil {
			t.Fatal(err)
		}
		if st.status == 0 {
			break
		}
	}
	run(t, d, harness.Binary(t), "volume", "faults", "demo", "--rate", "10000", "--error", "enospc", "--api", d.API, "--data-dir", d.DataDir)

	write10 := func(fua bool) []byte {
		cdb := make([]byte, 10)
		cdb[0] = 0x2a
		if fua {
			cdb[1] = 0x08
		}
		binary.BigEndian.PutUint32(cdb[2:], 100)
		binary.BigEndian.PutUint16(cdb[7:], 1)
		return cdb
	}
	block := make([]byte, blockSize)
	for i := range block {
		block[i] = 0x5a
	}
	for _, c := range []struct {
		name string
		do   func() (*scsiStatus, error)
	}{
		{"FUA write", func() (*scsiStatus, error) { return rc.writeImmediate(write10(true), block) }},
		{"write after it", func() (*scsiStatus, error) { return rc.writeImmediate(write10(false), block) }},
		{"SYNCHRONIZE CACHE", func() (*scsiStatus, error) { return rc.readCommand([]byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0) }},
	} {
		st, err := c.do()
		if err != nil {
			t.Fatalf("%s: %v\ndaemon log tail:\n%s", c.name, err, tail(d.Log(), 30))
		}
		if st.status != 0x02 || senseTriple(st.sense) != "07/27/07" {
			t.Errorf("%s on a full file system: status %#x sense %s, want CHECK CONDITION 07/27/07", c.name, st.status, senseTriple(st.sense))
		}
	}
}
