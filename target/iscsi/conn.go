package iscsi

import (
	"bufio"
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
)

// writeTimeout bounds how long one batch of PDUs may take to reach the
// socket; a peer that stops reading for that long is gone.
const writeTimeout = 60 * time.Second

// statMode says how the writer fills a PDU's StatSN field.
type statMode uint8

const (
	statNone    statMode = iota // field reserved / set by the caller
	statCurrent                 // current StatSN, not advanced (R2T, Data-In without S, NOP-In pings)
	statAdvance                 // this PDU carries status: assign StatSN and advance
)

// outPDU is one PDU queued for the connection's writer.
type outPDU struct {
	hdr  bhs
	data []byte
	stat statMode
	// closeAfter closes the connection once this PDU is on the wire
	// (Logout Response, TARGET COLD RESET).
	closeAfter bool
	// closeOnly is a marker, not a PDU: the writer flushes what was queued
	// before it and closes the connection (graceful shutdown).
	closeOnly bool
	// sent, if set, runs once the PDU has been flushed to the socket (or
	// dropped because the connection closed). Until then the writer may
	// still reference p.data.
	sent func()
}

var outPool = sync.Pool{New: func() any { return new(outPDU) }}

func newOut(op uint8, flags uint8) *outPDU {
	p := outPool.Get().(*outPDU)
	*p = outPDU{}
	p.hdr[0] = op
	p.hdr[1] = flags
	return p
}

// conn is one TCP connection. Its reader goroutine runs login and then
// dispatches full-feature-phase PDUs. The socket's write side belongs to
// whoever holds wmu: the writer goroutine, which drains the output queue
// and coalesces flushes, or a task writing its own response while the
// queue is empty (sendTask). StatSN is assigned under wmu, in wire order.
type conn struct {
	srv  *Server
	nc   net.Conn
	log  *slog.Logger
	peer *peer // the initiator address's accounting, set by Serve

	rd pduReader
	pw pduWriter

	sess   *session
	cid    uint16
	params Params
	// statSN is the next StatSN; owned by the login code, then by the
	// holder of wmu.
	statSN uint32
	// maxXmit is the initiator's MaxRecvDataSegmentLength: the largest
	// data segment we may send. It can change in full feature phase.
	maxXmit atomic.Uint32
	// digests, fixed once full feature phase starts.
	hdrDigest, dataDigest bool

	out chan *outPDU
	// wmu serializes writing to the socket in full feature phase: the
	// writer goroutine holds it while it writes and flushes a batch, and
	// a task goroutine holds it for a direct write (sendTask).
	wmu sync.Mutex
	// queued counts PDUs handed to the writer goroutine and not yet
	// written. A direct write needs it at zero, so that PDUs reach the
	// wire in the order they were sent.
	queued    atomic.Int64
	closed    chan struct{}
	closeOnce sync.Once
	bg        sync.WaitGroup // writer, keep-alive and helpers

	tags counter // TTTs for R2T, NOP-In and text continuation

	// keep-alive state. rx counts PDUs received, so the keep-alive can tell
	// an idle connection from a busy one without a clock read per PDU.
	rx         atomic.Uint64
	nopMu      sync.Mutex
	nopTTT     uint32
	nopSent    time.Time
	nopPending bool

	text textState // reader goroutine only

	// inFFP is set once the writer goroutine runs.
	inFFP atomic.Bool
	// afterFlush holds sent callbacks of written PDUs until the next
	// flush; guarded by wmu.
	afterFlush []func()
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:    s,
		nc:     nc,
		log:    s.log.With("remote", nc.RemoteAddr().String()),
		out:    make(chan *outPDU, 1024),
		closed: make(chan struct{}),
	}
	c.rd = pduReader{r: bufio.NewReaderSize(nc, 64<<10), maxData: int(s.cfg.MaxRecvDataSegmentLength)}
	c.pw = pduWriter{w: nc, buf: make([]byte, 0, 64<<10)}
	c.maxXmit.Store(8192)
	return c
}

// close shuts the connection down once. Reader and writer notice and exit.
func (c *conn) close(reason error) {
	c.closeOnce.Do(func() {
		if reason != nil && !errors.Is(reason, io.EOF) && !errors.Is(reason, net.ErrClosed) {
			c.log.Info("iscsi: closing connection", "reason", reason.Error())
		}
		close(c.closed)
		c.nc.Close()
	})
}

