package nvme

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Controller properties (register offsets) reachable with Property Get
// and Set.
const (
	propCAP  = 0x00
	propVS   = 0x08
	propCC   = 0x14
	propCSTS = 0x1c
	propNSSR = 0x20
)

// version is the NVMe version the controllers report (VS and Identify
// VER): 1.3, so that Identify needs no I/O command set specific
// structures (CNS 05h-08h arrived with 2.0).
const version = 0x00010300

// CC and CSTS bits.
const (
	ccEN       = 1 << 0
	ccSHNShift = 14
	cstsRDY    = 1 << 0
	cstsCFS    = 1 << 1
	cstsSHSTOK = 2 << 2 // shutdown processing complete
)

// Asynchronous events (completion DW0 of an AER: type, info, log page).
type asyncEvent uint32

const (
	eventNamespaceChanged asyncEvent = 2 | 0x00<<8 | logChangedNS<<16
	eventDiscoveryChange  asyncEvent = 2 | 0xf0<<8 | logDiscovery<<16
)

func (e asyncEvent) logPage() uint8 { return uint8(e >> 16) }

// configBit is the Asynchronous Event Configuration bit enabling e.
func (e asyncEvent) configBit() uint32 {
	if e == eventDiscoveryChange {
		return aenDiscoveryChange
	}
	return aenNamespaceAttr
}

// Asynchronous Event Configuration bits.
const (
	aenSMARTMask       = 0xff
	aenNamespaceAttr   = 1 << 8
	aenDiscoveryChange = 1 << 31
)

// Keep-alive granularity (Identify KAS, 100 ms units) and limits.
const (
	kasUnits   = 1
	aerLimit   = 4 // AERL + 1
	abortLimit = 4 // ACL + 1
	errLogSize = 64
)

// Controller is one host's association with a subsystem: an admin queue,
// its I/O queues, properties, features and events.
type Controller struct {
	t         *Target
	sub       *Subsystem
	id        uint16
	hostNQN   string
	hostID    [16]byte
	discovery bool
	local     net.Addr
	connected time.Time
	log       *slog.Logger

	ctx    context.Context // cancelled on teardown
	cancel context.CancelFunc

	mu        sync.Mutex
	cc, csts  uint32
	kato      time.Duration
	kaTimer   *time.Timer
	queues    map[uint16]*Queue
	granted   int // I/O queues granted by Number of Queues
	queuesSet bool
	aenConfig uint32
	arb, pm   uint32
	aers      []*pendingAER
	events    []asyncEvent
	masked    map[uint8]bool
	changed   []uint32
	changedOF bool
	errLog    []errEntry
	errCount  uint64
	dead      bool

	lastTraffic atomic.Int64 // ns since connected
}

type pendingAER struct {
	cid  uint16
	done chan Completion
}

type errEntry struct {
	count      uint64
	sqid, cid  uint16
	status     Status
	nsid       uint32
	paramError uint16
}

// Queue is one submission and completion queue pair of a controller;
// QID 0 is the admin queue.
type Queue struct {
	ctrl *Controller
	id   uint16
	size int
	icd  int

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	disconnected atomic.Bool
	closeOnce    sync.Once
}

// ID is the queue identifier.
func (q *Queue) ID() uint16 { return q.id }

// Size is the queue size from Connect (SQSIZE + 1): the transport never
// has more commands outstanding.
func (q *Queue) Size() int { return q.size }

// Controller is the controller the queue belongs to.
func (q *Queue) Controller() *Controller { return q.ctrl }

// InCapsuleDataSize is how much in-capsule data the queue accepts, in
// bytes.
func (q *Queue) InCapsuleDataSize() int { return q.icd }

// Done is closed when the queue must stop: keep-alive expiry, controller
// reset, subsystem deleted, host no longer admitted, Disconnect. The
// transport then closes its connection.
func (q *Queue) Done() <-chan struct{} { return q.done }

// stop closes Done and cancels the queue's commands.
func (q *Queue) stop() {
	q.once.Do(func() {
		close(q.done)
		q.cancel()
		q.ctrl.t.stats.queues.Add(-1)
	})
}

