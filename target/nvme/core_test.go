package nvme

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

var le = binary.LittleEndian

func TestConnectAdminIdentifyController(t *testing.T) {
	e := newTestEnv(t)
	q, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 15000, connectData(testHostID, 0xffff, testSubNQN, testHostNQN)), testLocal)
	mustOK(t, "connect", c)
	defer q.Close()
	cntlid := q.Controller().ID()
	if c.DW0 != uint32(cntlid) || cntlid == 0 || cntlid > 0xffef {
		t.Fatalf("connect DW0 %#x, cntlid %d", c.DW0, cntlid)
	}
	if q.ID() != 0 || q.Size() != 32 || q.InCapsuleDataSize() != 8192 {
		t.Fatalf("admin queue id %d size %d icd %d", q.ID(), q.Size(), q.InCapsuleDataSize())
	}
	// Before CC.EN only Fabrics commands run.
	wantStatus(t, "identify before enable", exec2(q, identifyCmd(cnsController, 0)), StatusCommandSequence.WithDNR())

	capc := exec2(q, propGetCmd(propCAP, true))
	mustOK(t, "get CAP", capc)
	capv := uint64(capc.DW0) | uint64(capc.DW1)<<32
	if capv&0xffff != DefaultMaxQueueEntries-1 || capv&(1<<16) == 0 || capv>>24&0xff == 0 || capv&(1<<37) == 0 {
		t.Fatalf("CAP %#x", capv)
	}
	if v := exec2(q, propGetCmd(propVS, false)); v.DW0 != version {
		t.Fatalf("VS %#x", v.DW0)
	}
	wantStatus(t, "CAP as 4 bytes", exec2(q, propGetCmd(propCAP, false)), StatusInvalidField.WithDNR())
	wantStatus(t, "set CSTS", exec2(q, propSetCmd(propCSTS, 1)), StatusInvalidField.WithDNR())
	mustOK(t, "enable", exec2(q, propSetCmd(propCC, ccEnable)))
	if v := exec2(q, propGetCmd(propCSTS, false)); v.DW0&cstsRDY == 0 || v.DW0&cstsCFS != 0 {
		t.Fatalf("CSTS %#x after enable", v.DW0)
	}

	c, b := exec(t, q, identifyCmd(cnsController, 0))
	mustOK(t, "identify controller", c)
	if len(b) != 4096 {
		t.Fatalf("identify length %d", len(b))
	}
	check := func(name string, got, want uint64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %#x, want %#x", name, got, want)
		}
	}
	check("CNTLID", uint64(le.Uint16(b[78:])), uint64(cntlid))
	check("VER", uint64(le.Uint32(b[80:])), version)
	check("CMIC", uint64(b[76]), 2)
	check("MDTS", uint64(b[77]), 8) // 1 MiB in 4 KiB pages
	check("CNTRLTYPE", uint64(b[111]), 1)
	check("OAES", uint64(le.Uint32(b[92:])), 1<<8)
	check("KAS", uint64(le.Uint16(b[320:])), 1)
	check("SQES", uint64(b[512]), 0x66)
	check("CQES", uint64(b[513]), 0x44)
	check("MAXCMD", uint64(le.Uint16(b[514:])), DefaultMaxQueueEntries)
	check("NN", uint64(le.Uint32(b[516:])), 1024)
	check("ONCS", uint64(le.Uint16(b[520:])), 0x0d)
	check("FUSES", uint64(le.Uint16(b[522:])), 1)
	check("VWC", uint64(b[525]), 1)
	check("SGLS", uint64(le.Uint32(b[536:])), 1|1<<20)
	check("IOCCSZ", uint64(le.Uint32(b[1792:])), (64+8192)/16)
	check("IORCSZ", uint64(le.Uint32(b[1796:])), 1)
	check("ICDOFF", uint64(le.Uint16(b[1800:])), 0)
	check("MSDBD", uint64(b[1803]), 1)
	check("LPA", uint64(b[261]), 6)
	check("AERL", uint64(b[259]), 3)
	check("FRMW", uint64(b[260]), 3)
	check("CTRATT", uint64(le.Uint32(b[96:])), 1|1<<6)
	if got := string(bytes.TrimRight(b[768:1024], "\x00")); got != testSubNQN {
		t.Errorf("SUBNQN %q", got)
	}
	if got := strings.TrimRight(string(b[4:24]), " "); got != "SN-TEST-0001" {
		t.Errorf("SN %q", got)
	}
	if got := strings.TrimRight(string(b[24:64]), " "); got != "Anvil Volume" {
		t.Errorf("MN %q", got)
	}
	if le.Uint16(b[2048:]) == 0 {
		t.Error("PSD0 max power zero")
	}

	// VWC follows the namespaces' write cache.
	e.vol.wce = false
	_, b = exec(t, q, identifyCmd(cnsController, 0))
	check("VWC with cache off", uint64(b[525]), 0)
}

