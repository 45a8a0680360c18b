package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
	"github.com/anvilproject/anvil/target/scsi"
)

func TestLoginNormalSession(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.alias = "demo disk"
	c := dial(t, ts.addr)
	m := c.login(testIQN,
		"HeaderDigest=None", "DataDigest=None", "MaxConnections=4", "InitialR2T=No",
		"ImmediateData=Yes", "MaxRecvDataSegmentLength=65536", "MaxBurstLength=16776192",
		"FirstBurstLength=262144", "DefaultTime2Wait=0", "DefaultTime2Retain=0",
		"MaxOutstandingR2T=8", "DataPDUInOrder=Yes", "DataSequenceInOrder=Yes",
		"ErrorRecoveryLevel=2", "IFMarker=No", "OFMarker=No", "X-com.example.Foo=1", "Bogus=1")
	want := map[string]string{
		"TargetPortalGroupTag":     "1",
		"TargetAlias":              "demo disk",
		"HeaderDigest":             "None",
		"DataDigest":               "None",
		"MaxConnections":           "1",
		"InitialR2T":               "No",
		"ImmediateData":            "Yes",
		"MaxRecvDataSegmentLength": "262144",
		"MaxBurstLength":           "1048576",
		"FirstBurstLength":         "262144",
		"DefaultTime2Wait":         "2",
		"DefaultTime2Retain":       "0",
		"MaxOutstandingR2T":        "8",
		"DataPDUInOrder":           "Yes",
		"DataSequenceInOrder":      "Yes",
		"ErrorRecoveryLevel":       "0",
		"IFMarker":                 "No",
		"OFMarker":                 "No",
		"X-com.example.Foo":        "NotUnderstood",
		"Bogus":                    "NotUnderstood",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
	infos := ts.srv.Sessions()
	if len(infos) != 1 {
		t.Fatalf("Sessions() = %d sessions, want 1", len(infos))
	}
	si := infos[0]
	if si.InitiatorName != testInitiator || si.Target != testIQN || si.TSIH != c.TSIH || si.ISID != hex.EncodeToString(c.ISID[:]) {
		t.Errorf("session info %+v", si)
	}
	if si.Params.MaxXmitDataSegmentLength != 65536 || si.Params.MaxOutstandingR2T != 8 || si.Params.InitialR2T {
		t.Errorf("session params %+v", si.Params)
	}
	// TEST UNIT READY works.
	h := c.scsiCmd(make([]byte, 6), false, false, true, 0)
	c.send(h, nil, nil)
	if r := c.readResponse(h.itt()); r.status != 0 {
		t.Fatalf("TUR status %#x", r.status)
	}
}

func TestLoginFailures(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.deny = "iqn.bad"
	cases := []struct {
		name   string
		keys   []string
		ver    byte
		status uint16
	}{
		{"missing initiator name", []string{"TargetName=" + testIQN}, 0, statusMissingParameter},
		{"missing target name", []string{"InitiatorName=iqn.x"}, 0, statusMissingParameter},
		{"unknown target", []string{"InitiatorName=iqn.x", "TargetName=iqn.nope"}, 0, statusNotFound},
		{"acl", []string{"InitiatorName=iqn.bad", "TargetName=" + testIQN}, 0, statusForbidden},
		{"version", []string{"InitiatorName=iqn.x", "TargetName=" + testIQN}, 1, statusUnsupportedVersion},
		{"session type", []string{"InitiatorName=iqn.x", "SessionType=Weird"}, 0, statusSessionTypeUnsupp},
		{"auth reject", []string{"InitiatorName=iqn.x", "TargetName=" + testIQN, "AuthMethod=SRP"}, 0, statusAuthFailure},
		{"duplicate key", []string{"InitiatorName=iqn.x", "InitiatorName=iqn.y"}, 0, statusInitiatorError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts.addr)
			var h bhs
			h[0] = opLoginReq | flagImmed
			h[1] = flagTransit | 0<<2 | 1
			h[3] = tc.ver
			copy(h[8:14], c.ISID[:])
			h.setITT(1)
			c.send(&h, nil, keysData(tc.keys...))
			p := c.recv()
			if p.hdr.opcode() != opLoginResp {
				t.Fatalf("opcode %#x", p.hdr.opcode())
			}
			if st := loginStatus(p); st != tc.status {
				t.Fatalf("status %#04x, want %#04x", st, tc.status)
			}
			c.expectClosed()
		})
	}
}

func TestLoginTextContinuation(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c := dial(t, ts.addr)
	all := keysData("InitiatorName="+testInitiator, "SessionType=Normal", "TargetName="+testIQN, "AuthMethod=None")
	// Split the key text mid-pair over two PDUs with the C bit.
	var h bhs
	h[0] = opLoginReq | flagImmed
	h[1] = flagContinue | 0<<2 | 1
	copy(h[8:14], c.ISID[:])
	h.setITT(1)
	c.send(&h, nil, all[:20])
	p := c.recv()
	if loginStatus(p) != 0 || len(p.data) != 0 || p.hdr[1]&flagTransit != 0 {
		t.Fatalf("continuation ack: status %#x data %q flags %#x", loginStatus(p), p.data, p.hdr[1])
	}
	h[1] = flagTransit | 0<<2 | 1
	c.send(&h, nil, all[20:])
	p = c.recv()
	if loginStatus(p) != 0 || p.hdr[1]&flagTransit == 0 {
		t.Fatalf("status %#x flags %#x", loginStatus(p), p.hdr[1])
	}
	if m := keyMap(t, p.data); m["AuthMethod"] != "None" {
		t.Fatalf("keys %v", m)
	}
}

