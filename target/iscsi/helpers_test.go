package iscsi

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
	"github.com/anvilproject/anvil/target/scsi"
)

const testIQN = "iqn.2026-11.io.anvil:test"
const testInitiator = "iqn.1993-08.org.debian:01:tester"

// fakeTarget is a tiny SCSI device: TEST UNIT READY, INQUIRY, READ(10),
// WRITE(10) over a 1 MiB in-memory disk with 512-byte blocks.
type fakeTarget struct {
	name  string
	alias string
	deny  string
	creds *CHAPCredentials

	mu     sync.Mutex
	disk   []byte
	resets []scsi.TMF
	losses []*scsi.Nexus
	cmds   int
	// block, when non-nil, makes WRITE(10) wait for it or for ctx.
	block chan struct{}
	// started is signalled when a blocked command starts.
	started chan struct{}
	panicOn byte

	// dev, when set, is the device server the task manager runs
	// commands on: a wrapper that overrides Execute sets it to itself.
	dev    scsi.DeviceServer
	tmOnce sync.Once
	tm     *scsi.TaskManager
}

func newFakeTarget(name string) *fakeTarget {
	return &fakeTarget{name: name, disk: make([]byte, 1<<20)}
}

// Tasks returns the fake's task manager, made on first use.
func (f *fakeTarget) Tasks() *scsi.TaskManager {
	f.tmOnce.Do(func() {
		var ds scsi.DeviceServer = f
		if f.dev != nil {
			ds = f.dev
		}
		f.tm = scsi.NewTaskManager(ds)
	})
	return f.tm
}

func (f *fakeTarget) DescriptorSense(uint64) bool { return false }

// senseFixed builds fixed-format sense data (SPC-4 §4.5.3).
func senseFixed(key, asc, ascq byte) []byte {
	s := make([]byte, 18)
	s[0] = 0x70
	s[2] = key
	s[7] = 10
	s[12] = asc
	s[13] = ascq
	return s
}

func (f *fakeTarget) Name() string           { return f.name }
func (f *fakeTarget) Alias() string          { return f.alias }
func (f *fakeTarget) Allow(ini string) bool  { return ini != f.deny }
func (f *fakeTarget) HasLUN(lun uint64) bool { return lun == 0 }
func (f *fakeTarget) NexusLoss(n *scsi.Nexus) {
	f.mu.Lock()
	f.losses = append(f.losses, n)
	f.mu.Unlock()
}
func (f *fakeTarget) lossCount() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.losses) }
func (f *fakeTarget) Reset(n *scsi.Nexus, fn scsi.TMF, lun uint64) error {
	f.mu.Lock()
	f.resets = append(f.resets, fn)
	f.mu.Unlock()
	return nil
}

func (f *fakeTarget) Execute(ctx context.Context, cmd *scsi.Command) scsi.Result {
	f.mu.Lock()
	f.cmds++
	f.mu.Unlock()
	if cmd.LUN != 0 {
		return scsi.Result{Status: scsi.StatusCheckCondition, Sense: senseFixed(0x05, 0x25, 0x00)}
	}
	cdb := cmd.CDB
	if f.panicOn != 0 && cdb[0] == f.panicOn {
		panic("fake target panic")
	}
	switch cdb[0] {
	case 0x00:
		return scsi.Result{Status: scsi.StatusGood}
	case 0x12:
		d := make([]byte, 36)
		copy(d[8:], "ANVIL   FAKE")
		alloc := int(binary.BigEndian.Uint16(cdb[3:5]))
		return scsi.Result{Status: scsi.StatusGood, DataIn: d[:min(36, alloc)], TransferLength: alloc}
	case 0x28, 0x2a:
		lba := int(binary.BigEndian.Uint32(cdb[2:6]))
		n := int(binary.BigEndian.Uint16(cdb[7:9])) * 512
		if lba*512+n > len(f.disk) {
			return scsi.Result{Status: scsi.StatusCheckCondition, Sense: senseFixed(0x05, 0x21, 0x00), TransferLength: n}
		}
		if cdb[0] == 0x28 {
			f.mu.Lock()
			d := append([]byte(nil), f.disk[lba*512:lba*512+n]...)
			f.mu.Unlock()
			return scsi.Result{Status: scsi.StatusGood, DataIn: d, TransferLength: n}
		}
		if f.block != nil {
			if f.started != nil {
				f.started <- struct{}{}
			}
			select {
			case <-f.block:
			case <-ctx.Done():
				return scsi.Result{Status: scsi.StatusTaskAborted}
			}
		}
		w := min(n, len(cmd.DataOut)/512*512)
		f.mu.Lock()
		copy(f.disk[lba*512:], cmd.DataOut[:w])
		f.mu.Unlock()
		return scsi.Result{Status: scsi.StatusGood, TransferLength: n}
	}
	return scsi.Result{Status: scsi.StatusCheckCondition, Sense: senseFixed(0x05, 0x20, 0x00)}
}