func TestConnectErrors(t *testing.T) {
	e := newTestEnv(t)
	good := func() *Command {
		return connectCmd(0, 31, 0, connectData(testHostID, 0xffff, testSubNQN, testHostNQN))
	}
	for _, tc := range []struct {
		name   string
		mod    func(c *Command)
		status Status
		dw0    uint32
	}{
		{"recfmt", func(c *Command) { c.SQE[cseRecfmt] = 1 }, StatusConnectIncompatible.WithDNR(), 0},
		{"sqsize 0", func(c *Command) { le.PutUint16(c.SQE[cseSQSize:], 0) }, StatusConnectInvalidParam.WithDNR(), cseSQSize},
		{"sqsize > mqes", func(c *Command) { le.PutUint16(c.SQE[cseSQSize:], DefaultMaxQueueEntries) }, StatusConnectInvalidParam.WithDNR(), cseSQSize},
		{"unknown subsystem", func(c *Command) { copy(c.Data[cdSubNQN:], "nqn.2026-11.io.anvil:nope\x00") }, StatusConnectInvalidParam.WithDNR(), 1<<16 | cdSubNQN},
		{"static cntlid", func(c *Command) { le.PutUint16(c.Data[cdCNTLID:], 5) }, StatusConnectInvalidParam.WithDNR(), 1<<16 | cdCNTLID},
		{"short data", func(c *Command) { c.Data = c.Data[:512] }, StatusDataSGLLength.WithDNR(), 0},
		{"not connect", func(c *Command) { c.SQE[4] = FabricsPropertyGet }, StatusCommandSequence.WithDNR(), 0},
		{"io queue of unknown controller", func(c *Command) {
			le.PutUint16(c.SQE[cseQID:], 1)
			le.PutUint16(c.Data[cdCNTLID:], 77)
		}, StatusConnectInvalidParam.WithDNR(), 1<<16 | cdCNTLID},
	} {
		c := good()
		tc.mod(c)
		q, comp := e.tgt.Connect(context.Background(), c, testLocal)
		if q != nil || comp.Status != tc.status || comp.DW0 != tc.dw0 {
			t.Errorf("%s: queue %v status %v dw0 %#x, want %v dw0 %#x", tc.name, q != nil, comp.Status, comp.DW0, tc.status, tc.dw0)
		}
	}
	if n := e.tgt.Stats().Errors[StatusConnectInvalidParam]; n != 5 {
		t.Errorf("errors by status: %d invalid parameters, want 5", n)
	}
}

func TestHostACL(t *testing.T) {
	e := newTestEnv(t)
	e.sub.SetHosts(false, []string{"nqn.2014-08.org.example:other"})
	_, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 0, connectData(testHostID, 0xffff, testSubNQN, testHostNQN)), testLocal)
	wantStatus(t, "denied host", c, StatusConnectInvalidHost.WithDNR())
	if c.DW0 != 1<<16|cdHostNQN {
		t.Errorf("invalid host DW0 %#x", c.DW0)
	}
	e.sub.SetHosts(false, []string{testHostNQN})
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	io := e.connectIO(t, q, 1)
	// Dropping the host from the list tears its controller down.
	e.sub.SetHosts(false, nil)
	if !closed(q.Done(), time.Second) || !closed(io.Done(), time.Second) {
		t.Fatal("queues of a host no longer admitted stay open")
	}
	if n := len(e.tgt.Controllers()); n != 0 {
		t.Fatalf("%d controllers left", n)
	}
}