func TestDiscoverySendTargets(t *testing.T) {
	t2 := newFakeTarget("iqn.2026-11.io.anvil:second")
	t1 := newFakeTarget(testIQN)
	ts := startServer(t, Config{NopInterval: -1, Portals: []string{"0.0.0.0:3260", "192.0.2.7:3261"}}, t1, t2)
	c := dial(t, ts.addr)
	m := c.login("", "MaxRecvDataSegmentLength=512", "InitialR2T=Yes", "MaxBurstLength=4096", "ErrorRecoveryLevel=0")
	if m["InitialR2T"] != "Irrelevant" || m["MaxBurstLength"] != "Irrelevant" || m["ErrorRecoveryLevel"] != "0" {
		t.Errorf("discovery negotiation: %v", m)
	}
	var h bhs
	h[0] = opTextReq | flagImmed
	h[1] = flagFinal
	h.setITT(c.NextITT())
	h.setU32(20, tagNone)
	h.setU32(24, c.CmdSN)
	c.send(&h, nil, keysData("SendTargets=All"))
	// MaxRecvDataSegmentLength=512 forces the answer over several PDUs.
	var text []byte
	pdus := 0
	for {
		p := c.recv()
		if p.hdr.opcode() != opTextResp {
			t.Fatalf("opcode %#x", p.hdr.opcode())
		}
		if len(p.data) > 512 {
			t.Fatalf("text response segment %d > 512", len(p.data))
		}
		text = append(text, p.data...)
		pdus++
		if p.hdr[1]&flagFinal != 0 {
			if p.hdr.u32(20) != tagNone {
				t.Fatalf("final text response TTT %#x", p.hdr.u32(20))
			}
			break
		}
		if p.hdr[1]&flagContinue == 0 || p.hdr.u32(20) == tagNone {
			t.Fatalf("partial text response without C bit/TTT: flags %#x", p.hdr[1])
		}
		h.setU32(20, p.hdr.u32(20))
		c.send(&h, nil, nil)
	}
	host := strings.Split(ts.addr, ":")[0]
	want := keysData(
		"TargetName=iqn.2026-11.io.anvil:second", "TargetAddress="+host+":3260,1", "TargetAddress=192.0.2.7:3261,1",
		"TargetName="+testIQN, "TargetAddress="+host+":3260,1", "TargetAddress=192.0.2.7:3261,1")
	if !bytes.Equal(text, want) {
		t.Fatalf("SendTargets:\n got %q\nwant %q", text, want)
	}
	// Pad the target list so the answer needs several PDUs.
	if pdus < 1 {
		t.Fatal("no PDUs")
	}
	// SCSI commands are not allowed in a discovery session.
	sc := c.scsiCmd(make([]byte, 6), false, false, true, 0)
	c.send(sc, nil, nil)
	if p := c.recv(); p.hdr.opcode() != opReject {
		t.Fatalf("SCSI command in discovery session: opcode %#x, want Reject", p.hdr.opcode())
	}
}

func TestTextResponseSpansPDUs(t *testing.T) {
	var targets []Target
	for i := 0; i < 40; i++ {
		targets = append(targets, newFakeTarget("iqn.2026-11.io.anvil:target-with-a-long-name-"+strings.Repeat("x", 20)+string(rune('a'+i%26))+string(rune('a'+i/26))))
	}
	ts := startServer(t, Config{NopInterval: -1}, targets...)
	c := dial(t, ts.addr)
	c.login("", "MaxRecvDataSegmentLength=512")
	text, pdus, err := c.Text(keysData("SendTargets=All"))
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := parseKeys(text)
	if err != nil {
		t.Fatal(err)
	}
	names := 0
	for _, p := range kvs {
		if p.Key == "TargetName" {
			names++
		}
	}
	if names != 40 || pdus < 5 {
		t.Fatalf("got %d targets in %d PDUs", names, pdus)
	}
}

func TestReadDataIn(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	copy(ts.tgt.disk, pattern(len(ts.tgt.disk), 3))
	c := dial(t, ts.addr)
	c.login(testIQN, "MaxRecvDataSegmentLength=4096", "MaxBurstLength=8192")
	r := c.read(8, 40) // 20 KiB
	if r.status != 0 || r.flags&(flagOverflow|flagUnder) != 0 {
		t.Fatalf("status %#x flags %#x", r.status, r.flags)
	}
	if !bytes.Equal(r.data, ts.tgt.disk[8*512:48*512]) {
		t.Fatal("read data mismatch")
	}
	if r.pdus != 5 {
		t.Fatalf("%d Data-In PDUs, want 5 of 4 KiB", r.pdus)
	}
	for i, sn := range r.dataSNs {
		if sn != uint32(i) {
			t.Fatalf("DataSN[%d] = %d", i, sn)
		}
	}
	// A read with check condition gets a SCSI Response with sense.
	h := c.scsiCmd(cdb10(0x28, 1<<20, 1), true, false, true, 512)
	c.send(h, nil, nil)
	r = c.readResponse(h.itt())
	if r.status != byte(scsi.StatusCheckCondition) || len(r.sense) != 18 || r.sense[2] != 5 || r.sense[12] != 0x21 {
		t.Fatalf("status %#x sense % x", r.status, r.sense)
	}
}

func TestResiduals(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c := dial(t, ts.addr)
	c.login(testIQN, "ImmediateData=Yes", "InitialR2T=No")
	cases := []struct {
		name      string
		op        byte
		blocks    uint16
		edtl      uint32
		read      bool
		flag      byte
		residual  uint32
		wantData  int
		writeData int
	}{
		{"read edtl 0", 0x28, 1, 0, true, flagOverflow, 512, 0, 0},
		{"read edtl 10000", 0x28, 1, 10000, true, flagUnder, 10000 - 512, 512, 0},
		{"read edtl 200", 0x28, 1, 200, true, flagOverflow, 312, 200, 0},
		{"read 2 blocks edtl 1", 0x28, 2, 512, true, flagOverflow, 512, 512, 0},
		{"write edtl 0", 0x2a, 1, 0, false, flagOverflow, 512, 0, 0},
		{"write edtl 10000", 0x2a, 1, 10000, false, flagUnder, 10000 - 512, 0, 10000},
		{"write 2 blocks edtl 1", 0x2a, 2, 512, false, flagOverflow, 512, 0, 512},
		{"inquiry short", 0x12, 0, 255, true, flagUnder, 255 - 36, 36, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cdb := cdb10(tc.op, 0, tc.blocks)
			if tc.op == 0x12 {
				cdb = []byte{0x12, 0, 0, 0, 255, 0}
			}
			h := c.scsiCmd(cdb, tc.read, !tc.read, true, tc.edtl)
			var imm []byte
			if tc.writeData > 0 {
				imm = pattern(tc.writeData, 1)
				if tc.writeData > 8192 {
					// More than one PDU: send it unsolicited.
					h[1] &^= flagFinal
				}
			}
			if len(imm) > 8192 {
				c.send(h, nil, imm[:8192])
				c.dataOut(h.itt(), tagNone, 0, 8192, true, imm[8192:])
			} else {
				c.send(h, nil, imm)
			}
			r := c.readResponse(h.itt())
			if r.status != 0 {
				t.Fatalf("status %#x", r.status)
			}
			if r.flags&(flagOverflow|flagUnder) != tc.flag || r.residual != tc.residual {
				t.Fatalf("flags %#x residual %d, want %#x %d", r.flags, r.residual, tc.flag, tc.residual)
			}
			if len(r.data) != tc.wantData {
				t.Fatalf("got %d data bytes, want %d", len(r.data), tc.wantData)
			}
		})
	}
}