// Close is called by the transport when its connection ends. Closing the
// admin queue ends the controller and so every I/O queue; closing an I/O
// queue frees its QID for a new Connect.
func (q *Queue) Close() {
	q.closeOnce.Do(func() {
		if q.id == 0 {
			q.ctrl.teardown("admin queue closed")
			return
		}
		q.ctrl.mu.Lock()
		if q.ctrl.queues[q.id] == q {
			delete(q.ctrl.queues, q.id)
		}
		q.ctrl.mu.Unlock()
		q.stop()
	})
}

// ID is the controller ID (CNTLID).
func (c *Controller) ID() uint16 { return c.id }

// Subsystem is the subsystem the controller belongs to.
func (c *Controller) Subsystem() *Subsystem { return c.sub }

// HostNQN is the connected host's NQN.
func (c *Controller) HostNQN() string { return c.hostNQN }

// Discovery reports whether c is a discovery controller.
func (c *Controller) Discovery() bool { return c.discovery }

func (c *Controller) info() ControllerInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	la := ""
	if c.local != nil {
		la = c.local.String()
	}
	return ControllerInfo{
		ID: c.id, Subsystem: c.sub.NQN(), HostNQN: c.hostNQN, HostID: c.hostID,
		LocalAddr: la, Discovery: c.discovery, Queues: len(c.queues),
		KeepAliveTimeout: c.kato, Connected: c.connected,
	}
}

// Connect data layout (1024 bytes).
const (
	connectDataSize   = 1024
	adminQueueEntries = 32
	cdHostID          = 0
	cdCNTLID          = 16
	cdSubNQN          = 256
	cdHostNQN         = 512
	nqnFieldSize      = 256
	// Connect SQE offsets, for IPO.
	cseRecfmt = 40
	cseQID    = 42
	cseSQSize = 44
	cseCAttr  = 46
	cseKATO   = 48
)