func (c *conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// serve runs the connection: login, then full feature phase until the
// peer goes away or a protocol error closes the connection. A panic is
// contained here: it is logged with its stack and closes this connection
// only.
func (c *conn) serve() {
	defer c.srv.removeConn(c)
	reason := "connection closed"
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: panic in connection handler", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			reason = "panic"
		}
		c.close(nil)
		c.bg.Wait()
		if c.sess != nil {
			c.sess.end(reason)
		}
	}()
	if err := c.login(); err != nil {
		if !errors.Is(err, io.EOF) {
			c.log.Info("iscsi: login failed", "err", err.Error())
		}
		return
	}
	c.bg.Add(1)
	go c.writeLoop()
	c.inFFP.Store(true)
	if c.srv.cfg.NopInterval > 0 {
		c.bg.Add(1)
		go c.keepAlive()
	}
	if !c.sess.discovery {
		c.bg.Add(1)
		go c.watchDataOut()
	}
	err := c.readLoop()
	if err != nil && !c.isClosed() && !errors.Is(err, io.EOF) {
		c.log.Info("iscsi: connection error", "tsih", c.sess.tsih, "err", err.Error())
		reason = err.Error()
	}
	c.close(err)
}

// send queues p for the writer. It returns false if the connection is
// closing, in which case p is dropped.
func (c *conn) send(p *outPDU) bool {
	c.queued.Add(1)
	select {
	case c.out <- p:
		return true
	case <-c.closed:
		c.queued.Add(-1)
		if p.sent != nil {
			p.sent()
		}
		return false
	}
}

// sendTask sends a finished task's PDUs (Data-In and status). When the
// writer goroutine has nothing queued, the calling task goroutine writes
// and flushes them itself: handing them to the writer costs a goroutine
// wake-up per command, which on a small VM is most of the latency of a
// cached read at queue depth 1. Otherwise they are queued behind the
// others, in order.
//
// It runs on a task goroutine, or on the reader for a command it runs
// inline (maybeStart). A direct write blocks only while the peer does not
// read; a peer that stops reading for writeTimeout loses its connection,
// as it would with the writer goroutine. It reports false if the
// connection is closing; the PDUs' sent callbacks have then run.
func (c *conn) sendTask(ps []*outPDU) bool {
	if c.queued.Load() == 0 && c.wmu.TryLock() {
		if c.queued.Load() == 0 && !c.isClosed() {
			err := c.writeBatch(ps)
			c.wmu.Unlock()
			if err != nil {
				c.close(fmt.Errorf("write: %w", err))
				return false
			}
			return true
		}
		c.wmu.Unlock()
	}
	for i, p := range ps {
		if !c.send(p) {
			for _, q := range ps[i+1:] {
				if q.sent != nil {
					q.sent()
				}
			}
			return false
		}
	}
	return true
}

// writeBatch writes ps and flushes them. wmu is held, nothing is queued,
// and none of ps closes the connection.
func (c *conn) writeBatch(ps []*outPDU) error {
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	for _, p := range ps {
		if err := c.writeOne(p); err != nil {
			c.flush() // runs the sent callbacks of those written
			return err
		}
	}
	return c.flush()
}

// writeLoop writes queued PDUs after login.
func (c *conn) writeLoop() {
	defer c.bg.Done()
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: panic in writer", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.close(errors.New("writer panic"))
		}
	}()
	for {
		var p *outPDU
		select {
		case p = <-c.out:
		case <-c.closed:
			c.wmu.Lock() // a direct write may still be finishing
			c.drainOut()
			c.wmu.Unlock()
			return
		}
		if !c.writeQueued(p) {
			return
		}
	}
}

// writeQueued writes p and whatever else is queued behind it, then
// flushes, holding wmu throughout. It reports false once the connection
// is closed (the remaining PDUs' callbacks have run).
func (c *conn) writeQueued(p *outPDU) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	for p != nil {
		// A PDU counts as queued until it is written, so that no direct
		// write can overtake it.
		c.queued.Add(-1)
		if p.closeOnly {
			c.flush()
			c.close(nil)
			c.drainOut()
			return false
		}
		closeAfter := p.closeAfter
		if err := c.writeOne(p); err != nil {
			c.close(fmt.Errorf("write: %w", err))
			c.drainOut()
			return false
		}
		if closeAfter {
			c.flush()
			c.close(nil)
			c.drainOut()
			return false
		}
		p = nil
		if c.pw.size >= 1<<20 {
			// Don't let a long burst pile up unsent.
			if err := c.flush(); err != nil {
				c.close(fmt.Errorf("flush: %w", err))
				c.drainOut()
				return false
			}
		}
		select {
		case p = <-c.out:
		default:
		}
	}
	if err := c.flush(); err != nil {
		c.close(fmt.Errorf("flush: %w", err))
		c.drainOut()
		return false
	}
	return true
}