func TestWriteR2TFlow(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys []string
		seg  int
		size int
		r2ts int
	}{
		{"initialR2T no immediate", []string{"InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=16384", "MaxOutstandingR2T=2", "MaxRecvDataSegmentLength=8192"}, 4096, 64 << 10, 4},
		{"immediate then R2T", []string{"InitialR2T=Yes", "ImmediateData=Yes", "MaxBurstLength=65536", "MaxOutstandingR2T=4", "FirstBurstLength=8192"}, 8192, 200 << 10, 3},
		{"unsolicited then R2T", []string{"InitialR2T=No", "ImmediateData=Yes", "FirstBurstLength=65536", "MaxBurstLength=262144", "MaxOutstandingR2T=1"}, 16384, 512 << 10, 2},
		{"all unsolicited", []string{"InitialR2T=No", "ImmediateData=No", "FirstBurstLength=65536"}, 8192, 32 << 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{NopInterval: -1, MaxRecvDataSegmentLength: 65536})
			c := dial(t, ts.addr)
			c.login(testIQN, tc.keys...)
			data := pattern(tc.size, 9)
			r := c.write(16, data, tc.seg)
			if r.status != 0 || r.flags&(flagOverflow|flagUnder) != 0 {
				t.Fatalf("status %#x flags %#x", r.status, r.flags)
			}
			if len(r.r2ts) != tc.r2ts {
				t.Errorf("%d R2Ts, want %d", len(r.r2ts), tc.r2ts)
			}
			for i, p := range r.r2ts {
				if p.hdr.u32(36) != uint32(i) {
					t.Errorf("R2TSN[%d] = %d", i, p.hdr.u32(36))
				}
			}
			if !bytes.Equal(ts.tgt.disk[16*512:16*512+tc.size], data) {
				t.Fatal("written data mismatch")
			}
			rr := c.read(16, uint16(tc.size/512))
			if !bytes.Equal(rr.data, data) {
				t.Fatal("read back mismatch")
			}
		})
	}
}

func TestDataOutViolationsFailTask(t *testing.T) {
	for _, tc := range []struct {
		name      string
		asc, ascq byte
		send      func(c *client, itt, ttt uint32)
	}{
		{"datasn 27", 0x47, 0x05, func(c *client, itt, ttt uint32) { c.dataOut(itt, ttt, 27, 0, true, make([]byte, 1024)) }},
		{"datasn repeated", 0x47, 0x05, func(c *client, itt, ttt uint32) {
			c.dataOut(itt, ttt, 0, 0, false, make([]byte, 512))
			c.dataOut(itt, ttt, 0, 512, true, make([]byte, 512))
		}},
		{"datasn reversed", 0x47, 0x05, func(c *client, itt, ttt uint32) {
			c.dataOut(itt, ttt, 1, 512, true, make([]byte, 512))
			c.dataOut(itt, ttt, 0, 0, false, make([]byte, 512))
		}},
		{"bad offset", 0x4b, 0x05, func(c *client, itt, ttt uint32) { c.dataOut(itt, ttt, 0, 512, true, make([]byte, 512)) }},
		{"bad ttt", 0x4b, 0x01, func(c *client, itt, ttt uint32) { c.dataOut(itt, ttt+100, 0, 0, true, make([]byte, 1024)) }},
		{"overrun", 0x0c, 0x0d, func(c *client, itt, ttt uint32) { c.dataOut(itt, ttt, 0, 0, true, make([]byte, 2048)) }},
		{"short final", 0x0c, 0x0d, func(c *client, itt, ttt uint32) { c.dataOut(itt, ttt, 0, 0, true, make([]byte, 512)) }},
		{"unsolicited", 0x0c, 0x0c, func(c *client, itt, ttt uint32) { c.dataOut(itt, tagNone, 0, 0, true, make([]byte, 1024)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{NopInterval: -1})
			c := dial(t, ts.addr)
			c.login(testIQN, "InitialR2T=Yes", "ImmediateData=No")
			h := c.scsiCmd(cdb10(0x2a, 0, 2), false, true, true, 1024)
			c.send(h, nil, nil)
			p := c.recv()
			if p.hdr.opcode() != opR2T {
				t.Fatalf("opcode %#x, want R2T", p.hdr.opcode())
			}
			tc.send(c, h.itt(), p.hdr.u32(20))
			r := c.readResponse(h.itt())
			if r.status != byte(scsi.StatusCheckCondition) || len(r.sense) < 14 || r.sense[2] != 0x0b || r.sense[12] != tc.asc || r.sense[13] != tc.ascq {
				t.Fatalf("status %#x sense % x", r.status, r.sense)
			}
			ts.tgt.mu.Lock()
			cmds := ts.tgt.cmds
			ts.tgt.mu.Unlock()
			if cmds != 0 {
				t.Fatalf("broken write reached the SCSI core")
			}
			// The session survives.
			w := c.write(0, make([]byte, 1024), 512)
			if w.status != 0 {
				t.Fatalf("next write: status %#x", w.status)
			}
		})
	}
}

func TestCmdSNOrderingAndWindow(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1, MaxQueuedCommands: 16})
	c := dial(t, ts.addr)
	c.login(testIQN)
	base := c.CmdSN
	// Send CmdSN base+1 first: it must wait for base.
	tur := make([]byte, 6)
	h2 := c.scsiCmd(tur, false, false, true, 0)
	h2.setU32(24, base+1)
	h1 := c.scsiCmd(tur, false, false, true, 0)
	h1.setU32(24, base)
	c.send(h2, nil, nil)
	if p, err := c.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("command ahead of ExpCmdSN answered early: opcode %#x", p.hdr.opcode())
	}
	c.send(h1, nil, nil)
	got := map[uint32]bool{}
	var lastMax, lastExp uint32
	for i := 0; i < 2; i++ {
		p := c.recv()
		if p.hdr.opcode() != opSCSIResp {
			t.Fatalf("opcode %#x", p.hdr.opcode())
		}
		got[p.hdr.itt()] = true
		lastExp = p.hdr.u32(28)
		if lastExp != base+1 && lastExp != base+2 {
			t.Errorf("ExpCmdSN %d, want %d or %d", lastExp, base+1, base+2)
		}
		lastMax = p.hdr.u32(32)
	}
	if lastExp != base+2 {
		t.Errorf("final ExpCmdSN %d, want %d", lastExp, base+2)
	}
	if !got[h1.itt()] || !got[h2.itt()] {
		t.Fatalf("responses %v", got)
	}
	// Too high and too low CmdSNs are dropped silently.
	hi := c.scsiCmd(tur, false, false, true, 0)
	hi.setU32(24, lastMax+1)
	c.send(hi, nil, nil)
	lo := c.scsiCmd(tur, false, false, true, 0)
	lo.setU32(24, base-5)
	c.send(lo, nil, nil)
	if p, err := c.tryRecv(300 * time.Millisecond); err == nil {
		t.Fatalf("out-of-window command answered: opcode %#x itt %#x", p.hdr.opcode(), p.hdr.itt())
	}
	// The session still works: CmdSN base+2 is next.
	c.CmdSN = base + 2
	h := c.scsiCmd(tur, false, false, true, 0)
	c.send(h, nil, nil)
	if r := c.readResponse(h.itt()); r.status != 0 {
		t.Fatalf("status %#x", r.status)
	}
	// Immediate commands do not consume CmdSN.
	im := c.scsiCmd(tur, false, false, true, 0)
	c.CmdSN-- // immediate: carries ExpCmdSN but does not consume it
	im[0] |= flagImmed
	c.send(im, nil, nil)
	p := c.recv()
	if p.hdr.opcode() != opSCSIResp || p.hdr.u32(28) != c.CmdSN {
		t.Fatalf("immediate: opcode %#x ExpCmdSN %d want %d", p.hdr.opcode(), p.hdr.u32(28), c.CmdSN)
	}
}