// connectInvalid is Connect Invalid Parameters with IATTR and IPO in DW0:
// IPO is the byte offset of the bad field, IATTR tells whether it is in
// the Connect data (true) or the SQE.
func connectInvalid(inData bool, offset int) Completion {
	dw0 := uint32(offset)
	if inData {
		dw0 |= 1 << 16
	}
	return Completion{DW0: dw0, Status: StatusConnectInvalidParam.WithDNR()}
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func (t *Target) connect(ctx context.Context, cmd *Command, local net.Addr) (*Queue, Completion) {
	if cmd.Opcode() != OpFabrics || cmd.FCType() != FabricsConnect {
		// A queue must start with Connect.
		return nil, Completion{Status: StatusCommandSequence.WithDNR()}
	}
	if len(cmd.Data) != connectDataSize {
		return nil, Completion{Status: StatusDataSGLLength.WithDNR()}
	}
	sqe := cmd.SQE[:]
	recfmt := binary.LittleEndian.Uint16(sqe[cseRecfmt:])
	qid := binary.LittleEndian.Uint16(sqe[cseQID:])
	sqsize := binary.LittleEndian.Uint16(sqe[cseSQSize:])
	kato := time.Duration(binary.LittleEndian.Uint32(sqe[cseKATO:])) * time.Millisecond
	if recfmt != 0 {
		return nil, Completion{Status: StatusConnectIncompatible.WithDNR()}
	}
	// MQES bounds the I/O queues; an admin queue may always have the 32
	// entries Linux asks for (NVME_AQ_DEPTH), as nvmet allows.
	limit := t.cfg.MaxQueueEntries
	if qid == 0 {
		limit = max(limit, adminQueueEntries)
	}
	if sqsize == 0 || int(sqsize) >= limit {
		return nil, connectInvalid(false, cseSQSize)
	}
	d := cmd.Data
	var hostID [16]byte
	copy(hostID[:], d[cdHostID:cdHostID+16])
	cntlid := binary.LittleEndian.Uint16(d[cdCNTLID:])
	subnqn := cstring(d[cdSubNQN : cdSubNQN+nqnFieldSize])
	hostnqn := cstring(d[cdHostNQN : cdHostNQN+nqnFieldSize])

	sub, ok := t.subsystem(subnqn)
	if !ok {
		t.log.Info("nvme: connect to unknown subsystem", "subnqn", subnqn, "hostnqn", hostnqn)
		return nil, connectInvalid(true, cdSubNQN)
	}
	if !sub.Allows(hostnqn) {
		t.log.Info("nvme: host not admitted", "subnqn", subnqn, "hostnqn", hostnqn)
		return nil, Completion{DW0: 1<<16 | cdHostNQN, Status: StatusConnectInvalidHost.WithDNR()}
	}
	if qid == 0 {
		if cntlid != 0xffff {
			return nil, connectInvalid(true, cdCNTLID)
		}
		return t.connectAdmin(sub, hostnqn, hostID, int(sqsize)+1, kato, local)
	}
	if sub.discovery {
		return nil, connectInvalid(false, cseQID)
	}
	c, ok := sub.controller(cntlid)
	if !ok || c.hostNQN != hostnqn {
		return nil, connectInvalid(true, cdCNTLID)
	}
	if c.hostID != hostID {
		return nil, connectInvalid(true, cdHostID)
	}
	return c.connectIO(qid, int(sqsize)+1)
}

func (t *Target) connectAdmin(sub *Subsystem, hostnqn string, hostID [16]byte, size int, kato time.Duration, local net.Addr) (*Queue, Completion) {
	c := &Controller{
		t: t, sub: sub, hostNQN: hostnqn, hostID: hostID, discovery: sub.discovery,
		local: local, connected: time.Now(),
		queues: make(map[uint16]*Queue), granted: t.cfg.MaxIOQueues,
		masked: make(map[uint8]bool),
	}
	if c.discovery {
		c.aenConfig = aenDiscoveryChange
		if kato == 0 {
			kato = discoveryDefaultKATO
		}
	} else {
		c.aenConfig = aenNamespaceAttr
	}
	c.kato = kato
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := sub.register(c); err != nil {
		c.cancel()
		return nil, Completion{Status: StatusConnectControllerBusy}
	}
	c.log = t.log.With("subsystem", sub.NQN(), "cntlid", c.id, "hostnqn", hostnqn)
	q := c.newQueue(0, size, adminInCapsuleDataSize)
	c.queues[0] = q
	t.addController(c)
	c.mu.Lock()
	c.armKeepAlive()
	c.mu.Unlock()
	c.log.Info("nvme: controller created", "kato", kato, "discovery", c.discovery)
	return q, Completion{DW0: uint32(c.id)}
}

func (c *Controller) newQueue(qid uint16, size, icd int) *Queue {
	q := &Queue{ctrl: c, id: qid, size: size, icd: icd, done: make(chan struct{})}
	q.ctx, q.cancel = context.WithCancel(c.ctx)
	c.t.stats.queues.Add(1)
	return q
}

func (c *Controller) connectIO(qid uint16, size int) (*Queue, Completion) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return nil, connectInvalid(true, cdCNTLID)
	}
	if c.cc&ccEN == 0 || c.csts&cstsRDY == 0 {
		return nil, Completion{Status: StatusCommandSequence.WithDNR()}
	}
	if int(qid) > c.granted {
		return nil, connectInvalid(false, cseQID)
	}
	if _, dup := c.queues[qid]; dup {
		return nil, Completion{Status: StatusCommandSequence.WithDNR()}
	}
	q := c.newQueue(qid, size, c.t.cfg.InCapsuleDataSize)
	c.queues[qid] = q
	c.touch()
	return q, Completion{}
}

// touch records host traffic: with Traffic Based Keep Alive (CTRATT bit
// 6) any command restarts the keep-alive timer, as in Linux nvmet.
func (c *Controller) touch() {
	c.lastTraffic.Store(int64(time.Since(c.connected)))
}

// armKeepAlive starts the keep-alive timer; c.mu held.
func (c *Controller) armKeepAlive() {
	if c.kaTimer != nil {
		c.kaTimer.Stop()
		c.kaTimer = nil
	}
	if c.kato == 0 || c.dead {
		return
	}
	c.touch()
	limit := c.kato + c.t.cfg.keepAliveSlack
	var check func()
	check = func() {
		idle := time.Since(c.connected) - time.Duration(c.lastTraffic.Load())
		if idle >= limit {
			c.log.Warn("nvme: keep-alive timeout, tearing the controller down", "kato", c.kato, "idle", idle)
			c.teardown("keep-alive timeout")
			return
		}
		c.mu.Lock()
		if !c.dead && c.kaTimer != nil {
			c.kaTimer = time.AfterFunc(limit-idle, check)
		}
		c.mu.Unlock()
	}
	c.kaTimer = time.AfterFunc(limit, check)
}

