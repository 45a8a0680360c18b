package iscsi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/scsi"
)

// failingListener fails its first n accepts with errno, as accept(2) does
// when the process is out of file descriptors, then accepts normally.
type failingListener struct {
	net.Listener
	n     atomic.Int64
	errno syscall.Errno
}

func (f *failingListener) Accept() (net.Conn, error) {
	if f.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: f.Addr(), Err: os.NewSyscallError("accept4", f.errno)}
	}
	return f.Listener.Accept()
}

// TestServeSurvivesAcceptErrors: EMFILE, ENFILE or ENOBUFS from accept
// must not end Serve; once accept works again, initiators log in.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS} {
		t.Run(errno.Error(), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fl := &failingListener{Listener: ln, errno: errno}
			fl.n.Store(6)
			reg := &fakeRegistry{targets: map[string]Target{strings.ToLower(testIQN): newFakeTarget(testIQN)}}
			srv := NewServer(Config{NopInterval: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, reg)
			done := make(chan error, 1)
			go func() { done <- srv.Serve(fl) }()

			c := dial(t, ln.Addr().String())
			c.login(testIQN)
			if r := c.read(0, 1); r.status != 0 {
				t.Fatalf("READ after accept errors: status %#x", r.status)
			}
			select {
			case err := <-done:
				t.Fatalf("Serve returned %v after accept errors", err)
			default:
			}
			if n := srv.ResourceStats().AcceptErrors; n != 6 {
				t.Errorf("AcceptErrors = %d, want 6", n)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if !errors.Is(err, ErrServerClosed) {
					t.Fatalf("Serve after Shutdown = %v, want ErrServerClosed", err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("Serve did not return after Shutdown")
			}
		})
	}
}