func TestWindowFlowControl(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1, MaxQueuedCommands: 16})
	ts.tgt.block = make(chan struct{})
	ts.tgt.started = make(chan struct{}, 64)
	c := dial(t, ts.addr)
	c.login(testIQN, "ImmediateData=Yes")
	// 16 blocked writes fill the window; the NOP reply's MaxCmdSN shows
	// that no slot is free.
	var itts []uint32
	for i := 0; i < 16; i++ {
		h := c.scsiCmd(cdb10(0x2a, uint32(i), 1), false, true, true, 512)
		c.send(h, nil, make([]byte, 512))
		itts = append(itts, h.itt())
	}
	for i := 0; i < 16; i++ {
		<-ts.tgt.started
	}
	var nop bhs
	nop[0] = opNOPOut | flagImmed
	nop[1] = flagFinal
	nop.setITT(c.NextITT())
	nop.setU32(20, tagNone)
	nop.setU32(24, c.CmdSN)
	c.send(&nop, nil, []byte("ping"))
	p := c.recv()
	if p.hdr.opcode() != opNOPIn || string(p.data) != "ping" {
		t.Fatalf("NOP-In opcode %#x data %q", p.hdr.opcode(), p.data)
	}
	exp, maxSN := p.hdr.u32(28), p.hdr.u32(32)
	if maxSN != exp-1 {
		t.Fatalf("window full but ExpCmdSN %d MaxCmdSN %d", exp, maxSN)
	}
	close(ts.tgt.block)
	var last uint32
	for range itts {
		p := c.recv()
		last = p.hdr.u32(32)
	}
	if last != exp+15 {
		t.Fatalf("MaxCmdSN after completion %d, want %d", last, exp+15)
	}
}

func TestNOP(t *testing.T) {
	ts := startServer(t, Config{NopInterval: 50 * time.Millisecond, NopTimeout: 300 * time.Millisecond})
	c := dial(t, ts.addr)
	c.login(testIQN)
	// The target pings us; answer a few.
	for i := 0; i < 3; i++ {
		p := c.recv()
		if p.hdr.opcode() != opNOPIn || p.hdr.itt() != tagNone || p.hdr.u32(20) == tagNone {
			t.Fatalf("keep-alive: opcode %#x itt %#x ttt %#x", p.hdr.opcode(), p.hdr.itt(), p.hdr.u32(20))
		}
		c.answerNOP(p)
	}
	// Stop answering: the connection must be dropped.
	start := time.Now()
	c.expectClosed()
	if time.Since(start) > 3*time.Second {
		t.Fatal("keep-alive timeout too slow")
	}
}

func TestNOPOnlyWhenIdle(t *testing.T) {
	ts := startServer(t, Config{NopInterval: 300 * time.Millisecond, NopTimeout: time.Second})
	c := dial(t, ts.addr)
	c.login(testIQN)
	// A busy connection is not pinged.
	end := time.Now().Add(time.Second)
	for time.Now().Before(end) {
		h := c.scsiCmd(make([]byte, 6), false, false, true, 0)
		c.send(h, nil, nil)
		p := c.recv()
		if p.hdr.opcode() != opSCSIResp {
			t.Fatalf("busy connection got opcode %#x", p.hdr.opcode())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// An idle one is.
	start := time.Now()
	p := c.recv()
	if p.hdr.opcode() != opNOPIn || p.hdr.u32(20) == tagNone {
		t.Fatalf("idle connection got opcode %#x", p.hdr.opcode())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("ping after %v", d)
	}
}

func TestAbortTask(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.block = make(chan struct{})
	ts.tgt.started = make(chan struct{}, 4)
	c := dial(t, ts.addr)
	c.login(testIQN, "ImmediateData=Yes")
	h := c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	c.send(h, nil, make([]byte, 512))
	<-ts.tgt.started
	tmf := func(fn scsi.TMF, rtt, refSN uint32, lun uint64) *pdu {
		p, err := c.TMF(byte(fn), lun, rtt, refSN)
		if err != nil {
			t.Fatalf("TMF: %v", err)
		}
		return fromTest(p)
	}
	if p := tmf(scsi.TMFAbortTask, h.itt(), h.u32(24), 0); p.hdr[2] != tmfComplete {
		t.Fatalf("abort: response %d", p.hdr[2])
	}
	// No response for the aborted task ever comes.
	if p, err := c.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("aborted task answered: opcode %#x", p.hdr.opcode())
	}
	if p := tmf(scsi.TMFAbortTask, 0x1234, c.CmdSN-10, 0); p.hdr[2] != tmfNoTask {
		t.Fatalf("abort unknown: response %d", p.hdr[2])
	}
	if p := tmf(scsi.TMFAbortTask, 0x1234, 0, 1<<56); p.hdr[2] != tmfNoLUN {
		t.Fatalf("abort on missing LUN: response %d", p.hdr[2])
	}
	if p := tmf(scsi.TMFLogicalUnitReset, 0, 0, 0); p.hdr[2] != tmfComplete {
		t.Fatalf("LU reset: response %d", p.hdr[2])
	}
	if p := tmf(scsi.TMFClearACA, 0, 0, 0); p.hdr[2] != tmfNotSupported {
		t.Fatalf("clear ACA: response %d", p.hdr[2])
	}
	if p := tmf(scsi.TMFTaskReassign, 0, 0, 0); p.hdr[2] != tmfNoReassign {
		t.Fatalf("task reassign: response %d", p.hdr[2])
	}
	if p := tmf(scsi.TMFTargetWarmReset, 0, 0, 0); p.hdr[2] != tmfComplete {
		t.Fatalf("warm reset: response %d", p.hdr[2])
	}
	ts.tgt.mu.Lock()
	resets := append([]scsi.TMF(nil), ts.tgt.resets...)
	ts.tgt.mu.Unlock()
	if len(resets) != 2 || resets[0] != scsi.TMFLogicalUnitReset || resets[1] != scsi.TMFTargetWarmReset {
		t.Fatalf("resets %v", resets)
	}
	// The session keeps working.
	close(ts.tgt.block)
	r := c.write(0, make([]byte, 1024), 1024)
	if r.status != 0 {
		t.Fatalf("write after aborts: %#x", r.status)
	}
	// Cold reset answers, then drops the connection.
	if p := tmf(scsi.TMFTargetColdReset, 0, 0, 0); p.hdr[2] != tmfComplete {
		t.Fatalf("cold reset: response %d", p.hdr[2])
	}
	c.expectClosed()
}

func TestAbortTaskSetWhileCollecting(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c := dial(t, ts.addr)
	c.login(testIQN, "InitialR2T=Yes", "ImmediateData=No")
	h := c.scsiCmd(cdb10(0x2a, 0, 4), false, true, true, 2048)
	c.send(h, nil, nil)
	r2t := c.recv()
	p, err := c.TMF(byte(scsi.TMFAbortTaskSet), 0, tagNone, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p.BHS[2] != tmfComplete {
		t.Fatalf("response %d", p.BHS[2])
	}
	// Late Data-Out for the aborted task is ignored, not an error.
	c.dataOut(h.itt(), r2t.hdr.u32(20), 0, 0, true, make([]byte, 2048))
	tur := c.scsiCmd(make([]byte, 6), false, false, true, 0)
	c.send(tur, nil, nil)
	if r := c.readResponse(tur.itt()); r.status != 0 {
		t.Fatalf("status %#x", r.status)
	}
}

func TestSessionReinstatement(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c1 := dial(t, ts.addr)
	c1.login(testIQN)
	old := c1.TSIH
	c2 := dial(t, ts.addr)
	c2.login(testIQN)
	if c2.TSIH == old {
		t.Fatal("reinstated session kept the TSIH")
	}
	c1.expectClosed()
	if n := ts.tgt.lossCount(); n != 1 {
		t.Fatalf("NexusLoss calls %d, want 1", n)
	}
	if s := ts.srv.Sessions(); len(s) != 1 || s[0].TSIH != c2.TSIH {
		t.Fatalf("sessions %+v", s)
	}
	// A different ISID is a second session (multipath), not a reinstatement.
	c3 := dial(t, ts.addr)
	c3.ISID[5] = 2
	c3.login(testIQN)
	if s := ts.srv.Sessions(); len(s) != 2 {
		t.Fatalf("%d sessions, want 2", len(s))
	}
}

func TestLogout(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c := dial(t, ts.addr)
	c.login(testIQN)
	p, err := c.Logout(iscsitest.LogoutSession)
	if err != nil {
		t.Fatal(err)
	}
	if p.BHS[2] != 0 {
		t.Fatalf("response %d", p.BHS[2])
	}
	if p.BHS.U16(40) != 2 || p.BHS.U16(42) != 20 {
		t.Fatalf("Time2Wait/Retain % x", p.BHS[40:44])
	}
	c.expectClosed()
	deadline := time.Now().Add(2 * time.Second)
	for len(ts.srv.Sessions()) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(ts.srv.Sessions()) != 0 || ts.tgt.lossCount() != 1 {
		t.Fatalf("sessions %d losses %d after logout", len(ts.srv.Sessions()), ts.tgt.lossCount())
	}
}

func TestServerLogoutAsync(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1, LogoutGrace: 300 * time.Millisecond})
	c := dial(t, ts.addr)
	c.login(testIQN)
	if err := ts.srv.Logout(c.TSIH + 100); err == nil {
		t.Fatal("Logout of unknown TSIH succeeded")
	}
	if err := ts.srv.Logout(c.TSIH); err != nil {
		t.Fatal(err)
	}
	p := c.recv()
	if p.hdr.opcode() != opAsyncMsg || p.hdr[36] != 1 {
		t.Fatalf("opcode %#x event %d", p.hdr.opcode(), p.hdr[36])
	}
	// We ignore the request; the target drops us after the grace period.
	c.expectClosed()
}