type chapFake struct{ *fakeTarget }

func (c chapFake) Credentials(string) CHAPCredentials { return *c.creds }

type fakeRegistry struct {
	mu      sync.Mutex
	targets map[string]Target
	// disc are the discovery-session CHAP credentials (none when nil).
	disc *CHAPCredentials
}

func (r *fakeRegistry) DiscoveryCredentials(string) CHAPCredentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.disc == nil {
		return CHAPCredentials{}
	}
	return *r.disc
}

func (r *fakeRegistry) Target(iqn string) (Target, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.targets[strings.ToLower(iqn)]
	return t, ok
}

func (r *fakeRegistry) Targets(string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, t := range r.targets {
		out = append(out, t.Name())
	}
	sort.Strings(out)
	return out
}

// testServer runs a Server on a loopback listener.
type testServer struct {
	srv  *Server
	addr string
	tgt  *fakeTarget
	reg  *fakeRegistry
}

func startServer(t testing.TB, cfg Config, targets ...Target) *testServer {
	t.Helper()
	ft := newFakeTarget(testIQN)
	reg := &fakeRegistry{targets: map[string]Target{}}
	if len(targets) == 0 {
		targets = []Target{ft}
	} else if f, ok := targets[0].(*fakeTarget); ok {
		ft = f
	}
	for _, tg := range targets {
		reg.targets[strings.ToLower(tg.Name())] = tg
	}
	if cfg.Logger == nil {
		level := slog.LevelWarn
		if os.Getenv("ISCSI_TEST_DEBUG") != "" {
			level = slog.LevelDebug
		}
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	srv := NewServer(cfg, reg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-done
	})
	return &testServer{srv: srv, addr: ln.Addr().String(), tgt: ft, reg: reg}
}

// client is an iscsitest initiator bound to a test: a failure ends the
// test, and PDUs go and come in this package's header type so tests read
// fields with the accessors the server uses.
type client struct {
	*iscsitest.Conn
	t testing.TB
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, nc)
}

func newClient(t testing.TB, nc net.Conn) *client {
	t.Cleanup(func() { nc.Close() })
	c := &client{Conn: iscsitest.NewConn(nc), t: t}
	c.Timeout = 5 * time.Second
	return c
}

func fromTest(p *iscsitest.PDU) *pdu {
	return &pdu{hdr: bhs(p.BHS), ahs: p.AHS, data: p.Data}
}

func (c *client) send(h *bhs, ahs, data []byte) {
	c.t.Helper()
	if err := c.Send((*iscsitest.BHS)(h), ahs, data); err != nil {
		c.t.Fatal(err)
	}
}

// recv reads the next PDU; it fails the test on timeout.
func (c *client) recv() *pdu {
	c.t.Helper()
	p, err := c.tryRecv(5 * time.Second)
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return p
}

func (c *client) tryRecv(d time.Duration) (*pdu, error) {
	p, err := c.Recv(d)
	if err != nil {
		return nil, err
	}
	return fromTest(p), nil
}