// closeGracefully closes the connection after the PDUs already queued are
// sent. If the queue is full, it closes at once.
func (c *conn) closeGracefully() {
	p := newOut(0, 0)
	p.closeOnly = true
	select {
	case c.out <- p:
	case <-c.closed:
	default:
		c.close(errors.New("shutdown with a full output queue"))
	}
}

// flush sends the batched PDUs and then runs their sent callbacks (also
// when the write failed: the data is no longer referenced either way).
func (c *conn) flush() error {
	err := c.pw.flush()
	for i, f := range c.afterFlush {
		f()
		c.afterFlush[i] = nil
	}
	c.afterFlush = c.afterFlush[:0]
	return err
}

// drainOut runs the callbacks of PDUs that will never be sent.
func (c *conn) drainOut() {
	for i, f := range c.afterFlush {
		f()
		c.afterFlush[i] = nil
	}
	c.afterFlush = c.afterFlush[:0]
	for {
		select {
		case p := <-c.out:
			if p.sent != nil {
				p.sent()
			}
		default:
			return
		}
	}
}

func (c *conn) writeOne(p *outPDU) error {
	switch p.stat {
	case statAdvance:
		p.hdr.setU32(24, c.statSN)
		c.statSN++
	case statCurrent:
		p.hdr.setU32(24, c.statSN)
	}
	if s := c.sess; s != nil {
		exp, maxSN := s.cmdSNs()
		p.hdr.setU32(28, exp)
		p.hdr.setU32(32, maxSN)
	}
	c.pw.write(&p.hdr, p.data, c.hdrDigest, c.dataDigest)
	if p.sent != nil {
		c.afterFlush = append(c.afterFlush, p.sent)
	}
	p.data = nil
	p.sent = nil
	outPool.Put(p)
	return nil
}

// readLoop reads and dispatches full-feature-phase PDUs.
func (c *conn) readLoop() error {
	c.nc.SetReadDeadline(time.Time{})
	for {
		if err := c.rd.readHeader(); err != nil {
			return err
		}
		c.rx.Add(1)
		if err := c.dispatch(); err != nil {
			return err
		}
	}
}

func (c *conn) dispatch() error {
	h := &c.rd.hdr
	op := h.opcode()
	if op != opSCSICmd && c.rd.ahsLen != 0 {
		return c.rejectAndDiscard(rejectProtocolError)
	}
	switch op {
	case opSCSICmd:
		if c.sess.discovery {
			return c.rejectAndDiscard(rejectProtocolError)
		}
		return c.handleSCSICmd()
	case opDataOut:
		if c.sess.discovery {
			return c.rejectAndDiscard(rejectProtocolError)
		}
		return c.handleDataOut()
	case opNOPOut:
		return c.handleNOPOut()
	case opTMFReq:
		if c.sess.discovery {
			return c.rejectAndDiscard(rejectProtocolError)
		}
		return c.handleTMF()
	case opTextReq:
		return c.handleText()
	case opLogoutReq:
		return c.handleLogout()
	case opSNACKReq:
		// SNACK needs ErrorRecoveryLevel > 0, which we never negotiate: at
		// ERL 0 it is a protocol error.
		return c.rejectAndDiscard(rejectProtocolError)
	case opLoginReq:
		// A login request in full feature phase is a protocol error.
		return c.rejectAndDiscard(rejectProtocolError)
	default:
		return c.rejectAndDiscard(rejectNotSupported)
	}
}

// rejectAndDiscard answers the current PDU with a Reject and skips its data.
func (c *conn) rejectAndDiscard(reason uint8) error {
	hdr := c.rd.hdr
	if err := c.rd.discardData(); err != nil {
		return err
	}
	c.log.Debug("iscsi: rejecting PDU", "opcode", fmt.Sprintf("%#x", hdr.opcode()), "reason", reason)
	c.sendReject(&hdr, reason)
	return nil
}

// sendReject queues a Reject PDU carrying the offending header.
func (c *conn) sendReject(h *bhs, reason uint8) {
	p := newOut(opReject, flagFinal)
	p.hdr[2] = reason
	p.hdr.setITT(tagNone)
	data := make([]byte, bhsLen)
	copy(data, h[:])
	p.data = data
	p.stat = statAdvance
	c.send(p)
}

// readSmallData reads the current PDU's data segment into a new buffer.
func (c *conn) readSmallData() ([]byte, error) {
	n := c.rd.hdr.dataLen()
	if n == 0 {
		return nil, c.rd.readData(nil)
	}
	b := make([]byte, n)
	if err := c.rd.readData(b); err != nil {
		return nil, err
	}
	return b, nil
}

