package iscsi

import (
	"testing"

	"github.com/anvilproject/anvil/target/scsi"
)

// dsenseTarget is a fake whose logical units ask for descriptor-format
// sense data (control mode page D_SENSE=1).
type dsenseTarget struct{ *fakeTarget }

func (d *dsenseTarget) DescriptorSense(uint64) bool { return true }

// The CHECK CONDITIONs the transport itself raises (here a Data-Out at the
// wrong offset, and a write longer than the maximum transfer length) come
// from the SCSI core, so they follow D_SENSE like any other: descriptor
// format when the logical unit asks for it.
func TestTransportRefusalsFollowDSense(t *testing.T) {
	ft := newFakeTarget(testIQN)
	dt := &dsenseTarget{ft}
	ft.dev = dt
	ts := startServer(t, Config{NopInterval: -1, MaxTransferLength: 1024}, dt)
	c := dial(t, ts.addr)
	c.login(testIQN, "InitialR2T=Yes", "ImmediateData=No")
	expect := func(what string, r *response, key, asc, ascq byte) {
		t.Helper()
		if r.status != byte(scsi.StatusCheckCondition) || len(r.sense) < 8 || r.sense[0] != 0x72 ||
			r.sense[1] != key || r.sense[2] != asc || r.sense[3] != ascq {
			t.Fatalf("%s: status %#x sense % x, want descriptor sense %#x/%02x/%02x", what, r.status, r.sense, key, asc, ascq)
		}
	}

	h := c.scsiCmd(cdb10(0x2a, 0, 2), false, true, true, 1024)
	c.send(h, nil, nil)
	p := c.recv()
	if p.hdr.opcode() != opR2T {
		t.Fatalf("opcode %#x, want R2T", p.hdr.opcode())
	}
	c.dataOut(h.itt(), p.hdr.u32(20), 0, 512, true, make([]byte, 512))
	expect("Data-Out at the wrong offset", c.readResponse(h.itt()), 0x0b, 0x4b, 0x05)

	h = c.scsiCmd(cdb10(0x2a, 0, 4), false, true, true, 2048)
	c.send(h, nil, nil)
	expect("write past the maximum transfer length", c.readResponse(h.itt()), 0x05, 0x24, 0x00)
}