// expectClosed asserts the target closes the connection (after possibly
// sending a Reject).
func (c *client) expectClosed() {
	c.t.Helper()
	if err := c.ExpectClose(5 * time.Second); err != nil {
		c.t.Fatal(err)
	}
}

func keysData(pairs ...string) []byte { return iscsitest.Keys(pairs...) }

func keyMap(t testing.TB, data []byte) map[string]string {
	t.Helper()
	m, err := iscsitest.ParseKeys(data)
	if err != nil {
		t.Fatalf("parse response keys %q: %v", data, err)
	}
	return m
}

// loginPDU sends one login request and returns the response.
func (c *client) loginPDU(csg, nsg int, transit bool, keys []byte) *pdu {
	c.t.Helper()
	p, err := c.LoginPDU(csg, nsg, transit, keys)
	if err != nil {
		c.t.Fatal(err)
	}
	return fromTest(p)
}

func loginStatus(p *pdu) uint16 { return uint16(p.hdr[36])<<8 | uint16(p.hdr[37]) }

// login performs a security+operational login with the given extra
// operational keys and fails the test unless it succeeds.
func (c *client) login(target string, op ...string) map[string]string {
	c.t.Helper()
	m, err := c.Login(iscsitest.LoginOptions{Initiator: testInitiator, Target: target, Operational: op})
	if err != nil {
		c.t.Fatalf("login: %v", err)
	}
	return m
}

// scsiCmd builds a SCSI Command header.
func (c *client) scsiCmd(cdb []byte, read, write, final bool, edtl uint32) *bhs {
	return (*bhs)(c.CommandBHS(cdb, read, write, final, edtl))
}

func cdb10(op byte, lba uint32, blocks uint16) []byte { return iscsitest.CDB10(op, lba, blocks) }

// response collects a command's Data-In and final status.
type response struct {
	status   byte
	flags    byte
	residual uint32
	data     []byte
	sense    []byte
	dataSNs  []uint32
	pdus     int
	r2ts     []*pdu
}

func (c *client) response(r *iscsitest.Response, err error) *response {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
	out := &response{status: r.Status, flags: r.Flags, residual: r.Residual, data: r.Data, sense: r.Sense, dataSNs: r.DataSNs, pdus: r.DataIns}
	for _, p := range r.R2Ts {
		out.r2ts = append(out.r2ts, fromTest(p))
	}
	return out
}

// readResponse reads PDUs for itt until its status arrives.
func (c *client) readResponse(itt uint32) *response {
	c.t.Helper()
	return c.response(c.ReadResponse(itt))
}

func (c *client) answerNOP(p *pdu) {
	c.t.Helper()
	if err := c.AnswerNOP(&iscsitest.PDU{BHS: iscsitest.BHS(p.hdr)}); err != nil {
		c.t.Fatal(err)
	}
}

// ping sends an immediate NOP-Out that asks for a NOP-In, and returns its
// ITT.
func (c *client) ping() uint32 {
	c.t.Helper()
	itt, err := c.Ping()
	if err != nil {
		c.t.Fatal(err)
	}
	return itt
}

// dataOut sends one Data-Out PDU.
func (c *client) dataOut(itt, ttt, dataSN, offset uint32, final bool, data []byte) {
	c.t.Helper()
	if err := c.DataOut(itt, ttt, dataSN, offset, final, data); err != nil {
		c.t.Fatal(err)
	}
}

// write performs WRITE(10) honouring the negotiated parameters: immediate
// data, unsolicited Data-Out and R2Ts, with Data-Out PDUs of at most seg
// bytes.
func (c *client) write(lba uint32, data []byte, seg int) *response {
	c.t.Helper()
	return c.response(c.Write(cdb10(0x2a, lba, uint16(len(data)/512)), data, seg))
}

func (c *client) read(lba uint32, blocks uint16) *response {
	c.t.Helper()
	return c.response(c.Read(cdb10(0x28, lba, blocks), uint32(blocks)*512))
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}
