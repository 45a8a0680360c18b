package nvmetcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
)

// writeTimeout bounds how long one batch of PDUs may take to reach the
// socket; a host that stops reading for that long is gone.
const writeTimeout = 60 * time.Second

// termReqTimeout bounds the write of a C2HTermReq: the connection is
// being dropped anyway.
const termReqTimeout = time.Second

// adminInCapsule is the in-capsule data a connection accepts before its
// Connect: the admin queue's 8 KiB, which every Fabrics host may assume
// for the Connect data.
const adminInCapsule = 8192

// maxQueueSlots bounds the command slots of one connection whatever the
// core's queue size says; TTAGs are 16 bits.
const maxQueueSlots = 1 << 16

// CATTR bit 2 of Connect: the host disables SQ flow control.
const cattrDisableSQFlow = 0x04

// slot states. A slot is owned by the reader until it is handed to a
// command goroutine (slotRunning); completers never write its state.
const (
	slotFree    = iota
	slotData    // waiting for H2CData
	slotReady   // data complete, waiting for its fused partner
	slotRunning // executing or completed
)

// cmdSlot is one outstanding command of a connection; its index is the
// TTAG of its R2Ts.
type cmdSlot struct {
	idx   uint16
	state uint8
	cmd   nvme.Command
	dir   nvme.Direction
	// sglLen is the length of the host's data buffer (SGL descriptor).
	sglLen uint32
	// buf is the pooled buffer holding the host's data, nil if none.
	buf []byte
	// the R2T being answered: offset, length, bytes received so far;
	// got is what arrived for the whole command.
	r2tOff, r2tLen, r2tGot, got uint32
	// pre, when hasPre, is the status decided before execution (bad SGL,
	// data digest error, missing fused partner): the command completes
	// with it once its data is in, without reaching the core.
	pre    nvme.Status
	hasPre bool
	// fuse is the FUSE value while fused; partner the other half.
	fuse    uint8
	partner *cmdSlot
}

func (s *cmdSlot) refuse(st nvme.Status) {
	if !s.hasPre {
		s.pre, s.hasPre = st, true
	}
}

// conn is one NVMe/TCP connection: one queue pair once connected.
type conn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger
	rd  *pduReader

	ctx       context.Context
	cancel    context.CancelFunc
	closed    chan struct{}
	closeOnce sync.Once

	// Output: PDUs are appended to cur under wmu; the goroutine that
	// finds flushing false writes cur (and what is appended meanwhile)
	// with the lock released, swapping in spare.
	wmu        sync.Mutex
	wcond      *sync.Cond
	cur, spare *pduWriter
	flushing   bool

	// Set during the handshake and Connect, read-only afterwards.
	q         coreQueue
	connected bool
	qid       uint16
	qsize     uint32
	sqflowOff bool
	icds      int
	maxH2C    uint32
	mdts      uint32
	hdgst     bool
	ddgst     bool

	slots     []cmdSlot
	free      chan uint16
	inflight  atomic.Int32
	sqhd      atomic.Uint32
	fuseFirst *cmdSlot // reader only

	cmdWG sync.WaitGroup

	maxDataFn func(uint8) int
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:    s,
		nc:     nc,
		log:    s.log.With("remote", nc.RemoteAddr().String()),
		rd:     newPDUReader(nc),
		closed: make(chan struct{}),
		cur:    &pduWriter{pda: 4},
		spare:  &pduWriter{pda: 4},
		icds:   adminInCapsule,
		maxH2C: s.cfg.MaxH2CData,
		mdts:   uint32(max(s.core.maxDataTransfer(), 4096)),
	}
	c.wcond = sync.NewCond(&c.wmu)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.initSlots(1)
	c.maxDataFn = c.maxData
	return c
}

func (c *conn) initSlots(n int) {
	n = min(max(n, 1), maxQueueSlots)
	c.slots = make([]cmdSlot, n)
	c.free = make(chan uint16, n)
	for i := range c.slots {
		c.slots[i].idx = uint16(i)
		c.free <- uint16(i)
	}
}

