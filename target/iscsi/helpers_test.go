package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

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

// client is a minimal iSCSI initiator for tests.
type client struct {
	t         testing.TB
	nc        net.Conn
	r         *bufio.Reader
	isid      [6]byte
	tsih      uint16
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	hd, dd    bool
	maxRecv   int
	params    map[string]string
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, r: bufio.NewReader(nc), isid: [6]byte{0x80, 0, 0, 0, 0, 1}, itt: 1, cmdSN: 1, maxRecv: 1 << 24}
}

func (c *client) nextITT() uint32 { c.itt++; return c.itt }

func (c *client) send(h *bhs, ahs, data []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(encodePDU(h, ahs, data, c.hd, c.dd)); err != nil {
		c.t.Fatalf("send: %v", err)
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
	c.nc.SetReadDeadline(time.Now().Add(d))
	rd := &pduReader{r: c.r, maxData: c.maxRecv, headerDigest: c.hd, dataDigest: c.dd}
	if err := rd.readHeader(); err != nil {
		return nil, err
	}
	p := &pdu{hdr: rd.hdr, data: make([]byte, rd.hdr.dataLen())}
	if err := rd.readData(p.data); err != nil {
		return nil, err
	}
	switch p.hdr.opcode() {
	case opSCSIResp, opTMFResp, opTextResp, opLogoutResp, opReject, opAsyncMsg, opLoginResp:
		c.expStatSN = p.hdr.u32(24) + 1
	case opNOPIn:
		if p.hdr.itt() != tagNone {
			c.expStatSN = p.hdr.u32(24) + 1
		}
	case opDataIn:
		if p.hdr[1]&flagStatus != 0 {
			c.expStatSN = p.hdr.u32(24) + 1
		}
	}
	return p, nil
}

// expectClosed asserts the target closes the connection (after possibly
// sending a Reject).
func (c *client) expectClosed() {
	c.t.Helper()
	for i := 0; i < 10; i++ {
		p, err := c.tryRecv(5 * time.Second)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				c.t.Fatalf("connection not closed: %v", err)
			}
			return
		}
		if p.hdr.opcode() != opReject && p.hdr.opcode() != opNOPIn {
			c.t.Fatalf("expected close, got opcode %#x", p.hdr.opcode())
		}
	}
	c.t.Fatal("connection not closed")
}

func keysData(pairs ...string) []byte {
	var b []byte
	for _, p := range pairs {
		b = append(b, p...)
		b = append(b, 0)
	}
	return b
}

func keyMap(t testing.TB, data []byte) map[string]string {
	t.Helper()
	kvs, err := parseKeys(data)
	if err != nil {
		t.Fatalf("parse response keys %q: %v", data, err)
	}
	m := map[string]string{}
	for _, p := range kvs {
		m[p.Key] = p.Value
	}
	return m
}

// loginPDU sends one login request and returns the response.
func (c *client) loginPDU(csg, nsg int, transit bool, keys []byte) *pdu {
	c.t.Helper()
	var h bhs
	h[0] = opLoginReq | flagImmed
	h[1] = byte(csg<<2 | nsg)
	if transit {
		h[1] |= flagTransit
	}
	copy(h[8:14], c.isid[:])
	h.setU16(14, c.tsih)
	h.setITT(c.itt)
	h.setU32(24, c.cmdSN)
	h.setU32(28, c.expStatSN)
	c.send(&h, nil, keys)
	return c.recv()
}

func loginStatus(p *pdu) uint16 { return uint16(p.hdr[36])<<8 | uint16(p.hdr[37]) }

// login performs a security+operational login with the given extra
// operational keys and fails the test unless it succeeds.
func (c *client) login(target string, op ...string) map[string]string {
	c.t.Helper()
	first := []string{"InitiatorName=" + testInitiator, "AuthMethod=None"}
	if target == "" {
		first = append(first, "SessionType=Discovery")
	} else {
		first = append(first, "SessionType=Normal", "TargetName="+target)
	}
	p := c.loginPDU(0, 1, true, keysData(first...))
	if st := loginStatus(p); st != 0 {
		c.t.Fatalf("security stage: status %#04x", st)
	}
	if p.hdr[1]&flagTransit == 0 || p.hdr[1]&3 != 1 {
		c.t.Fatalf("security stage: no transit to operational: flags %#x", p.hdr[1])
	}
	m := keyMap(c.t, p.data)
	p = c.loginPDU(1, 3, true, keysData(op...))
	if st := loginStatus(p); st != 0 {
		c.t.Fatalf("operational stage: status %#04x", st)
	}
	if p.hdr[1]&flagTransit == 0 || p.hdr[1]&3 != 3 {
		c.t.Fatalf("operational stage: no transit to FFP: flags %#x", p.hdr[1])
	}
	for k, v := range keyMap(c.t, p.data) {
		m[k] = v
	}
	c.tsih = binary.BigEndian.Uint16(p.hdr[14:16])
	if c.tsih == 0 {
		c.t.Fatal("final login response has TSIH 0")
	}
	c.params = m
	return m
}

// scsiCmd builds a SCSI Command header.
func (c *client) scsiCmd(cdb []byte, read, write, final bool, edtl uint32) *bhs {
	var h bhs
	h[0] = opSCSICmd
	h[1] = byte(scsi.TaskSimple)
	if final {
		h[1] |= flagFinal
	}
	if read {
		h[1] |= flagRead
	}
	if write {
		h[1] |= flagWrite
	}
	h.setITT(c.nextITT())
	h.setU32(20, edtl)
	h.setU32(24, c.cmdSN)
	c.cmdSN++
	h.setU32(28, c.expStatSN)
	copy(h[32:48], cdb)
	return &h
}