func TestPanicClosesOnlyThatConnection(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.panicOn = 0x12
	c1 := dial(t, ts.addr)
	c1.login(testIQN)
	c2 := dial(t, ts.addr)
	c2.ISID[5] = 9
	c2.login(testIQN)
	h := c1.scsiCmd([]byte{0x12, 0, 0, 0, 36, 0}, true, false, true, 36)
	c1.send(h, nil, nil)
	c1.expectClosed()
	tur := c2.scsiCmd(make([]byte, 6), false, false, true, 0)
	c2.send(tur, nil, nil)
	if r := c2.readResponse(tur.itt()); r.status != 0 {
		t.Fatalf("other session: status %#x", r.status)
	}
}

func TestMalformedPDUs(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1, MaxRecvDataSegmentLength: 8192})
	t.Run("unknown opcode rejected", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.login(testIQN)
		var h bhs
		h[0] = 0x1c
		h.setITT(7)
		c.send(&h, nil, nil)
		p := c.recv()
		if p.hdr.opcode() != opReject || p.hdr[2] != rejectNotSupported || !bytes.Equal(p.data[:1], []byte{0x1c}) {
			t.Fatalf("opcode %#x reason %#x", p.hdr.opcode(), p.hdr[2])
		}
	})
	t.Run("snack rejected", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.login(testIQN)
		var h bhs
		h[0] = opSNACKReq
		h[1] = flagFinal
		c.send(&h, nil, nil)
		if p := c.recv(); p.hdr.opcode() != opReject || p.hdr[2] != rejectProtocolError {
			t.Fatalf("opcode %#x reason %#x", p.hdr.opcode(), p.hdr[2])
		}
	})
	t.Run("oversized segment closes", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.login(testIQN)
		var h bhs
		h[0] = opNOPOut | flagImmed
		h[1] = flagFinal
		h.setITT(5)
		h.setU32(20, tagNone)
		c.send(&h, nil, make([]byte, 8196))
		c.expectClosed()
	})
	t.Run("garbage before login closes", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.NetConn().Write(bytes.Repeat([]byte{0xff}, 100))
		c.expectClosed()
	})
}

func TestDigests(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	copy(ts.tgt.disk, pattern(4096, 5))
	c := dial(t, ts.addr)
	m := c.login(testIQN, "HeaderDigest=CRC32C,None", "DataDigest=CRC32C")
	if m["HeaderDigest"] != "CRC32C" || m["DataDigest"] != "CRC32C" {
		t.Fatalf("digests %v", m)
	}
	c.HeaderDigest, c.DataDigest = true, true
	r := c.write(0, pattern(2048, 8), 1024)
	if r.status != 0 {
		t.Fatalf("write status %#x", r.status)
	}
	rr := c.read(0, 4)
	if !bytes.Equal(rr.data, pattern(2048, 8)) {
		t.Fatal("read mismatch with digests")
	}
	// A corrupted data digest drops the connection.
	h := c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	raw := encodePDU(h, nil, make([]byte, 512), true, true)
	raw[len(raw)-1] ^= 0xff
	c.NetConn().Write(raw)
	c.expectClosed()
}