// teardown ends the controller: every queue's Done closes, running
// commands are cancelled, waiting AERs complete.
func (c *Controller) teardown(reason string) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead = true
	if c.kaTimer != nil {
		c.kaTimer.Stop()
		c.kaTimer = nil
	}
	queues := make([]*Queue, 0, len(c.queues))
	for _, q := range c.queues {
		queues = append(queues, q)
	}
	c.queues = map[uint16]*Queue{}
	aers := c.aers
	c.aers = nil
	c.mu.Unlock()

	for _, a := range aers {
		a.done <- Completion{Status: StatusAbortSQDeleted}
	}
	for _, q := range queues {
		q.stop()
	}
	c.cancel()
	c.sub.unregister(c)
	c.t.removeController(c)
	c.log.Info("nvme: controller deleted", "reason", reason)
}

// reset is CC.EN going from 1 to 0: the I/O queues are deleted, waiting
// AERs complete, and the controller is no longer ready; c.mu held.
func (c *Controller) resetLocked() {
	for qid, q := range c.queues {
		if qid != 0 {
			delete(c.queues, qid)
			q.stop()
		}
	}
	for _, a := range c.aers {
		a.done <- Completion{Status: StatusAbortSQDeleted}
	}
	c.aers = nil
	c.events = nil
	clear(c.masked)
	c.csts = 0
	c.queuesSet = false
	c.granted = c.t.cfg.MaxIOQueues
	c.log.Info("nvme: controller reset")
}

// cap is the CAP property: MQES, CQR (contiguous queues required), TO
// (ready timeout in 500 ms units) and the NVM command set in CSS.
func (c *Controller) capability() uint64 {
	mqes := uint64(c.t.cfg.MaxQueueEntries - 1)
	const to = 15                  // 7.5 s
	return mqes | 1<<16 | to<<24 | // CQR
		1<<37 // CSS: NVM command set
}

func (c *Controller) propertyGet(cmd *Command) Completion {
	size8 := cmd.SQE[40]&0x7 == 1
	if cmd.SQE[40]&0x7 > 1 {
		return Completion{Status: StatusInvalidField.WithDNR()}
	}
	off := binary.LittleEndian.Uint32(cmd.SQE[44:])
	c.mu.Lock()
	defer c.mu.Unlock()
	var v uint64
	switch {
	case size8 && off == propCAP:
		v = c.capability()
	case !size8 && off == propVS:
		v = version
	case !size8 && off == propCC:
		v = uint64(c.cc)
	case !size8 && off == propCSTS:
		v = uint64(c.csts)
	default:
		return Completion{Status: StatusInvalidField.WithDNR()}
	}
	return Completion{DW0: uint32(v), DW1: uint32(v >> 32)}
}

func (c *Controller) propertySet(ctx context.Context, cmd *Command) Completion {
	if cmd.SQE[40]&0x7 != 0 {
		return Completion{Status: StatusInvalidField.WithDNR()}
	}
	off := binary.LittleEndian.Uint32(cmd.SQE[44:])
	if off != propCC {
		return Completion{Status: StatusInvalidField.WithDNR()}
	}
	val := binary.LittleEndian.Uint32(cmd.SQE[48:])
	c.mu.Lock()
	old := c.cc
	c.cc = val
	if old&ccEN == 0 && val&ccEN != 0 {
		// Enable: the host must have picked 64-byte SQEs, 16-byte CQEs,
		// 4 KiB pages, round-robin arbitration and the NVM command set,
		// or the controller reports a fatal status as nvmet does.
		iosqes, iocqes := val>>16&0xf, val>>20&0xf
		mps, ams, css := val>>7&0xf, val>>11&0x7, val>>4&0x7
		if iosqes != 6 || iocqes != 4 || mps != 0 || ams != 0 || css != 0 {
			c.csts |= cstsCFS
		} else {
			c.csts |= cstsRDY
		}
	}
	if old&ccEN != 0 && val&ccEN == 0 {
		c.resetLocked()
	}
	shn := val >> ccSHNShift & 3
	oldShn := old >> ccSHNShift & 3
	if shn == 0 {
		c.csts &^= 3 << 2
	}
	c.mu.Unlock()
	if shn != 0 && oldShn == 0 {
		if err := c.sub.flushAll(ctx); err != nil {
			c.log.Error("nvme: shutdown flush failed", "err", err)
		}
		c.mu.Lock()
		c.csts = c.csts&^(3<<2) | cstsSHSTOK
		c.mu.Unlock()
	}
	return Completion{}
}