// maxData bounds the data part of a received PDU by its type.
func (c *conn) maxData(typ uint8) int {
	if typ == typeH2CData {
		return int(c.maxH2C)
	}
	return c.icds
}

// close shuts the connection down once; the reader and running commands
// notice (their context is cancelled).
func (c *conn) close(reason error) {
	c.closeOnce.Do(func() {
		if reason != nil && !errors.Is(reason, io.EOF) && !errors.Is(reason, net.ErrClosed) {
			c.log.Info("nvmetcp: closing connection", "qid", c.qidForLog(), "reason", reason.Error())
		}
		close(c.closed)
		c.nc.Close()
		c.cancel()
	})
}

func (c *conn) qidForLog() int {
	if !c.connected {
		return -1
	}
	return int(c.qid)
}

// serve runs the connection. A panic is contained here: it is logged
// with its stack and closes this connection only.
func (c *conn) serve() {
	defer c.srv.removeConn(c)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("nvmetcp: panic in connection handler", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
		c.close(nil)
		c.cmdWG.Wait()
		if c.q != nil {
			c.q.Close()
		}
		c.releaseAll()
	}()
	c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.ConnectTimeout))
	err := c.handshake()
	if err == nil {
		err = c.readLoop()
	}
	var fe *fatalError
	if errors.As(err, &fe) {
		c.sendTermReq(fe)
	}
	c.close(err)
}

// handshake reads the ICReq and answers it with ICResp.
func (c *conn) handshake() error {
	if err := c.rd.readHeader(true, c.maxDataFn); err != nil {
		return err
	}
	h := c.rd.header()
	pfv := c.rd.u16(offICPFV)
	hpda := h[offICHPDA]
	dgst := h[offICDGST]
	if pfv != 0 {
		return fatal(fesUnsupportedParam, offICPFV, h, "ICReq PFV %d", pfv)
	}
	if hpda > 31 {
		return fatal(fesInvalidHeaderField, offICHPDA, h, "ICReq HPDA %d", hpda)
	}
	c.hdgst = dgst&dgstHeader != 0 && !c.srv.cfg.DisableHeaderDigest
	c.ddgst = dgst&dgstData != 0 && !c.srv.cfg.DisableDataDigest
	var resp [icLen]byte
	resp[0] = typeICResp
	resp[2] = icLen
	binary.LittleEndian.PutUint32(resp[4:], icLen)
	// PFV 0 (bytes 8-9), CPDA 0 (byte 10): we take H2C data unaligned.
	if c.hdgst {
		resp[11] |= dgstHeader
	}
	if c.ddgst {
		resp[11] |= dgstData
	}
	binary.LittleEndian.PutUint32(resp[12:], c.maxH2C)
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(resp[:]); err != nil {
		return fmt.Errorf("nvmetcp: write ICResp: %w", err)
	}
	c.rd.hdgst, c.rd.ddgst = c.hdgst, c.ddgst
	pda := (int(hpda) + 1) * 4
	for _, w := range []*pduWriter{c.cur, c.spare} {
		w.hdgst, w.ddgst, w.pda = c.hdgst, c.ddgst, pda
	}
	return nil
}

// readLoop reads and dispatches PDUs until the connection ends.
func (c *conn) readLoop() error {
	for {
		if err := c.rd.readHeader(false, c.maxDataFn); err != nil {
			return err
		}
		var err error
		switch c.rd.ch.typ {
		case typeCapsuleCmd:
			err = c.handleCapsule()
		case typeH2CData:
			err = c.handleH2CData()
		case typeH2CTermReq:
			data, rerr := c.rd.readTermData()
			if rerr != nil {
				return rerr
			}
			c.log.Info("nvmetcp: host terminated the connection", "qid", c.qidForLog(),
				"fes", c.rd.u16(8), "fei", c.rd.u32(10), "pdu", fmt.Sprintf("% x", data))
			return errClosedByPeer
		}
		if err != nil {
			return err
		}
	}
}