// dialFrom connects to addr from the loopback address src (127.0.0.0/8 is
// all loopback on Linux), so that tests can play several initiator hosts.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// closedByPeer reports whether the target closed nc within d (a read
// returns EOF or reset rather than timing out).
func closedByPeer(nc net.Conn, d time.Duration) bool {
	nc.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	_, err := nc.Read(b[:])
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestConnectionCaps: connections past MaxConnectionsPerAddress from one
// address, and past MaxConnections in total, are closed before login;
// connections still logging in count; freed slots are reusable.
func TestConnectionCaps(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1, MaxConnections: 4, MaxConnectionsPerAddress: 2})
	a1 := dialFrom(t, "127.0.0.1", ts.addr)
	dialFrom(t, "127.0.0.1", ts.addr)
	waitFor(t, func() bool { return ts.srv.ResourceStats().Connections == 2 }, "2 connections")
	a3 := dialFrom(t, "127.0.0.1", ts.addr)
	if !closedByPeer(a3, 2*time.Second) {
		t.Fatal("third idle connection from 127.0.0.1 kept open with a per-address cap of 2")
	}
	b1 := dialFrom(t, "127.0.0.2", ts.addr)
	dialFrom(t, "127.0.0.2", ts.addr)
	waitFor(t, func() bool { return ts.srv.ResourceStats().Connections == 4 }, "4 connections")
	if closedByPeer(b1, 200*time.Millisecond) {
		t.Fatal("connection from a second address refused below the caps")
	}
	c1 := dialFrom(t, "127.0.0.3", ts.addr)
	if !closedByPeer(c1, 2*time.Second) {
		t.Fatal("fifth connection kept open with a total cap of 4")
	}
	st := ts.srv.ResourceStats()
	if st.RefusedPerAddress != 1 || st.RefusedTotal != 1 || st.Connections != 4 {
		t.Errorf("stats %+v, want 1 refused per address, 1 refused in total, 4 open", st)
	}
	// The idle connections did not hurt the ones kept: closing one frees
	// its slot for a real login from that address.
	a1.Close()
	waitFor(t, func() bool { return ts.srv.ResourceStats().Connections == 3 }, "3 connections")
	c := dial(t, ts.addr)
	c.login(testIQN)
	if r := c.read(0, 1); r.status != 0 {
		t.Fatalf("READ: status %#x", r.status)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// withholdWrite starts a 64 KiB WRITE on a session negotiated with
// InitialR2T=Yes, ImmediateData=No and a 64 KiB burst, answers its R2T
// with all data but the last 512 bytes, and returns the ITT.
func withholdWrite(t *testing.T, c *client) uint32 {
	t.Helper()
	h := c.scsiCmd(cdb10(0x2a, 0, 128), false, true, true, 64<<10)
	c.send(h, nil, nil)
	p := c.recv()
	if p.hdr.opcode() != opR2T {
		t.Fatalf("opcode %#x, want R2T (status %#x)", p.hdr.opcode(), p.hdr[3])
	}
	ttt := p.hdr.u32(20)
	for i := uint32(0); i < 7; i++ {
		c.dataOut(h.itt(), ttt, i, i*8192, false, make([]byte, 8192))
	}
	c.dataOut(h.itt(), ttt, 7, 7*8192, false, make([]byte, 8192-512))
	return h.itt()
}

var withholdKeys = []string{"InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=65536", "MaxRecvDataSegmentLength=8192"}

// TestDataOutGlobalBudget: sessions from one host that never finish their
// writes fill the server-wide Data-Out budget; past it their new writes
// get TASK SET FULL although each is far below its own session bound,
// while another host's session still writes and reads back.
func TestDataOutGlobalBudget(t *testing.T) {
	const budget = 256 << 10
	ts := startServer(t, Config{NopInterval: -1, MaxTransferLength: 64 << 10, MaxSessionDataOut: 1 << 20, MaxDataOut: budget})
	var hostile []*client
	for i := 0; i < 4; i++ {
		c := dialClientFrom(t, "127.0.0.1", ts.addr)
		c.ISID[5] = byte(10 + i)
		c.login(testIQN, withholdKeys...)
		withholdWrite(t, c)
		hostile = append(hostile, c)
	}
	waitFor(t, func() bool { return ts.srv.ResourceStats().DataOutBytes == budget }, "the budget to fill")
	for i, c := range hostile {
		h := c.scsiCmd(cdb10(0x2a, 0, 128), false, true, true, 64<<10)
		c.send(h, nil, nil)
		if r := c.readResponseOrR2T(h.itt()); r.status != byte(scsi.StatusTaskSetFull) || len(r.r2ts) != 0 {
			t.Fatalf("session %d: second write got status %#x and %d R2Ts, want TASK SET FULL past the server's budget", i, r.status, len(r.r2ts))
		}
	}
	// A new session from the same host holds nothing, but its host holds
	// the whole budget: refused too.
	same := dialClientFrom(t, "127.0.0.1", ts.addr)
	same.ISID[5] = 20
	same.login(testIQN, withholdKeys...)
	h := same.scsiCmd(cdb10(0x2a, 0, 128), false, true, true, 64<<10)
	same.send(h, nil, nil)
	if r := same.readResponseOrR2T(h.itt()); r.status != byte(scsi.StatusTaskSetFull) {
		t.Fatalf("new session of the host holding the budget: status %#x, %d R2Ts, want TASK SET FULL", r.status, len(r.r2ts))
	}
	if st := ts.srv.ResourceStats(); st.DataOutBytes > budget || st.DataOutFull != 5 {
		t.Errorf("stats %+v, want at most %d bytes reserved and 5 writes refused", st, budget)
	}
	// Another host writes and reads back, twice in a row.
	c := dialClientFrom(t, "127.0.0.2", ts.addr)
	c.ISID[5] = 99
	c.login(testIQN, withholdKeys...)
	for i := 0; i < 2; i++ {
		data := pattern(64<<10, byte(3+i))
		if r := c.write(64, data, 8192); r.status != 0 {
			t.Fatalf("write %d from another host: status %#x", i, r.status)
		}
		if r := c.read(64, 128); r.status != 0 || string(r.data) != string(data) {
			t.Fatalf("read back %d: status %#x, equal %v", i, r.status, string(r.data) == string(data))
		}
	}
	if st := ts.srv.ResourceStats(); st.DataOutBytes != budget {
		t.Errorf("after the other host's writes %d bytes reserved, want the hostile %d", st.DataOutBytes, budget)
	}
	// Dropping the hostile sessions returns their reservations.
	for _, h := range hostile {
		h.NetConn().Close()
	}
	waitFor(t, func() bool { return ts.srv.ResourceStats().DataOutBytes == 0 }, "reservations to be returned")
}

// dialClientFrom is dial with the connection coming from loopback address
// src.
func dialClientFrom(t *testing.T, src, addr string) *client {
	t.Helper()
	return newClient(t, dialFrom(t, src, addr))
}

// readResponseOrR2T reads PDUs for itt until its status or an R2T arrives,
// so that a test expecting a refusal fails rather than hangs when the
// target solicits data instead.
func (c *client) readResponseOrR2T(itt uint32) *response {
	c.t.Helper()
	for {
		p := c.recv()
		switch p.hdr.opcode() {
		case opR2T:
			return &response{r2ts: []*pdu{p}}
		case opSCSIResp:
			return &response{status: p.hdr[3], flags: p.hdr[1]}
		case opNOPIn:
			c.answerNOP(p)
		default:
			c.t.Fatalf("unexpected opcode %#x waiting for ITT %#x", p.hdr.opcode(), itt)
		}
	}
}

// TestDataOutStallTimeout: a write whose Data-Out stops for DataOutTimeout
// has its connection dropped and its buffer returned at once; a write
// whose Data-Out trickles in slower than the timeout overall, but keeps
// progressing, completes.
func TestDataOutStallTimeout(t *testing.T) {
	const timeout = 400 * time.Millisecond
	ts := startServer(t, Config{NopInterval: -1, MaxTransferLength: 64 << 10, MaxDataOut: 128 << 10, DataOutTimeout: timeout})

	slow := dial(t, ts.addr)
	slow.ISID[5] = 2
	slow.login(testIQN, withholdKeys...)
	data := pattern(64<<10, 5)
	h := slow.scsiCmd(cdb10(0x2a, 8, 128), false, true, true, 64<<10)
	slow.send(h, nil, nil)
	r2t := slow.recv()
	if r2t.hdr.opcode() != opR2T {
		t.Fatalf("opcode %#x, want R2T", r2t.hdr.opcode())
	}

	stall := dial(t, ts.addr)
	stall.ISID[5] = 1
	stall.login(testIQN, withholdKeys...)
	withholdWrite(t, stall)
	start := time.Now()

	// The slow writer sends one 4 KiB PDU every timeout/4: its 16 PDUs
	// take four times the timeout.
	slowDone := make(chan *response, 1)
	go func() {
		for i := uint32(0); i < 16; i++ {
			time.Sleep(timeout / 4)
			slow.dataOut(h.itt(), r2t.hdr.u32(20), i, i*4096, i == 15, data[i*4096:(i+1)*4096])
		}
		slowDone <- slow.readResponse(h.itt())
	}()

	stall.expectClosed()
	if d := time.Since(start); d < timeout || d > 5*timeout {
		t.Errorf("stalled connection dropped after %s, want between %s and %s", d, timeout, 5*timeout)
	}
	// Only the slow writer's 64 KiB stays reserved.
	waitFor(t, func() bool { return ts.srv.ResourceStats().DataOutBytes <= 64<<10 }, "the stalled write's buffer to be released")
	if n := ts.srv.ResourceStats().DataOutStalls; n != 1 {
		t.Errorf("DataOutStalls = %d, want 1", n)
	}
	select {
	case r := <-slowDone:
		if r.status != 0 {
			t.Fatalf("slow but steady write: status %#x", r.status)
		}
	case <-time.After(20 * timeout):
		t.Fatal("slow write never completed")
	}
	if got := ts.tgt.disk[8*512 : 8*512+64<<10]; string(got) != string(data) {
		t.Fatal("slow write's data not on disk")
	}
	if ts.srv.ResourceStats().DataOutBytes != 0 {
		t.Errorf("reservations left: %+v", ts.srv.ResourceStats())
	}
}