// ready reports whether the controller takes non-Fabrics commands.
func (c *Controller) ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cc&ccEN != 0 && c.csts&cstsRDY != 0 && !c.dead
}

// namespaceChanged records nsid in the Changed Namespace List and raises
// the Namespace Attribute Changed event.
func (c *Controller) namespaceChanged(nsid uint32) {
	if c.discovery {
		return
	}
	c.mu.Lock()
	if !c.changedOF {
		found := false
		for _, id := range c.changed {
			if id == nsid {
				found = true
				break
			}
		}
		if !found {
			if len(c.changed) >= maxNSID {
				c.changedOF = true
				c.changed = nil
			} else {
				c.changed = append(c.changed, nsid)
			}
		}
	}
	c.mu.Unlock()
	c.raiseEvent(eventNamespaceChanged)
}

// raiseEvent queues e unless it is disabled, already queued, or masked
// because the host has not read its log page since the last one.
func (c *Controller) raiseEvent(e asyncEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead || c.aenConfig&e.configBit() == 0 || c.masked[e.logPage()] {
		return
	}
	for _, q := range c.events {
		if q == e {
			return
		}
	}
	c.events = append(c.events, e)
	c.deliverLocked()
}

// deliverLocked pairs queued events with waiting AERs; c.mu held.
func (c *Controller) deliverLocked() {
	for len(c.events) > 0 && len(c.aers) > 0 {
		e := c.events[0]
		c.events = c.events[1:]
		a := c.aers[0]
		c.aers = c.aers[1:]
		c.masked[e.logPage()] = true
		a.done <- Completion{DW0: uint32(e)}
	}
}

// logRead unmasks the events of log page lid after the host read it
// without Retain Asynchronous Event.
func (c *Controller) logRead(lid uint8, rae bool) {
	if rae {
		return
	}
	c.mu.Lock()
	delete(c.masked, lid)
	c.mu.Unlock()
}

// asyncEventRequest waits for an event (or the controller's end).
func (c *Controller) asyncEventRequest(ctx context.Context, cmd *Command) Completion {
	c.mu.Lock()
	if len(c.aers) >= aerLimit {
		c.mu.Unlock()
		return Completion{Status: StatusAsyncEventLimitExceeded.WithDNR()}
	}
	a := &pendingAER{cid: cmd.CID(), done: make(chan Completion, 1)}
	c.aers = append(c.aers, a)
	c.deliverLocked()
	c.mu.Unlock()
	select {
	case comp := <-a.done:
		return comp
	case <-ctx.Done():
		c.mu.Lock()
		for i, p := range c.aers {
			if p == a {
				c.aers = append(c.aers[:i], c.aers[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
		select {
		case comp := <-a.done: // completed while we gave up
			return comp
		default:
		}
		return Completion{Status: StatusAbortSQDeleted}
	}
}

// abort aborts the waiting AER cid of the admin queue. Other commands
// are not aborted (DW0 bit 0 set): they are already running on the
// engine, and cancelling a write halfway would leave its outcome unknown.
func (c *Controller) abort(cmd *Command) Completion {
	cdw10 := cmd.CDW(10)
	sqid, cid := uint16(cdw10), uint16(cdw10>>16)
	if sqid == 0 {
		c.mu.Lock()
		for i, a := range c.aers {
			if a.cid == cid {
				c.aers = append(c.aers[:i], c.aers[i+1:]...)
				c.mu.Unlock()
				a.done <- Completion{Status: StatusAbortRequested}
				return Completion{DW0: 0}
			}
		}
		c.mu.Unlock()
	}
	return Completion{DW0: 1}
}

// recordError adds a failed command to the Error Information log.
func (c *Controller) recordError(sqid uint16, cmd *Command, s Status) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errCount++
	e := errEntry{count: c.errCount, sqid: sqid, cid: cmd.CID(), status: s, nsid: cmd.NSID(), paramError: 0xffff}
	c.errLog = append([]errEntry{e}, c.errLog...)
	if len(c.errLog) > errLogSize {
		c.errLog = c.errLog[:errLogSize]
	}
}
