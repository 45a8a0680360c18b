package service

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/anvilproject/anvil/target/scsi"
)

// execute runs a CDB on the target as the given nexus, clearing the unit
// attentions a new nexus sees first.
func execute(t *testing.T, tg *liveTarget, n *scsi.Nexus, cdb, out []byte, in int) scsi.Result {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		r := tg.scsi.Execute(ctx, &scsi.Command{Nexus: n, CDB: []byte{0, 0, 0, 0, 0, 0}})
		if r.Status == scsi.StatusGood {
			break
		}
	}
	return tg.scsi.Execute(ctx, &scsi.Command{Nexus: n, CDB: cdb, DataOut: out, ExpectedDataIn: in})
}

func TestFrontEndSettingsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, true)
	tg, _ := s.Target(DemoIQN)
	n := &scsi.Nexus{InitiatorPort: "iqn.2026-11.io.host:a,i,0x1", InitiatorName: "iqn.2026-11.io.host:a", TargetPort: DemoIQN + ",t,0x1", RelativeTargetPortID: 1, TargetPortGroup: 1}

	// MODE SENSE(6) the caching page, clear WCE, MODE SELECT(6) it back.
	r := execute(t, tg, n, []byte{0x1a, 0x08, 0x08, 0, 255, 0}, nil, 255)
	if r.Status != scsi.StatusGood {
		t.Fatalf("MODE SENSE: status %#x sense %x", r.Status, r.Sense)
	}
	bdl := int(r.DataIn[3])
	page := append([]byte(nil), r.DataIn[4+bdl:4+bdl+2+int(r.DataIn[4+bdl+1])]...)
	if page[2]&0x04 == 0 {
		t.Fatal("demo volume should start with WCE=1")
	}
	page[0] &^= 0x80 // PS is reserved in MODE SELECT
	page[2] &^= 0x04
	param := append([]byte{0, 0, 0, 0}, page...)
	r = execute(t, tg, n, []byte{0x15, 0x10, 0, 0, byte(len(param)), 0}, param, 0)
	if r.Status != scsi.StatusGood {
		t.Fatalf("MODE SELECT: status %#x sense %x", r.Status, r.Sense)
	}

	// PERSISTENT RESERVE OUT REGISTER with APTPL.
	prParam := make([]byte, 24)
	binary.BigEndian.PutUint64(prParam[8:], 0xabcdef)
	prParam[20] = 0x01
	r = execute(t, tg, n, []byte{0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0}, prParam, 0)
	if r.Status != scsi.StatusGood {
		t.Fatalf("PR OUT REGISTER APTPL: status %#x sense %x", r.Status, r.Sense)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, true)
	defer s.Close()
	if v, _ := s.Volume(DemoVolume); v.WriteCache {
		t.Error("WCE=0 set by MODE SELECT was lost across restart")
	}
	tg, _ = s.Target(DemoIQN)
	// PERSISTENT RESERVE IN READ KEYS.
	r = execute(t, tg, n, []byte{0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0}, nil, 64)
	if r.Status != scsi.StatusGood {
		t.Fatalf("PR IN READ KEYS: status %#x sense %x", r.Status, r.Sense)
	}
	if l := binary.BigEndian.Uint32(r.DataIn[4:]); l != 8 || binary.BigEndian.Uint64(r.DataIn[8:]) != 0xabcdef {
		t.Fatalf("APTPL registration lost across restart: %x", r.DataIn)
	}
}