func TestCNTLIDUnique(t *testing.T) {
	e := newTestEnv(t)
	seen := map[uint16]bool{}
	for range 20 {
		q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
		id := q.Controller().ID()
		if seen[id] || id == 0 || id > 0xffef {
			t.Fatalf("CNTLID %d reused or out of range", id)
		}
		seen[id] = true
	}
	if st := e.tgt.Stats(); st.Controllers != 20 || st.Queues != 20 {
		t.Fatalf("stats %+v", st)
	}
	if infos := e.tgt.Controllers(); len(infos) != 20 || infos[0].HostNQN != testHostNQN || infos[0].HostID != testHostID || infos[0].Queues != 1 {
		t.Fatalf("controllers %+v", infos[0])
	}
}

func TestIOQueues(t *testing.T) {
	e := newTestEnv(t)
	q, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 0, connectData(testHostID, 0xffff, testSubNQN, testHostNQN)), testLocal)
	mustOK(t, "connect", c)
	defer q.Close()
	ctrl := q.Controller()
	ioConnect := func(qid uint16, hostID [16]byte, host string) (*Queue, Completion) {
		return e.tgt.Connect(context.Background(), connectCmd(qid, 31, 0, connectData(hostID, ctrl.ID(), testSubNQN, host)), testLocal)
	}
	_, c = ioConnect(1, testHostID, testHostNQN)
	wantStatus(t, "io connect before enable", c, StatusCommandSequence.WithDNR())
	mustOK(t, "enable", exec2(q, propSetCmd(propCC, ccEnable)))

	// Number of Queues: ask for 4, get 4 (MaxIOQueues is 8).
	c = exec2(q, adminCmd(OpSetFeatures, 0, featNumQueues, 3|3<<16))
	mustOK(t, "set number of queues", c)
	if c.DW0 != 3|3<<16 {
		t.Fatalf("granted %#x", c.DW0)
	}
	c = exec2(q, adminCmd(OpSetFeatures, 0, featNumQueues, 99|99<<16))
	if c.DW0 != 7|7<<16 {
		t.Fatalf("granted %#x for 100 queues, want 8", c.DW0)
	}
	mustOK(t, "shrink to 4", exec2(q, adminCmd(OpSetFeatures, 0, featNumQueues, 3|3<<16)))

	_, c = ioConnect(1, testHostID, "nqn.2014-08.org.example:impostor")
	wantStatus(t, "other host", c, StatusConnectInvalidParam.WithDNR())
	_, c = ioConnect(1, [16]byte{9}, testHostNQN)
	wantStatus(t, "other host ID", c, StatusConnectInvalidParam.WithDNR())
	if c.DW0 != 1<<16|cdHostID {
		t.Errorf("host ID IPO %#x", c.DW0)
	}
	_, c = ioConnect(5, testHostID, testHostNQN)
	wantStatus(t, "qid beyond granted", c, StatusConnectInvalidParam.WithDNR())
	if c.DW0 != cseQID {
		t.Errorf("qid IPO %#x", c.DW0)
	}
	io1, c := ioConnect(1, testHostID, testHostNQN)
	mustOK(t, "io connect", c)
	defer io1.Close()
	if io1.InCapsuleDataSize() != DefaultInCapsuleDataSize || io1.Size() != 32 {
		t.Fatalf("io queue icd %d size %d", io1.InCapsuleDataSize(), io1.Size())
	}
	_, c = ioConnect(1, testHostID, testHostNQN)
	wantStatus(t, "duplicate qid", c, StatusCommandSequence.WithDNR())
	wantStatus(t, "number of queues with I/O queues", exec2(q, adminCmd(OpSetFeatures, 0, featNumQueues, 0)), StatusCommandSequence.WithDNR())

	// I/O through the queue reaches the namespace.
	data := bytes.Repeat([]byte{0x5a}, 1024)
	w := ioCmd(OpWrite, 8, 2, 0, data, 512)
	mustOK(t, "write", exec2(io1, w))
	c, got := exec(t, io1, ioCmd(OpRead, 8, 2, 0, nil, 512))
	mustOK(t, "read", c)
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	bad := ioCmd(OpRead, 0, 1, 0, nil, 512)
	le.PutUint32(bad.SQE[4:], 9)
	wantStatus(t, "unknown nsid", exec2(io1, bad), StatusInvalidNamespace.WithDNR())
	wantStatus(t, "admin opcode on io queue", exec2(io1, adminCmd(OpIdentify, 1)), StatusInvalidOpcode.WithDNR())
	wantStatus(t, "property get on io queue", exec2(io1, propGetCmd(propCC, false)), StatusInvalidOpcode.WithDNR())
	big := ioCmd(OpRead, 0, 2048, 0, nil, 512)
	mustOK(t, "1 MiB read", exec2(io1, big))
	huge := ioCmd(OpRead, 0, 1, 0, nil, 512)
	le.PutUint32(huge.SQE[48:], 4096) // 4097 blocks: past MDTS
	wantStatus(t, "read past MDTS", exec2(io1, huge), StatusInvalidField.WithDNR())
	if st := e.tgt.Stats(); st.IOCommands < 5 || st.AdminCommands < 4 || st.FabricsCommands < 3 || st.Queues != 2 {
		t.Fatalf("stats %+v", st)
	}

	// Fused compare and write through the queue.
	cmp := ioCmd(OpCompare, 8, 2, 0, data, 512)
	cmp.SQE[1] = FuseFirst
	wr := ioCmd(OpWrite, 8, 2, 0, bytes.Repeat([]byte{1}, 1024), 512)
	wr.SQE[1] = FuseSecond
	c1, c2, _ := io1.ExecuteFused(context.Background(), cmp, wr)
	mustOK(t, "fused compare", c1)
	mustOK(t, "fused write", c2)
	wantStatus(t, "lone fused half", exec2(io1, cmp), StatusAbortMissingFused)

	// Disconnect completes, and the queue then stops.
	dc := &Command{}
	dc.SQE[0], dc.SQE[4] = OpFabrics, FabricsDisconnect
	mustOK(t, "disconnect", exec2(io1, dc))
	wantStatus(t, "command after disconnect", exec2(io1, ioCmd(OpFlush, 0, 1, 0, nil, 512)), StatusCommandSequence.WithDNR())
	if !closed(io1.Done(), 3*time.Second) {
		t.Fatal("disconnected queue never stopped")
	}
	io1b, c := ioConnect(1, testHostID, testHostNQN)
	mustOK(t, "reconnect qid 1 after disconnect", c)
	io1b.Close()
}