// handleNOPOut answers pings and notes answers to our keep-alives.
func (c *conn) handleNOPOut() error {
	h := c.rd.hdr
	data, err := c.readSmallData()
	if err != nil {
		return err
	}
	itt, ttt := h.itt(), h.u32(20)
	if itt == tagNone {
		// An answer to our NOP-In (TTT set) or a ping that wants no
		// reply; both must be immediate and consume no CmdSN.
		if ttt != tagNone {
			c.nopMu.Lock()
			if c.nopPending && ttt == c.nopTTT {
				c.nopPending = false
			}
			c.nopMu.Unlock()
		}
		return nil
	}
	if ttt != tagNone {
		// A ping (ITT set) must not carry a TTT.
		c.sendReject(&h, rejectInvalidPDUField)
		return nil
	}
	return c.sess.sequence(h.u32(24), h.immediate(), func() error {
		if !h.immediate() {
			c.sess.advance(false)
		}
		p := newOut(opNOPIn, flagFinal)
		copy(p.hdr[8:16], h[8:16])
		p.hdr.setITT(itt)
		p.hdr.setU32(20, tagNone)
		if mx := int(c.maxXmit.Load()); len(data) > mx {
			data = data[:mx]
		}
		p.data = data
		p.stat = statAdvance
		c.send(p)
		return nil
	})
}

// keepAlive pings the initiator with a NOP-In once the connection has
// been silent for NopInterval, and drops the connection when the answer is
// more than NopTimeout late.
func (c *conn) keepAlive() {
	defer c.bg.Done()
	cfg := &c.srv.cfg
	period := min(cfg.NopInterval, cfg.NopTimeout)
	t := time.NewTicker(max(period/4, 10*time.Millisecond))
	defer t.Stop()
	lastActive := time.Now()
	lastRx := c.rx.Load()
	for {
		select {
		case <-c.closed:
			return
		case now := <-t.C:
			if rx := c.rx.Load(); rx != lastRx {
				lastRx, lastActive = rx, now
			}
			c.nopMu.Lock()
			if c.nopPending {
				overdue := now.Sub(c.nopSent) > cfg.NopTimeout
				c.nopMu.Unlock()
				if overdue {
					c.close(errors.New("NOP-In keep-alive timed out"))
					return
				}
				continue
			}
			if now.Sub(lastActive) < cfg.NopInterval {
				c.nopMu.Unlock()
				continue
			}
			lastActive = now
			c.nopTTT = c.tags.next()
			c.nopSent = now
			c.nopPending = true
			ttt := c.nopTTT
			c.nopMu.Unlock()
			p := newOut(opNOPIn, flagFinal)
			p.hdr.setITT(tagNone)
			p.hdr.setU32(20, ttt)
			p.stat = statCurrent
			c.send(p)
		}
	}
}

// handleLogout processes a Logout Request (RFC 7143 §11.14).
func (c *conn) handleLogout() error {
	h := c.rd.hdr
	if err := c.rd.discardData(); err != nil {
		return err
	}
	reason := h[1] & 0x7f
	cid := binary.BigEndian.Uint16(h[20:22])
	return c.sess.sequence(h.u32(24), h.immediate(), func() error {
		if !h.immediate() {
			c.sess.advance(false)
		}
		var resp uint8
		switch reason {
		case 0: // close the session
		case 1: // close the connection
			if cid != c.cid {
				resp = 1 // CID not found
			}
		case 2: // remove the connection for recovery: needs ERL 2
			resp = 2
		default:
			c.sendReject(&h, rejectProtocolError)
			return nil
		}
		itt := h.itt()
		params := c.params
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			if resp == 0 {
				// Let commands still running finish and send their
				// status before the logout response closes the door.
				c.waitTasks(5 * time.Second)
			}
			p := newOut(opLogoutResp, flagFinal)
			p.hdr[2] = resp
			p.hdr.setITT(itt)
			p.hdr.setU16(40, uint16(params.DefaultTime2Wait))
			p.hdr.setU16(42, uint16(params.DefaultTime2Retain))
			p.stat = statAdvance
			p.closeAfter = resp == 0
			c.send(p)
		}()
		return nil
	})
}

// waitTasks waits up to d for the session's tasks to finish.
func (c *conn) waitTasks(d time.Duration) {
	deadline := time.Now().Add(d)
	for c.sess.inFlight() > 0 && time.Now().Before(deadline) && !c.isClosed() {
		time.Sleep(2 * time.Millisecond)
	}
}

// sendAsyncLogout sends an Asynchronous Message asking the initiator to
// log out (AsyncEvent 1) within secs seconds.
func (c *conn) sendAsyncLogout(secs uint16) {
	p := newOut(opAsyncMsg, flagFinal)
	p.hdr.setITT(tagNone)
	p.hdr[36] = 1 // AsyncEvent: target requests logout
	p.hdr.setU16(42, secs)
	p.stat = statAdvance
	c.send(p)
}
