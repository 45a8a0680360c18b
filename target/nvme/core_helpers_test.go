package nvme

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

const (
	testSubNQN  = "nqn.2026-11.io.anvil:test"
	testHostNQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
)

// quiet keeps the expected warnings (keep-alive expiry, denied hosts) out
// of the test output.
var quiet = slog.New(slog.DiscardHandler)

var testHostID = [16]byte{0xa, 0xb, 0xc, 1, 2, 3}

// mapRegistry is a Registry over a map, as the service keeps one.
type mapRegistry struct {
	mu   sync.Mutex
	subs map[string]*Subsystem
}

func (r *mapRegistry) Subsystem(nqn string) (*Subsystem, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.subs[nqn]
	return s, ok
}

func (r *mapRegistry) Subsystems() []*Subsystem {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Subsystem
	for _, s := range r.subs {
		out = append(out, s)
	}
	return out
}

func (r *mapRegistry) add(s *Subsystem) {
	r.mu.Lock()
	r.subs[s.NQN()] = s
	r.mu.Unlock()
}

// testEnv is a target with one subsystem holding namespace 1.
type testEnv struct {
	tgt *Target
	reg *mapRegistry
	sub *Subsystem
	ns  *Namespace
	vol *nsVolume
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	reg := &mapRegistry{subs: map[string]*Subsystem{}}
	sub := NewSubsystem(SubsystemConfig{NQN: testSubNQN, Serial: "SN-TEST-0001", AllowAnyHost: true, Logger: quiet})
	reg.add(sub)
	vol := newNSVolume(nsTestBlocks, 512)
	ns := NewNamespace(vol, NamespaceConfig{NSID: 1, NGUID: [16]byte{1}, UUID: [16]byte{2}, Logger: quiet})
	if err := sub.AddNamespace(ns); err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{
		Registry: reg,
		Ports: []Port{
			{ID: 1, TransportType: TransportTCP, AddressFamily: AddrIPv4, Address: "0.0.0.0", ServiceID: "4420"},
			{ID: 2, TransportType: TransportTCP, AddressFamily: AddrIPv4, Address: "0.0.0.0", ServiceID: "8009", Discovery: true},
		},
		keepAliveSlack: 50 * time.Millisecond,
		Logger:         quiet,
	})
	return &testEnv{tgt: tgt, reg: reg, sub: sub, ns: ns, vol: vol}
}

var testLocal = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 4420}

// connectData builds the 1024-byte Connect data.
func connectData(hostID [16]byte, cntlid uint16, subnqn, hostnqn string) []byte {
	d := make([]byte, connectDataSize)
	copy(d[cdHostID:], hostID[:])
	binary.LittleEndian.PutUint16(d[cdCNTLID:], cntlid)
	copy(d[cdSubNQN:cdSubNQN+255], subnqn)
	copy(d[cdHostNQN:cdHostNQN+255], hostnqn)
	return d
}

// setSGL sets the command's data length as a host's transport SGL would.
func setSGL(c *Command, n int) {
	binary.LittleEndian.PutUint32(c.SQE[32:], uint32(n))
	c.SQE[39] = SGLTransportDataBlock<<4 | SGLSubtypeTransport
}

func connectCmd(qid, sqsize uint16, katoMS uint32, data []byte) *Command {
	c := &Command{Data: data}
	c.SQE[0] = OpFabrics
	c.SQE[4] = FabricsConnect
	binary.LittleEndian.PutUint16(c.SQE[cseQID:], qid)
	binary.LittleEndian.PutUint16(c.SQE[cseSQSize:], sqsize)
	binary.LittleEndian.PutUint32(c.SQE[cseKATO:], katoMS)
	setSGL(c, len(data))
	return c
}

func propGetCmd(off uint32, size8 bool) *Command {
	c := &Command{}
	c.SQE[0], c.SQE[4] = OpFabrics, FabricsPropertyGet
	if size8 {
		c.SQE[40] = 1
	}
	binary.LittleEndian.PutUint32(c.SQE[44:], off)
	return c
}

func propSetCmd(off, val uint32) *Command {
	c := &Command{}
	c.SQE[0], c.SQE[4] = OpFabrics, FabricsPropertySet
	binary.LittleEndian.PutUint32(c.SQE[44:], off)
	binary.LittleEndian.PutUint32(c.SQE[48:], val)
	return c
}

// ccEnable is the CC value a Linux host writes: EN, IOSQES 6, IOCQES 4.
const ccEnable = ccEN | 6<<16 | 4<<20

func adminCmd(op uint8, nsid uint32, cdw ...uint32) *Command {
	c := &Command{}
	c.SQE[0] = op
	binary.LittleEndian.PutUint16(c.SQE[2:], 0x10)
	binary.LittleEndian.PutUint32(c.SQE[4:], nsid)
	for i, v := range cdw {
		binary.LittleEndian.PutUint32(c.SQE[40+4*i:], v)
	}
	return c
}

func identifyCmd(cns uint8, nsid uint32) *Command {
	c := adminCmd(OpIdentify, nsid, uint32(cns))
	setSGL(c, identifyDataLength)
	return c
}

// logCmd reads length bytes of log page lid from offset.
func logCmd(lid uint8, nsid uint32, length int, offset uint64, rae bool) *Command {
	numd := uint32(length/4 - 1)
	cdw10 := uint32(lid) | (numd&0xffff)<<16
	if rae {
		cdw10 |= 1 << 15
	}
	c := adminCmd(OpGetLogPage, nsid, cdw10, numd>>16, uint32(offset), uint32(offset>>32))
	setSGL(c, length)
	return c
}

func exec(t *testing.T, q *Queue, c *Command) (Completion, []byte) {
	t.Helper()
	return q.Execute(context.Background(), c)
}

func mustOK(t *testing.T, what string, c Completion) {
	t.Helper()
	if !c.Status.OK() {
		t.Fatalf("%s: status %v", what, c.Status)
	}
}

func wantStatus(t *testing.T, what string, c Completion, want Status) {
	t.Helper()
	if c.Status != want {
		t.Fatalf("%s: status %v, want %v", what, c.Status, want)
	}
}

// connectAdmin connects an admin queue of host to subnqn and enables the
// controller as a Linux host does.
func (e *testEnv) connectAdmin(t *testing.T, subnqn, host string, katoMS uint32) *Queue {
	t.Helper()
	q, c := e.tgt.Connect(context.Background(), connectCmd(0, 31, katoMS, connectData(testHostID, 0xffff, subnqn, host)), testLocal)
	mustOK(t, "admin connect", c)
	if q == nil {
		t.Fatal("admin connect returned no queue")
	}
	t.Cleanup(q.Close)
	mustOK(t, "enable", exec2(q, propSetCmd(propCC, ccEnable)))
	return q
}

func exec2(q *Queue, c *Command) Completion {
	comp, _ := q.Execute(context.Background(), c)
	return comp
}

func (e *testEnv) connectIO(t *testing.T, admin *Queue, qid uint16) *Queue {
	t.Helper()
	q, c := e.tgt.Connect(context.Background(),
		connectCmd(qid, 31, 0, connectData(testHostID, admin.Controller().ID(), admin.Controller().Subsystem().NQN(), admin.Controller().HostNQN())), testLocal)
	mustOK(t, "io connect", c)
	t.Cleanup(q.Close)
	return q
}

func closed(ch <-chan struct{}, within time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(within):
		return false
	}
}