func TestKeepAliveExpiry(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 200)
	io := e.connectIO(t, q, 1)
	// Keep-alives keep it up well past KATO.
	for range 8 {
		time.Sleep(60 * time.Millisecond)
		mustOK(t, "keep alive", exec2(q, adminCmd(OpKeepAlive, 0)))
	}
	select {
	case <-q.Done():
		t.Fatal("controller expired while keep-alives arrived")
	default:
	}
	// An AER waits; silence then ends everything.
	aer := make(chan Completion, 1)
	go func() { aer <- exec2(q, adminCmd(OpAsyncEventReq, 0)) }()
	if !closed(q.Done(), 2*time.Second) || !closed(io.Done(), time.Second) {
		t.Fatal("keep-alive expiry did not close the queues")
	}
	select {
	case c := <-aer:
		wantStatus(t, "AER at teardown", c, StatusAbortSQDeleted)
	case <-time.After(time.Second):
		t.Fatal("waiting AER not completed at teardown")
	}
	if n := len(e.tgt.Controllers()); n != 0 {
		t.Fatalf("%d controllers after expiry", n)
	}
}

func TestKeepAliveZeroDisabledAndFeature(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featKeepAlive)); c.DW0 != 0 {
		t.Fatalf("KATO %d", c.DW0)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-q.Done():
		t.Fatal("KATO 0 controller expired")
	default:
	}
	mustOK(t, "set KATO", exec2(q, adminCmd(OpSetFeatures, 0, featKeepAlive, 100)))
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featKeepAlive)); c.DW0 != 100 {
		t.Fatalf("KATO %d after set", c.DW0)
	}
	if !closed(q.Done(), 2*time.Second) {
		t.Fatal("KATO set by Set Features not enforced")
	}
}

