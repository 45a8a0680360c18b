package nvme

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestDiscoveryController(t *testing.T) {
	e := newTestEnv(t)
	other := NewSubsystem(SubsystemConfig{NQN: "nqn.2026-11.io.anvil:other", Serial: "SN2", Hosts: []string{"nqn.2014-08.org.example:someone"}, Logger: quiet})
	e.reg.add(other)
	q, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 0, connectData(testHostID, 0xffff, DiscoveryNQN, testHostNQN)), testLocal)
	mustOK(t, "discovery connect", c)
	defer q.Close()
	if !q.Controller().Discovery() || e.tgt.Controllers()[0].KeepAliveTimeout != discoveryDefaultKATO {
		t.Fatalf("discovery controller %+v", e.tgt.Controllers()[0])
	}
	mustOK(t, "enable", exec2(q, propSetCmd(propCC, ccEnable)))

	c, b := exec(t, q, identifyCmd(cnsController, 0))
	mustOK(t, "identify", c)
	if b[111] != 2 || le.Uint16(b[78:]) != q.Controller().ID() || le.Uint16(b[320:]) == 0 || le.Uint16(b[514:]) == 0 ||
		le.Uint32(b[92:]) != aenDiscoveryChange || string(bytes.TrimRight(b[768:1024], "\x00")) != DiscoveryNQN {
		t.Fatalf("discovery identify: cntrltype %d cntlid %d kas %d maxcmd %d oaes %#x", b[111], le.Uint16(b[78:]), le.Uint16(b[320:]), le.Uint16(b[514:]), le.Uint32(b[92:]))
	}
	wantStatus(t, "identify ns list on discovery", exec2(q, identifyCmd(cnsActiveNSList, 0)), StatusInvalidField.WithDNR())
	wantStatus(t, "abort on discovery", exec2(q, adminCmd(OpAbort, 0)), StatusInvalidOpcode.WithDNR())
	wantStatus(t, "smart on discovery", exec2(q, logCmd(logSMART, 0, 512, 0, false)), StatusInvalidLogPage.WithDNR())

	// Header first, as nvme-cli reads it, then the entries.
	c, hdr := exec(t, q, logCmd(logDiscovery, 0, 16, 0, true))
	mustOK(t, "discovery header", c)
	gen, numrec := le.Uint64(hdr[0:]), le.Uint64(hdr[8:])
	if numrec != 1 || gen == 0 {
		t.Fatalf("genctr %d numrec %d: the host reaches one subsystem on one I/O port", gen, numrec)
	}
	c, full := exec(t, q, logCmd(logDiscovery, 0, 1024+1024*int(numrec), 0, false))
	mustOK(t, "discovery log", c)
	ent := full[1024:]
	if ent[0] != TransportTCP || ent[1] != AddrIPv4 || ent[2] != 2 || ent[3] != 0x6 || le.Uint16(ent[4:]) != 1 ||
		le.Uint16(ent[6:]) != 0xffff || le.Uint16(ent[8:]) != 32 {
		t.Fatalf("entry header % x", ent[:10])
	}
	if got := strings.TrimRight(string(ent[32:64]), " "); got != "4420" {
		t.Errorf("TRSVCID %q", got)
	}
	if got := strings.TrimRight(string(ent[512:768]), " "); got != "192.0.2.7" {
		t.Errorf("TRADDR %q: the wildcard port shows the connection's local address", got)
	}
	if got := string(bytes.TrimRight(ent[256:512], "\x00")); got != testSubNQN {
		t.Errorf("SUBNQN %q", got)
	}
	// Chunked read of the entry at an arbitrary dword offset.
	c, chunk := exec(t, q, logCmd(logDiscovery, 0, 256, 1024+256, false))
	mustOK(t, "chunk", c)
	if !bytes.Equal(chunk, full[1024+256:1024+512]) {
		t.Fatal("chunk differs from the full page")
	}
	// Past the end reads zeroes.
	c, tail := exec(t, q, logCmd(logDiscovery, 0, 64, 8192, false))
	mustOK(t, "past the end", c)
	if !bytes.Equal(tail, make([]byte, 64)) {
		t.Fatal("past the end not zero")
	}

	// Admitting the host to the other subsystem raises the Discovery Log
	// Change event and bumps GENCTR.
	aer := make(chan Completion, 1)
	go func() { aer <- exec2(q, adminCmd(OpAsyncEventReq, 0)) }()
	time.Sleep(20 * time.Millisecond)
	other.SetHosts(false, []string{testHostNQN})
	select {
	case c = <-aer:
		if c.DW0 != 0x70f002 {
			t.Fatalf("discovery AEN %#x", c.DW0)
		}
	case <-time.After(time.Second):
		t.Fatal("no discovery log change event")
	}
	_, hdr = exec(t, q, logCmd(logDiscovery, 0, 16, 0, false))
	if le.Uint64(hdr[0:]) <= gen || le.Uint64(hdr[8:]) != 2 {
		t.Fatalf("after SetHosts genctr %d numrec %d", le.Uint64(hdr[0:]), le.Uint64(hdr[8:]))
	}

	// A new subsystem in the registry changes the generation even
	// without DiscoveryChanged.
	gen = le.Uint64(hdr[0:])
	e.reg.add(NewSubsystem(SubsystemConfig{NQN: "nqn.2026-11.io.anvil:third", AllowAnyHost: true, Logger: quiet}))
	_, hdr = exec(t, q, logCmd(logDiscovery, 0, 16, 0, false))
	if le.Uint64(hdr[0:]) == gen || le.Uint64(hdr[8:]) != 3 {
		t.Fatalf("after add genctr %d numrec %d", le.Uint64(hdr[0:]), le.Uint64(hdr[8:]))
	}

	// No I/O queues on a discovery controller.
	_, c = e.tgt.Connect(context.Background(), connectCmd(1, 31, 0, connectData(testHostID, q.Controller().ID(), DiscoveryNQN, testHostNQN)), testLocal)
	wantStatus(t, "io connect to discovery", c, StatusConnectInvalidParam.WithDNR())
}

func TestDiscoveryNonzeroKATO(t *testing.T) {
	e := newTestEnv(t)
	q, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 30000, connectData([16]byte{}, 0xffff, DiscoveryNQN, testHostNQN)), testLocal)
	mustOK(t, "discovery connect with KATO", c)
	defer q.Close()
	if got := e.tgt.Controllers()[0].KeepAliveTimeout; got != 30*time.Second {
		t.Fatalf("KATO %v", got)
	}
	// Discovery controllers are numbered in their own subsystem.
	q2, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, 30000, connectData([16]byte{}, 0xffff, DiscoveryNQN, testHostNQN)), testLocal)
	mustOK(t, "second discovery connect", c)
	defer q2.Close()
	if q2.Controller().ID() == q.Controller().ID() {
		t.Fatal("two discovery controllers share a CNTLID")
	}
}