func TestCHAP(t *testing.T) {
	ft := newFakeTarget(testIQN)
	ft.creds = &CHAPCredentials{Required: true, User: "alice", Secret: "sesame-secret", MutualUser: "target", MutualSecret: "target-secret"}
	ts := startServer(t, Config{NopInterval: -1}, chapFake{ft})
	// chapLogin runs the security stage offering algs; ichal (when set) is
	// the mutual-CHAP challenge. It returns the client, the status of the
	// last login response and the algorithm the target chose.
	chapLogin := func(t *testing.T, algs, secret string, ichal []byte) (*client, uint16, chapAlg) {
		c := dial(t, ts.addr)
		p := c.loginPDU(0, 1, false, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN, "SessionType=Normal", "AuthMethod=CHAP,None"))
		if m := keyMap(t, p.data); m["AuthMethod"] != "CHAP" {
			t.Fatalf("AuthMethod %v status %#x", m, loginStatus(p))
		}
		p = c.loginPDU(0, 1, false, keysData("CHAP_A="+algs))
		m := keyMap(t, p.data)
		alg, ok := chapAlgs[m["CHAP_A"]]
		if !ok || m["CHAP_I"] == "" || !strings.HasPrefix(m["CHAP_C"], "0x") {
			t.Fatalf("challenge %v", m)
		}
		var id uint8
		for _, ch := range m["CHAP_I"] {
			id = id*10 + uint8(ch-'0')
		}
		chal, _ := hex.DecodeString(m["CHAP_C"][2:])
		if len(chal) != alg.new().Size() {
			t.Fatalf("%s challenge of %d bytes, want the digest size %d", alg.name, len(chal), alg.new().Size())
		}
		resp := chapResponse(alg, id, secret, chal)
		keys := []string{"CHAP_N=alice", "CHAP_R=0x" + hex.EncodeToString(resp)}
		if ichal != nil {
			if string(ichal) == "reflect" {
				ichal = chal
			}
			keys = append(keys, "CHAP_I=77", "CHAP_C=0x"+hex.EncodeToString(ichal))
		}
		p = c.loginPDU(0, 1, true, keysData(keys...))
		st := loginStatus(p)
		if st == 0 && ichal != nil {
			m := keyMap(t, p.data)
			want := "0x" + hex.EncodeToString(chapResponse(alg, 77, "target-secret", ichal))
			if m["CHAP_N"] != "target" || m["CHAP_R"] != want {
				t.Fatalf("mutual response %v", m)
			}
		}
		return c, st, alg
	}
	ichal := []byte("0123456789abcdef")
	for _, tc := range []struct{ offer, want string }{
		{"5", "MD5"},
		{"7,5", "SHA-256"},
		{"8,7,5", "SHA3-256"},
		{"7,8,5", "SHA-256"}, // the initiator's order decides
		{"6,5", "MD5"},       // SHA-1 is not offered
		{"8", "SHA3-256"},
	} {
		t.Run("good "+tc.offer, func(t *testing.T) {
			c, st, alg := chapLogin(t, tc.offer, "sesame-secret", ichal)
			if st != 0 {
				t.Fatalf("status %#x", st)
			}
			if alg.name != tc.want {
				t.Fatalf("CHAP_A=%s chose %s, want %s", tc.offer, alg.name, tc.want)
			}
			p := c.loginPDU(1, 3, true, nil)
			if loginStatus(p) != 0 || p.hdr[1]&flagTransit == 0 {
				t.Fatalf("op stage status %#x", loginStatus(p))
			}
			var info *SessionInfo
			for _, si := range ts.srv.Sessions() {
				if si.TSIH == binary.BigEndian.Uint16(p.hdr[14:16]) {
					info = &si
				}
			}
			if info == nil || info.AuthMethod != "CHAP" || info.CHAPAlgorithm != tc.want || !info.MutualCHAP {
				t.Fatalf("session info %+v", info)
			}
		})
	}
	t.Run("bad secret", func(t *testing.T) {
		c, st, _ := chapLogin(t, "7", "wrong", nil)
		if st != statusAuthFailure {
			t.Fatalf("status %#x, want auth failure", st)
		}
		c.expectClosed()
	})
	t.Run("md5 response to sha256 challenge", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.loginPDU(0, 1, false, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN, "AuthMethod=CHAP"))
		m := keyMap(t, c.loginPDU(0, 1, false, keysData("CHAP_A=7")).data)
		var id uint8
		for _, ch := range m["CHAP_I"] {
			id = id*10 + uint8(ch-'0')
		}
		chal, _ := hex.DecodeString(m["CHAP_C"][2:])
		resp := chapResponse(chapAlgs["5"], id, "sesame-secret", chal)
		p := c.loginPDU(0, 1, true, keysData("CHAP_N=alice", "CHAP_R=0x"+hex.EncodeToString(resp)))
		if st := loginStatus(p); st != statusAuthFailure {
			t.Fatalf("status %#x, want auth failure", st)
		}
	})
	t.Run("no supported algorithm", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.loginPDU(0, 1, false, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN, "AuthMethod=CHAP"))
		p := c.loginPDU(0, 1, false, keysData("CHAP_A=6,99"))
		if st := loginStatus(p); st != statusAuthFailure {
			t.Fatalf("status %#x, want auth failure", st)
		}
	})
	// A mutual challenge shorter than 16 bytes is refused, and so is one
	// that reflects the target's own challenge.
	for name, chal := range map[string][]byte{
		"short mutual challenge": []byte("0123456789abcde"),
		"one-byte challenge":     {1},
		"reflected challenge":    []byte("reflect"),
	} {
		t.Run(name, func(t *testing.T) {
			c, st, _ := chapLogin(t, "7,5", "sesame-secret", chal)
			if st != statusAuthFailure {
				t.Fatalf("status %#x, want auth failure", st)
			}
			c.expectClosed()
		})
	}
	t.Run("none refused", func(t *testing.T) {
		c := dial(t, ts.addr)
		p := c.loginPDU(0, 1, true, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN, "AuthMethod=None"))
		if st := loginStatus(p); st != statusAuthFailure {
			t.Fatalf("status %#x", st)
		}
	})
	t.Run("skip security refused", func(t *testing.T) {
		c := dial(t, ts.addr)
		p := c.loginPDU(1, 3, true, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN))
		if st := loginStatus(p); st != statusAuthFailure {
			t.Fatalf("status %#x", st)
		}
	})
}

func TestShutdownWaitsAndReportsNexusLoss(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.block = make(chan struct{})
	ts.tgt.started = make(chan struct{}, 1)
	c := dial(t, ts.addr)
	c.login(testIQN, "ImmediateData=Yes")
	h := c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	c.send(h, nil, make([]byte, 512))
	<-ts.tgt.started
	go func() {
		time.Sleep(100 * time.Millisecond)
		close(ts.tgt.block)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// The in-flight write finished and answered before the close.
	r := c.readResponse(h.itt())
	if r.status != 0 {
		t.Fatalf("status %#x", r.status)
	}
	if ts.tgt.lossCount() != 1 {
		t.Fatalf("NexusLoss %d", ts.tgt.lossCount())
	}
}

func TestTaskAttributes(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.block = make(chan struct{})
	ts.tgt.started = make(chan struct{}, 4)
	c := dial(t, ts.addr)
	c.login(testIQN, "ImmediateData=Yes")
	w := c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	c.send(w, nil, make([]byte, 512))
	<-ts.tgt.started
	withAttr := func(attr scsi.TaskAttr) *bhs {
		h := c.scsiCmd(make([]byte, 6), false, false, true, 0)
		h[1] = h[1]&^7 | byte(attr)
		c.send(h, nil, nil)
		return h
	}
	ordered := withAttr(scsi.TaskOrdered)
	simple := withAttr(scsi.TaskSimple)
	hoq := withAttr(scsi.TaskHeadOfQueue)
	// Only HEAD OF QUEUE overtakes the blocked write.
	p := c.recv()
	if p.hdr.itt() != hoq.itt() {
		t.Fatalf("first response for ITT %#x, want the HEAD OF QUEUE task %#x", p.hdr.itt(), hoq.itt())
	}
	if p, err := c.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("ITT %#x answered while an earlier task blocks the ORDERED one", p.hdr.itt())
	}
	close(ts.tgt.block)
	var order []uint32
	for i := 0; i < 3; i++ {
		order = append(order, c.recv().hdr.itt())
	}
	// The write finishes first, then the ORDERED task, then the SIMPLE one
	// that came after it.
	want := []uint32{w.itt(), ordered.itt(), simple.itt()}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("completion order %x, want %x", order, want)
		}
	}
}