func TestResetDeletesIOQueues(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	io := e.connectIO(t, q, 1)
	aer := make(chan Completion, 1)
	go func() { aer <- exec2(q, adminCmd(OpAsyncEventReq, 0)) }()
	time.Sleep(20 * time.Millisecond)
	mustOK(t, "reset", exec2(q, propSetCmd(propCC, ccEnable&^ccEN)))
	if !closed(io.Done(), time.Second) {
		t.Fatal("reset kept the I/O queue")
	}
	select {
	case <-q.Done():
		t.Fatal("reset closed the admin queue")
	default:
	}
	select {
	case c := <-aer:
		wantStatus(t, "AER at reset", c, StatusAbortSQDeleted)
	case <-time.After(time.Second):
		t.Fatal("AER survived reset")
	}
	if c := exec2(q, propGetCmd(propCSTS, false)); c.DW0&cstsRDY != 0 {
		t.Fatalf("CSTS %#x after reset", c.DW0)
	}
	wantStatus(t, "identify while disabled", exec2(q, identifyCmd(cnsController, 0)), StatusCommandSequence.WithDNR())
	mustOK(t, "re-enable", exec2(q, propSetCmd(propCC, ccEnable)))
	e.connectIO(t, q, 1)
	// A bad CC (wrong SQE size) is a fatal status, not ready.
	mustOK(t, "reset", exec2(q, propSetCmd(propCC, 0)))
	mustOK(t, "bad enable", exec2(q, propSetCmd(propCC, ccEN|5<<16|4<<20)))
	if c := exec2(q, propGetCmd(propCSTS, false)); c.DW0&cstsCFS == 0 || c.DW0&cstsRDY != 0 {
		t.Fatalf("CSTS %#x after bad enable", c.DW0)
	}
}

func TestShutdown(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	flushes := e.vol.flushes
	mustOK(t, "shutdown", exec2(q, propSetCmd(propCC, ccEnable|1<<ccSHNShift)))
	c := exec2(q, propGetCmd(propCSTS, false))
	if c.DW0>>2&3 != 2 {
		t.Fatalf("CSTS %#x: SHST not complete", c.DW0)
	}
	if e.vol.flushes == flushes {
		t.Fatal("shutdown did not flush")
	}
}

func TestAENNamespaceChanged(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	aer := make(chan Completion, 4)
	submit := func() { go func() { aer <- exec2(q, adminCmd(OpAsyncEventReq, 0)) }() }
	submit()
	time.Sleep(20 * time.Millisecond)
	ns2 := NewNamespace(newNSVolume(64, 512), NamespaceConfig{NSID: 2, NGUID: [16]byte{3}, UUID: [16]byte{4}})
	if err := e.sub.AddNamespace(ns2); err != nil {
		t.Fatal(err)
	}
	var c Completion
	select {
	case c = <-aer:
	case <-time.After(time.Second):
		t.Fatal("no AEN for AddNamespace")
	}
	mustOK(t, "AER", c)
	if c.DW0 != 0x040002 {
		t.Fatalf("AEN DW0 %#x, want type notice, info 0, log 04h", c.DW0)
	}
	// Masked until the log is read: a second change raises nothing yet.
	submit()
	e.sub.NamespaceChanged(1)
	select {
	case c = <-aer:
		t.Fatalf("masked event delivered: %#x", c.DW0)
	case <-time.After(50 * time.Millisecond):
	}
	c, b := exec(t, q, logCmd(logChangedNS, 0xffffffff, 4096, 0, true))
	mustOK(t, "changed ns log with RAE", c)
	if le.Uint32(b[0:]) != 2 || le.Uint32(b[4:]) != 1 || le.Uint32(b[8:]) != 0 {
		t.Fatalf("changed list %v", b[:12])
	}
	// RAE kept the mask, and reading cleared the list.
	c, b = exec(t, q, logCmd(logChangedNS, 0xffffffff, 4096, 0, false))
	mustOK(t, "changed ns log", c)
	if le.Uint32(b[0:]) != 0 {
		t.Fatalf("list not cleared by read: %v", b[:8])
	}
	if err := e.sub.RemoveNamespace(2); err != nil {
		t.Fatal(err)
	}
	select {
	case c = <-aer:
		if c.DW0 != 0x040002 {
			t.Fatalf("AEN %#x", c.DW0)
		}
	case <-time.After(time.Second):
		t.Fatal("no AEN after the log was read")
	}
	// The limit is AERL+1 outstanding.
	for range aerLimit {
		submit()
	}
	time.Sleep(30 * time.Millisecond)
	wantStatus(t, "AER past the limit", exec2(q, adminCmd(OpAsyncEventReq, 0)), StatusAsyncEventLimitExceeded.WithDNR())
	// Abort takes a waiting AER back.
	ab := adminCmd(OpAbort, 0, 0|0x10<<16)
	c = exec2(q, ab)
	if !c.Status.OK() || c.DW0&1 != 0 {
		t.Fatalf("abort of a waiting AER: %v dw0 %d", c.Status, c.DW0)
	}
	select {
	case c = <-aer:
		wantStatus(t, "aborted AER", c, StatusAbortRequested)
	case <-time.After(time.Second):
		t.Fatal("aborted AER did not complete")
	}
	if c = exec2(q, adminCmd(OpAbort, 0, 1|0x99<<16)); c.DW0&1 != 1 {
		t.Fatal("abort of an unknown command claims success")
	}
	// AEN disabled by Async Event Configuration: nothing is raised.
	mustOK(t, "disable AEN", exec2(q, adminCmd(OpSetFeatures, 0, featAsyncEvent, 0)))
	e.sub.NamespaceChanged(1)
	select {
	case c = <-aer:
		t.Fatalf("disabled event delivered %#x", c.DW0)
	case <-time.After(50 * time.Millisecond):
	}
	wantStatus(t, "unsupported AEN bit", exec2(q, adminCmd(OpSetFeatures, 0, featAsyncEvent, 1<<31)), StatusInvalidField.WithDNR())
}