// handleCapsule takes in one CapsuleCmd: its SQE, its in-capsule data,
// the SGL that says where the data is; then it solicits the data or
// starts the command.
func (c *conn) handleCapsule() error {
	hdr := c.rd.header()
	var s *cmdSlot
	select {
	case i := <-c.free:
		s = &c.slots[i]
	default:
		return fatal(fesPDUSequence, 0, hdr, "more than %d commands outstanding", len(c.slots))
	}
	c.inflight.Add(1)
	if c.connected {
		c.sqhd.Store((c.sqhd.Load() + 1) % c.qsize)
	}
	copy(s.cmd.SQE[:], hdr[chLen:capsuleCmdLen])
	s.cmd.Data = nil
	s.state = slotData
	s.dir = s.cmd.Direction()
	s.buf = nil
	s.got, s.r2tOff, s.r2tLen, s.r2tGot = 0, 0, 0, 0
	s.hasPre, s.pre = false, 0
	s.fuse, s.partner = 0, nil
	addr, sglLen, typ, sub := s.cmd.SGL()
	s.sglLen = sglLen
	icd := c.rd.dataLen
	if icd > 0 {
		s.buf = getBuf(icd)
		if err := c.rd.readData(s.buf); err != nil {
			if !errors.Is(err, errDataDigest) {
				return err
			}
			c.log.Info("nvmetcp: data digest error in capsule", "qid", c.qidForLog(), "cid", s.cmd.CID())
			s.refuse(nvme.StatusTransientTransport)
		}
	}
	needR2T := false
	switch {
	case s.cmd.PSDT() != 1 && s.cmd.PSDT() != 2:
		// Fabrics commands carry SGLs, never PRPs.
		s.refuse(nvme.StatusInvalidField.WithDNR())
	case s.dir == nvme.DirBidirectional:
		s.refuse(nvme.StatusInvalidField.WithDNR())
	case typ == nvme.SGLDataBlock && sub == nvme.SGLSubtypeOffset:
		switch {
		case s.dir != nvme.DirHostToController:
			s.refuse(nvme.StatusInvalidField.WithDNR())
		case addr > uint64(icd):
			s.refuse(nvme.StatusSGLOffsetInvalid.WithDNR())
		case addr+uint64(sglLen) > uint64(icd):
			s.refuse(nvme.StatusDataSGLLength.WithDNR())
		default:
			s.cmd.Data = s.buf[addr : addr+uint64(sglLen)]
		}
	case typ == nvme.SGLTransportDataBlock && sub == nvme.SGLSubtypeTransport:
		switch {
		case icd > 0:
			// In-capsule data goes with an offset descriptor only.
			s.refuse(nvme.StatusSGLTypeInvalid.WithDNR())
		case sglLen > c.mdts && s.dir != nvme.DirNone:
			s.refuse(nvme.StatusInvalidField.WithDNR())
		case s.dir == nvme.DirHostToController && sglLen > 0:
			needR2T = true
		}
	case sglLen == 0 && icd == 0:
		// No data and no buffer: whatever the descriptor type, nothing
		// moves.
	default:
		s.refuse(nvme.StatusSGLTypeInvalid.WithDNR())
	}
	if icd > 0 && s.cmd.Data == nil {
		putBuf(s.buf)
		s.buf = nil
	}
	if s.dir == nvme.DirHostToController && sglLen > 0 && s.cmd.Data == nil && !needR2T {
		// The command cannot get its data: it fails without it.
		s.refuse(nvme.StatusDataSGLLength.WithDNR())
	}
	if c.connected {
		c.pairFused(s)
	}
	if needR2T && !s.hasPre {
		s.buf = getBuf(int(sglLen))
		c.sendR2T(s)
		return nil
	}
	c.ready(s)
	return nil
}