func TestDataOutMemoryBudget(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1, MaxTransferLength: 64 << 10, MaxSessionDataOut: 64 << 10})
	c := dial(t, ts.addr)
	c.login(testIQN, "InitialR2T=Yes", "ImmediateData=No")
	// The first write reserves the whole budget while it waits for data.
	h1 := c.scsiCmd(cdb10(0x2a, 0, 128), false, true, true, 64<<10)
	c.send(h1, nil, nil)
	r2t := c.recv()
	if r2t.hdr.opcode() != opR2T {
		t.Fatalf("opcode %#x", r2t.hdr.opcode())
	}
	// A second one does not fit: TASK SET FULL, without any R2T.
	h2 := c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	c.send(h2, nil, nil)
	if r := c.readResponse(h2.itt()); r.status != byte(scsi.StatusTaskSetFull) || len(r.r2ts) != 0 {
		t.Fatalf("status %#x r2ts %d, want TASK SET FULL", r.status, len(r.r2ts))
	}
	// Finishing the first frees the budget for the next write.
	for off := uint32(0); off < r2t.hdr.u32(44); off += 8192 {
		c.dataOut(h1.itt(), r2t.hdr.u32(20), off/8192, off, off+8192 == r2t.hdr.u32(44), make([]byte, 8192))
	}
	if r := c.readResponse(h1.itt()); r.status != 0 {
		t.Fatalf("first write: status %#x", r.status)
	}
	if r := c.write(0, make([]byte, 512), 512); r.status != 0 {
		t.Fatalf("write after release: status %#x", r.status)
	}
}

func TestTextRequestContinuationAndFFPKeys(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c := dial(t, ts.addr)
	c.login(testIQN)
	req := keysData("SendTargets=All", "MaxRecvDataSegmentLength=16384", "InitialR2T=No", "X-foo=bar")
	var h bhs
	h[0] = opTextReq
	h[1] = flagContinue
	h.setITT(c.NextITT())
	h.setU32(20, tagNone)
	h.setU32(24, c.CmdSN)
	c.CmdSN++
	c.send(&h, nil, req[:10])
	p := c.recv()
	if p.hdr.opcode() != opTextResp || len(p.data) != 0 || p.hdr[1]&flagFinal != 0 || p.hdr.u32(20) == tagNone {
		t.Fatalf("continuation ack: opcode %#x flags %#x ttt %#x data %q", p.hdr.opcode(), p.hdr[1], p.hdr.u32(20), p.data)
	}
	h[1] = flagFinal
	h.setU32(20, p.hdr.u32(20))
	h.setU32(24, c.CmdSN)
	c.CmdSN++
	c.send(&h, nil, req[10:])
	p = c.recv()
	if p.hdr[1]&flagFinal == 0 {
		t.Fatalf("final response flags %#x", p.hdr[1])
	}
	m := keyMap(t, p.data)
	if m["TargetName"] != testIQN || m["InitialR2T"] != "Reject" || m["X-foo"] != "NotUnderstood" {
		t.Fatalf("FFP text answer %v", m)
	}
	if _, ok := m["MaxRecvDataSegmentLength"]; ok {
		t.Fatalf("declarative key answered: %v", m)
	}
	if si := ts.srv.Sessions(); si[0].Params.MaxXmitDataSegmentLength != 16384 {
		t.Fatalf("MaxRecvDataSegmentLength not applied: %d", si[0].Params.MaxXmitDataSegmentLength)
	}
	// A non-immediate NOP-Out consumes a CmdSN.
	var nop bhs
	nop[0] = opNOPOut
	nop[1] = flagFinal
	nop.setITT(c.NextITT())
	nop.setU32(20, tagNone)
	nop.setU32(24, c.CmdSN)
	c.CmdSN++
	c.send(&nop, nil, nil)
	p = c.recv()
	if p.hdr.opcode() != opNOPIn || p.hdr.u32(28) != c.CmdSN {
		t.Fatalf("NOP-In opcode %#x ExpCmdSN %d want %d", p.hdr.opcode(), p.hdr.u32(28), c.CmdSN)
	}
}

func TestRejectedCommands(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.tgt.block = make(chan struct{})
	ts.tgt.started = make(chan struct{}, 1)
	defer close(ts.tgt.block)
	c := dial(t, ts.addr)
	c.login(testIQN, "InitialR2T=Yes", "ImmediateData=No")
	cases := []struct {
		name string
		h    func() (*bhs, []byte)
	}{
		{"immediate data refused", func() (*bhs, []byte) {
			return c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512), make([]byte, 512)
		}},
		{"unsolicited with InitialR2T", func() (*bhs, []byte) {
			return c.scsiCmd(cdb10(0x2a, 0, 1), false, true, false, 512), nil
		}},
		{"data on a read", func() (*bhs, []byte) {
			return c.scsiCmd(cdb10(0x28, 0, 1), true, false, true, 512), make([]byte, 8)
		}},
		{"bad AHS", func() (*bhs, []byte) {
			h := c.scsiCmd(make([]byte, 6), false, false, true, 0)
			h[4] = 1 // one AHS word follows, of an unknown type
			return h, nil
		}},
	}
	for _, tc := range cases {
		h, data := tc.h()
		var ahs []byte
		if h[4] != 0 {
			ahs = []byte{0, 1, 9, 0}
		}
		c.send(h, ahs, data)
		p := c.recv()
		if p.hdr.opcode() != opReject || p.hdr.u32(28) != c.CmdSN {
			t.Fatalf("%s: opcode %#x ExpCmdSN %d, want Reject and %d", tc.name, p.hdr.opcode(), p.hdr.u32(28), c.CmdSN)
		}
		if !bytes.Equal(p.data[16:20], h[16:20]) {
			t.Fatalf("%s: Reject does not carry the rejected header", tc.name)
		}
	}
	// An ITT still in use is refused ("task in progress").
	w := c.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	c.send(w, nil, nil)
	r2t := c.recv()
	c.dataOut(w.itt(), r2t.hdr.u32(20), 0, 0, true, make([]byte, 512))
	<-ts.tgt.started
	dup := c.scsiCmd(make([]byte, 6), false, false, true, 0)
	dup.setITT(w.itt())
	c.send(dup, nil, nil)
	if p := c.recv(); p.hdr.opcode() != opReject || p.hdr[2] != rejectTaskInProgress {
		t.Fatalf("duplicate ITT: opcode %#x reason %#x", p.hdr.opcode(), p.hdr[2])
	}
}