func TestIdentifyNamespaceLists(t *testing.T) {
	e := newTestEnv(t)
	for _, id := range []uint32{7, 3} {
		if err := e.sub.AddNamespace(NewNamespace(newNSVolume(64, 512), NamespaceConfig{NSID: id, NGUID: [16]byte{byte(id)}, UUID: [16]byte{byte(id)}})); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.sub.AddNamespace(NewNamespace(newNSVolume(64, 512), NamespaceConfig{NSID: 3})); err == nil {
		t.Fatal("duplicate NSID accepted")
	}
	if err := e.sub.AddNamespace(NewNamespace(newNSVolume(64, 512), NamespaceConfig{NSID: 2000})); err == nil {
		t.Fatal("NSID past NN accepted")
	}
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	c, b := exec(t, q, identifyCmd(cnsActiveNSList, 0))
	mustOK(t, "active list", c)
	if le.Uint32(b[0:]) != 1 || le.Uint32(b[4:]) != 3 || le.Uint32(b[8:]) != 7 || le.Uint32(b[12:]) != 0 {
		t.Fatalf("active list %v", b[:16])
	}
	_, b = exec(t, q, identifyCmd(cnsActiveNSList, 3))
	if le.Uint32(b[0:]) != 7 || le.Uint32(b[4:]) != 0 {
		t.Fatalf("active list after 3: %v", b[:8])
	}
	wantStatus(t, "list from FFFFFFFE", exec2(q, identifyCmd(cnsActiveNSList, 0xfffffffe)), StatusInvalidNamespace.WithDNR())
	c, b = exec(t, q, identifyCmd(cnsNamespace, 1))
	mustOK(t, "identify ns", c)
	if le.Uint64(b[0:]) != nsTestBlocks {
		t.Fatalf("NSZE %d", le.Uint64(b[0:]))
	}
	c, b = exec(t, q, identifyCmd(cnsNamespace, 5))
	mustOK(t, "inactive ns", c)
	if !bytes.Equal(b, make([]byte, 4096)) {
		t.Fatal("inactive namespace not zero-filled")
	}
	wantStatus(t, "ns 0", exec2(q, identifyCmd(cnsNamespace, 0)), StatusInvalidNamespace.WithDNR())
	wantStatus(t, "ns all", exec2(q, identifyCmd(cnsNamespace, 0xffffffff)), StatusInvalidNamespace.WithDNR())
	c, b = exec(t, q, identifyCmd(cnsNSDescriptors, 1))
	mustOK(t, "descriptors", c)
	if b[0] == 0 || len(b) != 4096 {
		t.Fatalf("descriptors %v", b[:8])
	}
	wantStatus(t, "descriptors of inactive", exec2(q, identifyCmd(cnsNSDescriptors, 5)), StatusInvalidNamespace.WithDNR())
	wantStatus(t, "CNS 5 (2.0 only)", exec2(q, identifyCmd(0x05, 0)), StatusInvalidField.WithDNR())
	short := identifyCmd(cnsController, 0)
	setSGL(short, 512)
	wantStatus(t, "identify into 512 bytes", exec2(q, short), StatusDataSGLLength.WithDNR())
}

func TestLogPages(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	io := e.connectIO(t, q, 1)
	for range 3 {
		mustOK(t, "write", exec2(io, ioCmd(OpWrite, 0, 8, 0, make([]byte, 4096), 512)))
	}
	mustOK(t, "read", exec2(io, ioCmd(OpRead, 0, 8, 0, nil, 512)))
	c, b := exec(t, q, logCmd(logSMART, 0xffffffff, 512, 0, false))
	mustOK(t, "smart", c)
	if le.Uint64(b[32:]) != 1 || le.Uint64(b[48:]) != 1 || le.Uint64(b[64:]) != 1 || le.Uint64(b[80:]) != 3 {
		t.Fatalf("smart units read %d written %d cmds %d/%d", le.Uint64(b[32:]), le.Uint64(b[48:]), le.Uint64(b[64:]), le.Uint64(b[80:]))
	}
	if b[3] != 100 || le.Uint16(b[1:]) < 273 {
		t.Fatalf("spare %d temperature %d", b[3], le.Uint16(b[1:]))
	}
	wantStatus(t, "smart of unknown ns", exec2(q, logCmd(logSMART, 9, 512, 0, false)), StatusInvalidNamespace.WithDNR())

	c, b = exec(t, q, logCmd(logFirmware, 0, 512, 0, false))
	mustOK(t, "firmware", c)
	if b[0] != 1 || strings.TrimSpace(string(b[8:16])) != "0001" {
		t.Fatalf("firmware slot AFI %d FRS1 %q", b[0], b[8:16])
	}
	c, b = exec(t, q, logCmd(logEffects, 0, 4096, 0, false))
	mustOK(t, "effects", c)
	if le.Uint32(b[4*OpIdentify:]) != 1 || le.Uint32(b[1024+4*OpWrite:]) != 3 || le.Uint32(b[1024+4*OpRead:]) != 1 || le.Uint32(b[4*OpNamespaceMgmt:]) != 0 {
		t.Fatal("effects log wrong")
	}

	// A failed command lands in the error log.
	bad := ioCmd(OpRead, nsTestBlocks, 1, 0, nil, 512)
	wantStatus(t, "read past end", exec2(io, bad), StatusLBAOutOfRange.WithDNR())
	c, b = exec(t, q, logCmd(logError, 0, 64*64, 0, false))
	mustOK(t, "error log", c)
	if le.Uint64(b[0:]) == 0 || le.Uint16(b[8:]) != 1 || le.Uint16(b[12:])>>1 != uint16(StatusLBAOutOfRange.WithDNR()) {
		t.Fatalf("error entry %v", b[:16])
	}
	// Offsets: a chunk from the middle matches the whole page.
	_, whole := exec(t, q, logCmd(logEffects, 0, 4096, 0, false))
	_, part := exec(t, q, logCmd(logEffects, 0, 1024, 1024, false))
	if !bytes.Equal(part, whole[1024:2048]) {
		t.Fatal("effects log at offset 1024 differs")
	}
	wantStatus(t, "unaligned offset", exec2(q, logCmd(logEffects, 0, 4, 2, false)), StatusInvalidField.WithDNR())
	wantStatus(t, "unknown log", exec2(q, logCmd(0x42, 0, 512, 0, false)), StatusInvalidLogPage.WithDNR())
	wantStatus(t, "discovery log on I/O controller", exec2(q, logCmd(logDiscovery, 0, 1024, 0, false)), StatusInvalidLogPage.WithDNR())
}

func TestFeatures(t *testing.T) {
	e := newTestEnv(t)
	var saved []bool
	e.sub.RemoveNamespace(1)
	ns := NewNamespace(e.vol, NamespaceConfig{NSID: 1, NGUID: [16]byte{1}, UUID: [16]byte{2}, SaveWriteCache: func(on bool) error {
		saved = append(saved, on)
		return nil
	}})
	if err := e.sub.AddNamespace(ns); err != nil {
		t.Fatal(err)
	}
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featWriteCache)); c.DW0 != 1 {
		t.Fatalf("VWC %d", c.DW0)
	}
	mustOK(t, "VWC off", exec2(q, adminCmd(OpSetFeatures, 0, featWriteCache, 0)))
	if e.vol.wce || len(saved) != 1 || saved[0] {
		t.Fatalf("write cache %v saved %v", e.vol.wce, saved)
	}
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featWriteCache)); c.DW0 != 0 {
		t.Fatalf("VWC %d after off", c.DW0)
	}
	wantStatus(t, "save", exec2(q, adminCmd(OpSetFeatures, 0, featWriteCache|1<<31, 1)), StatusFeatureNotSaveable.WithDNR())
	wantStatus(t, "unknown feature", exec2(q, adminCmd(OpGetFeatures, 0, 0x42)), StatusInvalidField.WithDNR())
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featArbitration|selSupportedCaps<<8)); c.DW0 != featChangeable {
		t.Fatalf("capabilities %#x", c.DW0)
	}
	mustOK(t, "arbitration", exec2(q, adminCmd(OpSetFeatures, 0, featArbitration, 0x0303)))
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featArbitration)); c.DW0 != 0x0303 {
		t.Fatalf("arbitration %#x", c.DW0)
	}
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featArbitration|selDefault<<8)); c.DW0 != 0 {
		t.Fatalf("default arbitration %#x", c.DW0)
	}
	wantStatus(t, "power state 1", exec2(q, adminCmd(OpSetFeatures, 0, featPowerMgmt, 1)), StatusInvalidField.WithDNR())
	if c := exec2(q, adminCmd(OpGetFeatures, 0, featAsyncEvent)); c.DW0 != aenNamespaceAttr {
		t.Fatalf("async event config %#x", c.DW0)
	}
	hid := adminCmd(OpGetFeatures, 0, featHostID, 1)
	setSGL(hid, 16)
	c, b := exec(t, q, hid)
	mustOK(t, "host id", c)
	if !bytes.Equal(b, testHostID[:]) {
		t.Fatalf("host id %x", b)
	}
	wantStatus(t, "unknown opcode", exec2(q, adminCmd(0xc5, 0)), StatusInvalidOpcode.WithDNR())
	wantStatus(t, "create I/O SQ on fabrics", exec2(q, adminCmd(0x01, 0)), StatusInvalidOpcode.WithDNR())
}