// pairFused tracks fused operations in arrival order: a first half waits
// for the very next command, which must be its second half.
func (c *conn) pairFused(s *cmdSlot) {
	f := s.cmd.Fuse()
	if first := c.fuseFirst; first != nil && f != nvme.FuseSecond {
		c.fuseFirst = nil
		first.fuse = 0
		first.refuse(nvme.StatusAbortMissingFused)
		if first.state == slotReady {
			c.start(first)
		}
	}
	switch f {
	case nvme.FuseFirst:
		s.fuse = f
		c.fuseFirst = s
	case nvme.FuseSecond:
		first := c.fuseFirst
		if first == nil {
			s.refuse(nvme.StatusAbortMissingFused)
			return
		}
		c.fuseFirst = nil
		s.fuse, s.partner, first.partner = f, first, s
	case 3:
		s.refuse(nvme.StatusInvalidField.WithDNR())
	}
}

// ready is called once a command has all its data.
func (c *conn) ready(s *cmdSlot) {
	s.state = slotReady
	if !c.connected {
		c.doConnect(s)
		return
	}
	switch s.fuse {
	case nvme.FuseFirst:
		if p := s.partner; p != nil && p.state == slotReady {
			c.startFused(s, p)
		}
	case nvme.FuseSecond:
		if p := s.partner; p.state == slotReady {
			c.startFused(p, s)
		}
	default:
		c.start(s)
	}
}

// doConnect handles the capsule that must come first: Fabrics Connect.
func (c *conn) doConnect(s *cmdSlot) {
	s.state = slotRunning
	if s.hasPre {
		c.complete(s, nvme.Completion{Status: s.pre}, nil)
		return
	}
	if s.cmd.Opcode() != nvme.OpFabrics || s.cmd.FCType() != nvme.FabricsConnect {
		c.complete(s, nvme.Completion{Status: nvme.StatusCommandSequence.WithDNR()}, nil)
		return
	}
	q, comp := c.srv.core.connect(c.ctx, &s.cmd, c.nc.LocalAddr())
	if q == nil || !comp.Status.OK() {
		if q != nil {
			q.Close()
		}
		c.complete(s, comp, nil)
		return
	}
	c.q = q
	c.qid = q.ID()
	c.qsize = uint32(min(max(q.Size(), 1), maxQueueSlots))
	c.icds = min(max(q.InCapsuleDataSize(), 0), 1<<24)
	c.sqflowOff = s.cmd.SQE[46]&cattrDisableSQFlow != 0
	// Connect was the first entry fetched from the new submission queue.
	c.sqhd.Store(1 % c.qsize)
	c.complete(s, comp, nil)
	c.initSlots(int(c.qsize))
	c.connected = true
	c.nc.SetReadDeadline(time.Time{})
	c.log = c.log.With("qid", c.qid)
	c.cmdWG.Add(1)
	go func() {
		defer c.cmdWG.Done()
		select {
		case <-q.Done():
			c.close(errors.New("queue stopped by the controller"))
		case <-c.closed:
		}
	}()
}

// start runs one command: inline for a lone read (nothing else in flight
// or waiting to be read), otherwise on its own goroutine.
func (c *conn) start(s *cmdSlot) {
	s.state = slotRunning
	if s.hasPre {
		c.complete(s, nvme.Completion{Status: s.pre}, nil)
		return
	}
	if c.qid != 0 && s.cmd.Opcode() == nvme.OpRead && c.inflight.Load() == 1 && c.rd.r.Buffered() == 0 {
		// Reads never wait for a commit or an event, so the reader is
		// not held up long.
		c.run(s)
		return
	}
	c.cmdWG.Add(1)
	go func() {
		defer c.cmdWG.Done()
		c.run(s)
	}()
}

// run executes one command on the core and sends its completion.
func (c *conn) run(s *cmdSlot) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("nvmetcp: panic executing command", "panic", fmt.Sprint(r),
				"opcode", s.cmd.Opcode(), "stack", string(debug.Stack()))
			c.close(errors.New("panic executing command"))
		}
	}()
	comp, data := c.q.Execute(c.ctx, &s.cmd)
	c.complete(s, comp, data)
}