func cdb10(op byte, lba uint32, blocks uint16) []byte {
	b := make([]byte, 10)
	b[0] = op
	binary.BigEndian.PutUint32(b[2:6], lba)
	binary.BigEndian.PutUint16(b[7:9], blocks)
	return b
}

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

// readResponse reads PDUs for itt until its status arrives.
func (c *client) readResponse(itt uint32) *response {
	c.t.Helper()
	r := &response{}
	for {
		p := c.recv()
		switch p.hdr.opcode() {
		case opDataIn:
			if p.hdr.itt() != itt {
				c.t.Fatalf("Data-In for ITT %#x, want %#x", p.hdr.itt(), itt)
			}
			off := p.hdr.u32(40)
			if int(off) != len(r.data) {
				c.t.Fatalf("Data-In offset %d, want %d", off, len(r.data))
			}
			r.data = append(r.data, p.data...)
			r.dataSNs = append(r.dataSNs, p.hdr.u32(36))
			r.pdus++
			if p.hdr[1]&flagStatus != 0 {
				r.status = p.hdr[3]
				r.flags = p.hdr[1]
				r.residual = p.hdr.u32(44)
				return r
			}
		case opSCSIResp:
			if p.hdr.itt() != itt {
				c.t.Fatalf("SCSI Response for ITT %#x, want %#x", p.hdr.itt(), itt)
			}
			r.status = p.hdr[3]
			r.flags = p.hdr[1]
			r.residual = p.hdr.u32(44)
			if len(p.data) >= 2 {
				n := int(binary.BigEndian.Uint16(p.data))
				r.sense = p.data[2 : 2+n]
			}
			return r
		case opR2T:
			r.r2ts = append(r.r2ts, p)
		case opNOPIn:
			c.answerNOP(p)
		default:
			c.t.Fatalf("unexpected opcode %#x waiting for ITT %#x", p.hdr.opcode(), itt)
		}
	}
}

func (c *client) answerNOP(p *pdu) {
	if p.hdr.u32(20) == tagNone {
		return
	}
	var h bhs
	h[0] = opNOPOut | flagImmed
	h[1] = flagFinal
	h.setITT(tagNone)
	h.setU32(20, p.hdr.u32(20))
	h.setU32(24, c.cmdSN)
	h.setU32(28, c.expStatSN)
	c.send(&h, nil, nil)
}

// ping sends an immediate NOP-Out that asks for a NOP-In, and returns its
// ITT.
func (c *client) ping() uint32 {
	var h bhs
	h[0] = opNOPOut | flagImmed
	h[1] = flagFinal
	h.setITT(c.nextITT())
	h.setU32(20, tagNone)
	h.setU32(24, c.cmdSN)
	h.setU32(28, c.expStatSN)
	c.send(&h, nil, nil)
	return h.itt()
}

// dataOut sends one Data-Out PDU.
func (c *client) dataOut(itt, ttt, dataSN, offset uint32, final bool, data []byte) {
	var h bhs
	h[0] = opDataOut
	if final {
		h[1] = flagFinal
	}
	h.setITT(itt)
	h.setU32(20, ttt)
	h.setU32(28, c.expStatSN)
	h.setU32(36, dataSN)
	h.setU32(40, offset)
	c.send(&h, nil, data)
}

// write performs WRITE(10) honouring the negotiated parameters: immediate
// data, unsolicited Data-Out and R2Ts, with Data-Out PDUs of at most seg
// bytes.
func (c *client) write(lba uint32, data []byte, seg int) *response {
	c.t.Helper()
	edtl := uint32(len(data))
	immediate := c.params["ImmediateData"] == "Yes"
	initialR2T := c.params["InitialR2T"] != "No"
	first := 65536
	fmt.Sscan(c.params["FirstBurstLength"], &first)
	var imm []byte
	if immediate {
		imm = data[:min(len(data), seg, first)]
	}
	unsol := !initialR2T && len(imm) < min(len(data), first)
	h := c.scsiCmd(cdb10(0x2a, lba, uint16(len(data)/512)), false, true, !unsol, edtl)
	itt := h.itt()
	c.send(h, nil, imm)
	sent := len(imm)
	if unsol {
		limit := min(len(data), first)
		sn := uint32(0)
		for sent < limit {
			n := min(seg, limit-sent)
			c.dataOut(itt, tagNone, sn, uint32(sent), sent+n == limit, data[sent:sent+n])
			sn++
			sent += n
		}
	}
	r := &response{}
	for {
		p := c.recv()
		switch p.hdr.opcode() {
		case opR2T:
			ttt, off, l := p.hdr.u32(20), p.hdr.u32(40), p.hdr.u32(44)
			r.r2ts = append(r.r2ts, p)
			sn := uint32(0)
			for done := uint32(0); done < l; {
				n := min(uint32(seg), l-done)
				c.dataOut(itt, ttt, sn, off+done, done+n == l, data[off+done:off+done+n])
				sn++
				done += n
			}
		case opSCSIResp:
			r.status = p.hdr[3]
			r.flags = p.hdr[1]
			r.residual = p.hdr.u32(44)
			return r
		case opNOPIn:
			c.answerNOP(p)
		default:
			c.t.Fatalf("unexpected opcode %#x during write", p.hdr.opcode())
		}
	}
}

func (c *client) read(lba uint32, blocks uint16) *response {
	c.t.Helper()
	h := c.scsiCmd(cdb10(0x28, lba, blocks), true, false, true, uint32(blocks)*512)
	c.send(h, nil, nil)
	return c.readResponse(h.itt())
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

var _ = io.EOF
var _ = bytes.Equal