func TestLoginWithTSIH(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	c1 := dial(t, ts.addr)
	c1.login(testIQN)
	try := func(tsih uint16) uint16 {
		c := dial(t, ts.addr)
		c.TSIH = tsih
		p := c.loginPDU(0, 1, true, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN, "AuthMethod=None"))
		if loginStatus(p) != 0 {
			return loginStatus(p)
		}
		p = c.loginPDU(1, 3, true, nil)
		return loginStatus(p)
	}
	if st := try(c1.TSIH); st != statusTooManyConnections {
		t.Fatalf("second connection: status %#04x, want %#04x", st, statusTooManyConnections)
	}
	if st := try(c1.TSIH + 77); st != statusSessionDoesNotExist {
		t.Fatalf("unknown TSIH: status %#04x, want %#04x", st, statusSessionDoesNotExist)
	}
}

// scribbler recycles Data-In buffers by overwriting them, so a transport
// that released a buffer before sending it would corrupt the read.
type scribbler struct {
	*fakeTarget
	mu       sync.Mutex
	released int
}

func (s *scribbler) ReleaseDataIn(b []byte) {
	for i := range b {
		b[i] = 0xee
	}
	s.mu.Lock()
	s.released++
	s.mu.Unlock()
}

func TestDataInRelease(t *testing.T) {
	ft := newFakeTarget(testIQN)
	copy(ft.disk, pattern(len(ft.disk), 11))
	sc := &scribbler{fakeTarget: ft}
	ft.dev = sc
	ts := startServer(t, Config{NopInterval: -1}, sc)
	c := dial(t, ts.addr)
	c.login(testIQN, "MaxRecvDataSegmentLength=65536")
	const reads = 20
	for i := 0; i < reads; i++ {
		blocks := uint16(1 + i*37%512)
		r := c.read(uint32(i), blocks)
		if !bytes.Equal(r.data, ft.disk[i*512:i*512+int(blocks)*512]) {
			t.Fatalf("read %d: data overwritten before it was sent", i)
		}
	}
	// INQUIRY with a short allocation length, and a failing read.
	h := c.scsiCmd([]byte{0x12, 0, 0, 0, 36, 0}, true, false, true, 36)
	c.send(h, nil, nil)
	c.readResponse(h.itt())
	deadline := time.Now().Add(2 * time.Second)
	for {
		sc.mu.Lock()
		n := sc.released
		sc.mu.Unlock()
		if n == reads+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d buffers released, want %d", n, reads+1)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// jitter delays reads by up to 300 us, so pipelined commands finish out of
// order and their responses race: some are written by the finishing task
// goroutine itself, some queue behind others for the writer goroutine.
type jitter struct {
	*fakeTarget
	n atomic.Uint32
}

func (j *jitter) Execute(ctx context.Context, cmd *scsi.Command) scsi.Result {
	if cmd.CDB[0] == 0x28 {
		time.Sleep(time.Duration(j.n.Add(7919)%300) * time.Microsecond)
	}
	return j.fakeTarget.Execute(ctx, cmd)
}

// TestPipelinedResponsesIntact pipelines reads of several Data-In PDUs each,
// with initiator NOP-Outs (answered by the reader through the writer
// goroutine) in between, and checks every PDU: data, offsets, DataSNs, and
// StatSNs that advance by one per status on the wire. Responses written
// directly by task goroutines and by the writer goroutine share one socket;
// a PDU interleaved into another's bytes would fail here (and under -race).
func TestPipelinedResponsesIntact(t *testing.T) {
	ft := newFakeTarget(testIQN)
	copy(ft.disk, pattern(len(ft.disk), 5))
	j := &jitter{fakeTarget: ft}
	ft.dev = j
	ts := startServer(t, Config{NopInterval: -1}, j)
	c := dial(t, ts.addr)
	c.login(testIQN, "MaxRecvDataSegmentLength=4096")
	type want struct {
		lba    uint32
		blocks uint16
		got    []byte
		dataSN uint32
	}
	var statSN uint32
	haveStatSN := false
	checkStatSN := func(p *pdu) {
		sn := p.hdr.u32(24)
		if haveStatSN && sn != statSN+1 {
			t.Fatalf("StatSN %d after %d", sn, statSN)
		}
		statSN, haveStatSN = sn, true
	}
	for round := 0; round < 30; round++ {
		pending := map[uint32]*want{}
		pings := map[uint32]bool{}
		for i := 0; i < 12; i++ {
			w := &want{lba: uint32((round*12 + i) * 7 % 1900), blocks: uint16(1 + (round*5+i*3)%24)}
			h := c.scsiCmd(cdb10(0x28, w.lba, w.blocks), true, false, true, uint32(w.blocks)*512)
			pending[h.itt()] = w
			c.send(h, nil, nil)
			if i%4 == 3 {
				pings[c.ping()] = true
			}
		}
		for len(pending)+len(pings) > 0 {
			p := c.recv()
			itt := p.hdr.itt()
			switch p.hdr.opcode() {
			case opNOPIn:
				if !pings[itt] {
					t.Fatalf("NOP-In for ITT %#x, which pinged nothing", itt)
				}
				delete(pings, itt)
				checkStatSN(p)
			case opDataIn:
				w := pending[itt]
				if w == nil {
					t.Fatalf("Data-In for ITT %#x, which is not pending", itt)
				}
				if off := p.hdr.u32(40); int(off) != len(w.got) {
					t.Fatalf("ITT %#x: Data-In offset %d, want %d", itt, off, len(w.got))
				}
				if sn := p.hdr.u32(36); sn != w.dataSN {
					t.Fatalf("ITT %#x: DataSN %d, want %d", itt, sn, w.dataSN)
				}
				w.dataSN++
				w.got = append(w.got, p.data...)
				if p.hdr[1]&flagStatus == 0 {
					continue
				}
				checkStatSN(p)
				if p.hdr[3] != 0 {
					t.Fatalf("ITT %#x: status %#x", itt, p.hdr[3])
				}
				start := int(w.lba) * 512
				if !bytes.Equal(w.got, ft.disk[start:start+int(w.blocks)*512]) {
					t.Fatalf("ITT %#x: read data mismatch", itt)
				}
				delete(pending, itt)
			default:
				t.Fatalf("unexpected opcode %#x", p.hdr.opcode())
			}
		}
	}
}