// startFused runs a fused pair once both halves have their data.
func (c *conn) startFused(first, second *cmdSlot) {
	first.state, second.state = slotRunning, slotRunning
	if first.hasPre || second.hasPre {
		first.refuse(nvme.StatusAbortFailedFused)
		second.refuse(nvme.StatusAbortFailedFused)
		c.complete(first, nvme.Completion{Status: first.pre}, nil)
		c.complete(second, nvme.Completion{Status: second.pre}, nil)
		return
	}
	c.cmdWG.Add(1)
	go func() {
		defer c.cmdWG.Done()
		defer func() {
			if r := recover(); r != nil {
				c.log.Error("nvmetcp: panic executing fused commands", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				c.close(errors.New("panic executing fused commands"))
			}
		}()
		c1, c2, data := c.q.ExecuteFused(c.ctx, &first.cmd, &second.cmd)
		c.complete(first, c1, data)
		c.complete(second, c2, nil)
	}()
}

// sendR2T solicits the next part of a command's data: at most MAXH2CDATA
// per R2T, one R2T outstanding per command.
func (c *conn) sendR2T(s *cmdSlot) {
	s.state = slotData
	s.r2tOff = s.got
	s.r2tLen = min(s.sglLen-s.got, c.maxH2C)
	s.r2tGot = 0
	var h [r2tLen]byte
	h[0] = typeR2T
	binary.LittleEndian.PutUint16(h[8:], s.cmd.CID())
	binary.LittleEndian.PutUint16(h[10:], s.idx)
	binary.LittleEndian.PutUint32(h[12:], s.r2tOff)
	binary.LittleEndian.PutUint32(h[16:], s.r2tLen)
	c.wmu.Lock()
	c.cur.add(h[:], nil)
	c.flushLocked()
}

// handleH2CData places one H2CData PDU's payload into its command's
// buffer, checking TTAG, CCCID, DATAO and DATAL against the R2T.
func (c *conn) handleH2CData() error {
	hdr := c.rd.header()
	cccid, ttag := c.rd.u16(offCCCID), c.rd.u16(offTTAG)
	datao, datal := c.rd.u32(offDATAO), c.rd.u32(offDATAL)
	if int(ttag) >= len(c.slots) || c.slots[ttag].state != slotData || c.slots[ttag].cmd.CID() != cccid {
		return fatal(fesInvalidHeaderField, offTTAG, hdr, "H2CData for TTAG %#x CCCID %#x: no such R2T", ttag, cccid)
	}
	s := &c.slots[ttag]
	if int64(datal) != int64(c.rd.dataLen) {
		return fatal(fesInvalidHeaderField, offDATAL, hdr, "DATAL %d, PDU carries %d", datal, c.rd.dataLen)
	}
	if datao < s.r2tOff || uint64(datao)+uint64(datal) > uint64(s.r2tOff)+uint64(s.r2tLen) {
		return fatal(fesDataOutOfRange, 0, hdr, "DATAO %d DATAL %d outside R2T %d+%d", datao, datal, s.r2tOff, s.r2tLen)
	}
	if datao != s.r2tOff+s.r2tGot {
		return fatal(fesPDUSequence, 0, hdr, "DATAO %d, expected %d", datao, s.r2tOff+s.r2tGot)
	}
	last := c.rd.ch.flags&flagLastPDU != 0
	if (s.r2tGot+datal == s.r2tLen) != last {
		return fatal(fesPDUSequence, 0, hdr, "LAST_PDU %v with %d of %d bytes", last, s.r2tGot+datal, s.r2tLen)
	}
	if err := c.rd.readData(s.buf[datao : datao+datal]); err != nil {
		if !errors.Is(err, errDataDigest) {
			return err
		}
		c.log.Info("nvmetcp: data digest error in H2CData", "cid", cccid)
		s.refuse(nvme.StatusTransientTransport)
	}
	s.r2tGot += datal
	s.got += datal
	if s.r2tGot < s.r2tLen {
		return nil
	}
	if s.got < s.sglLen {
		c.sendR2T(s)
		return nil
	}
	s.cmd.Data = s.buf[:s.sglLen]
	c.ready(s)
	return nil
}

// complete sends a command's data and completion and frees its slot.
func (c *conn) complete(s *cmdSlot, comp nvme.Completion, data []byte) {
	if s.buf != nil {
		putBuf(s.buf)
		s.buf = nil
	}
	s.cmd.Data = nil
	if s.dir != nvme.DirControllerToHost || !comp.Status.OK() {
		data = nil
	}
	if uint32(len(data)) > s.sglLen {
		data = data[:s.sglLen]
	}
	cid := s.cmd.CID()
	success := false
	c.wmu.Lock()
	if len(data) > 0 {
		var h [dataHdrLen]byte
		h[0] = typeC2HData
		h[1] = flagLastPDU
		if c.sqflowOff && comp == (nvme.Completion{}) {
			// The host needs no SQHD from us: the SUCCESS flag
			// completes the command and saves the CapsuleResp.
			h[1] |= flagSuccess
			success = true
		}
		binary.LittleEndian.PutUint16(h[8:], cid)
		binary.LittleEndian.PutUint32(h[16:], uint32(len(data)))
		c.cur.add(h[:], data)
	}
	if !success {
		var sqhd uint16
		if !c.sqflowOff {
			sqhd = uint16(c.sqhd.Load())
		}
		var h [capsuleRespLen]byte
		h[0] = typeCapsuleResp
		cqe := comp.CQE(sqhd, c.qid, cid)
		copy(h[chLen:], cqe[:])
		c.cur.add(h[:], nil)
	}
	c.inflight.Add(-1)
	c.free <- s.idx
	c.flushLocked()
}

// flushLocked writes the pending output unless another goroutine is
// already doing so (it then writes ours too). Called with wmu held; it
// returns with wmu released.
func (c *conn) flushLocked() {
	if c.flushing {
		c.wmu.Unlock()
		return
	}
	c.flushing = true
	for !c.cur.empty() {
		w := c.cur
		c.cur, c.spare = c.spare, nil
		c.wmu.Unlock()
		c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		err := w.flush(c.nc)
		c.wmu.Lock()
		c.spare = w
		if err != nil {
			c.flushing = false
			c.wcond.Broadcast()
			c.wmu.Unlock()
			c.close(fmt.Errorf("write: %w", err))
			return
		}
	}
	c.flushing = false
	c.wcond.Broadcast()
	c.wmu.Unlock()
}

// sendTermReq writes a C2HTermReq for a fatal error, after the output
// already in flight; the caller closes the connection next.
func (c *conn) sendTermReq(fe *fatalError) {
	c.log.Info("nvmetcp: fatal transport error", "qid", c.qidForLog(), "fes", fe.fes, "fei", fe.fei, "reason", fe.reason)
	b := make([]byte, termReqLen+len(fe.hdr))
	b[0] = typeC2HTermReq
	b[2] = termReqLen
	binary.LittleEndian.PutUint32(b[4:], uint32(len(b)))
	binary.LittleEndian.PutUint16(b[8:], fe.fes)
	binary.LittleEndian.PutUint32(b[10:], fe.fei)
	copy(b[termReqLen:], fe.hdr)
	c.wmu.Lock()
	for c.flushing {
		c.wcond.Wait()
	}
	c.flushing = true // nothing else goes out after the TermReq
	c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(termReqTimeout))
	c.nc.Write(b)
}

// releaseAll returns the buffers of commands that never completed.
func (c *conn) releaseAll() {
	for i := range c.slots {
		if s := &c.slots[i]; s.state != slotRunning && s.buf != nil {
			putBuf(s.buf)
			s.buf = nil
		}
	}
}

// Buffer pools by power-of-two size class, from 4 KiB, for host data.
const minBufShift = 12

var bufPools [13]sync.Pool // 4 KiB .. 16 MiB

func bufClass(n int) int {
	c := 0
	for (1 << (minBufShift + c)) < n {
		c++
	}
	return c
}

// getBuf returns a buffer of length n, pooled when n fits a class.
func getBuf(n int) []byte {
	c := bufClass(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(minBufShift+c))
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(b []byte) {
	c := bufClass(cap(b))
	if c >= len(bufPools) || cap(b) != 1<<(minBufShift+c) {
		return
	}
	b = b[:cap(b)]
	bufPools[c].Put(&b)
}
