package peers

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
	"github.com/anvilproject/anvil/test/harness"
)

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
	rc, err := iscsitest.Dial(d.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := rawLogin(rc, "iqn.2026-11.io.anvil.test:space", harness.DemoIQN); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ { // TEST UNIT READY past the power-on unit attention
		st, err := rc.Read(make([]byte, 6), 0)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status == 0 {
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
		do   func() (*iscsitest.Response, error)
	}{
		{"FUA write", func() (*iscsitest.Response, error) { return rc.Write(write10(true), block, len(block)) }},
		{"write after it", func() (*iscsitest.Response, error) { return rc.Write(write10(false), block, len(block)) }},
		{"SYNCHRONIZE CACHE", func() (*iscsitest.Response, error) { return rc.Read([]byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0) }},
	} {
		st, err := c.do()
		if err != nil {
			t.Fatalf("%s: %v\ndaemon log tail:\n%s", c.name, err, tail(d.Log(), 30))
		}
		if st.Status != 0x02 || senseTriple(st.Sense) != "07/27/07" {
			t.Errorf("%s on a full file system: status %#x sense %s, want CHECK CONDITION 07/27/07", c.name, st.Status, senseTriple(st.Sense))
		}
	}
}