func TestRemoveNamespaceWaitsAndFails(t *testing.T) {
	e := newTestEnv(t)
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	io := e.connectIO(t, q, 1)
	if err := e.sub.RemoveNamespace(1); err != nil {
		t.Fatal(err)
	}
	if err := e.sub.RemoveNamespace(1); err == nil {
		t.Fatal("second remove succeeded")
	}
	wantStatus(t, "read of removed ns", exec2(io, ioCmd(OpRead, 0, 1, 0, nil, 512)), StatusInvalidNamespace.WithDNR())
	e.sub.Close()
	if !closed(q.Done(), time.Second) || !closed(io.Done(), time.Second) {
		t.Fatal("subsystem close kept the queues")
	}
	_, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 0, connectData(testHostID, 0xffff, testSubNQN, testHostNQN)), testLocal)
	wantStatus(t, "connect to closed subsystem", c, StatusConnectInvalidParam.WithDNR())
}

func TestSmallMQESStillTakesLinuxAdminQueue(t *testing.T) {
	e := newTestEnv(t)
	e.tgt = NewTarget(TargetConfig{Registry: e.reg, MaxQueueEntries: 16, Logger: quiet})
	q := e.connectAdmin(t, testSubNQN, testHostNQN, 0)
	_, c := e.tgt.Connect(context.Background(), connectCmd(1, 31, 0, connectData(testHostID, q.Controller().ID(), testSubNQN, testHostNQN)), testLocal)
	wantStatus(t, "I/O queue past MQES", c, StatusConnectInvalidParam.WithDNR())
	io, c := e.tgt.Connect(context.Background(), connectCmd(1, 15, 0, connectData(testHostID, q.Controller().ID(), testSubNQN, testHostNQN)), testLocal)
	mustOK(t, "I/O queue of MQES+1 entries", c)
	io.Close()
}
