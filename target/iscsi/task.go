package iscsi

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/anvilproject/anvil/target/scsi"
)

// r2tState is one outstanding R2T.
type r2tState struct {
	ttt    uint32
	offset uint32
	length uint32
	got    uint32
	dataSN uint32
}

// task is one SCSI command from arrival to response: the transport's side
// (ITT, CmdSN, R2T and Data-Out state, buffers) of the scsi.Task the task
// manager orders, runs and aborts.
type task struct {
	st   scsi.Task
	sess *session
	c    *conn

	itt       uint32
	cmdSN     uint32
	immediate bool
	lunRaw    uint64
	cdb       []byte
	cdbBuf    [16]byte
	read      bool
	write     bool
	edtl      uint32 // expected data transfer length (write side for bidirectional)
	readLen   uint32 // expected data-in length

	// Data-Out gathering; touched only by the connection's reader.
	buf         []byte
	bufp        *[]byte
	received    uint32
	unsolActive bool
	unsolDataSN uint32
	unsolLimit  uint32
	nextOffset  uint32
	r2tSN       uint32
	r2ts        []r2tState
	ordered     bool

	// precheck, when set, is the result to return without executing the
	// command (transport-level refusals such as bidirectional commands).
	precheck *scsi.Result

	reserved    atomic.Int64  // Data-Out bytes reserved against the session's and server's budgets
	progress    atomic.Uint32 // Data-Out PDUs placed, for the stall watchdog
	holdsSlot   bool          // under session.mu
	finishOnce  sync.Once
	dataInCount uint32
}

// releaseSlot gives the task's CmdSN window slot back, if it holds one.
func (t *task) releaseSlot() {
	t.sess.mu.Lock()
	holds := t.holdsSlot
	t.holdsSlot = false
	t.sess.mu.Unlock()
	if holds {
		t.sess.release()
	}
}

// releaseMem returns the task's Data-Out reservation once.
func (t *task) releaseMem() {
	if n := t.reserved.Swap(0); n != 0 {
		t.sess.srv.releaseDataOut(t.c, t.sess, n)
	}
}

// finish returns what the task holds (window slot, Data-Out budget) and
// tells the task manager it no longer runs, which lets a task management
// function waiting for it answer.
func (t *task) finish() {
	t.finishOnce.Do(func() {
		t.releaseSlot()
		t.releaseMem()
		t.sess.active.Add(-1)
		t.sess.tm.Release(&t.st)
	})
}

// aborted is the task manager's word that a task management function (or
// the end of the session) aborted t: it is forgotten by ITT so that no
// more Data-Out is taken for it, and it sends no response. A task that had
// not started is finished here; its buffer may still be in use by the
// reader, so it is left to the garbage collector. A running one finishes
// when Execute returns.
func (t *task) aborted(running bool) {
	s := t.sess
	s.mu.Lock()
	if s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	s.mu.Unlock()
	if !running {
		t.finish()
	}
}

// refuse makes the task complete with the core's answer to why, without
// executing it.
func (t *task) refuse(why scsi.Refusal) {
	r := t.sess.tm.Refuse(t.st.LUN, why)
	t.precheck = &r
}

// handleSCSICmd processes a SCSI Command PDU (RFC 7143 §11.3).
func (c *conn) handleSCSICmd() error {
	h := c.rd.hdr
	s := c.sess
	p := &c.params
	flags := h[1]
	final := flags&flagFinal != 0
	immediate := h.immediate()
	cmdSN := h.u32(24)
	dsl := uint32(h.dataLen())
	extCDB, bidiRead, err := parseAHS(c.rd.ahs[:c.rd.ahsLen])
	if err != nil {
		return c.rejectCommand(&h, rejectProtocolError)
	}
	if !immediate && s.checkCmdSN(cmdSN) == cmdDrop {
		// Outside the window: the RFC says to ignore it silently.
		return c.rd.discardData()
	}
	t := &task{
		sess:      s,
		c:         c,
		itt:       h.itt(),
		cmdSN:     cmdSN,
		immediate: immediate,
		lunRaw:    h.lunBytes(),
		read:      flags&flagRead != 0,
		write:     flags&flagWrite != 0,
		edtl:      h.u32(20),
	}
	t.st = scsi.Task{
		Nexus:   s.nexus,
		LUN:     scsi.DecodeLUN(t.lunRaw),
		Attr:    scsi.TaskAttr(flags & 7),
		Start:   func() { c.runTask(t) },
		Aborted: t.aborted,
	}
	t.readLen = t.edtl
	if t.read && t.write {
		t.readLen = bidiRead
	}
	if len(extCDB) > 0 {
		t.cdb = make([]byte, 16+len(extCDB))
		copy(t.cdb, h[32:48])
		copy(t.cdb[16:], extCDB)
	} else {
		copy(t.cdbBuf[:], h[32:48])
		t.cdb = t.cdbBuf[:]
	}

	// PDU-level checks (RFC 7143 §11.3.1, §13.3, §13.4, §13.14).
	bad := dsl > 0 && !t.write ||
		t.write && dsl > t.edtl ||
		dsl > 0 && !p.ImmediateData ||
		dsl > p.FirstBurstLength ||
		!final && (!t.write || p.InitialR2T)
	if bad {
		return c.rejectCommand(&h, rejectProtocolError)
	}
	s.mu.Lock()
	_, inUse := s.tasks[t.itt]
	_, abortedEarly := s.abortedSN[cmdSN]
	if abortedEarly && !immediate {
		delete(s.abortedSN, cmdSN)
	}
	s.mu.Unlock()
	if inUse || t.itt == tagNone {
		return c.rejectCommand(&h, rejectTaskInProgress)
	}
	if abortedEarly && !immediate {
		// ABORT TASK named this command before it arrived: consume its
		// CmdSN and forget it.
		if err := c.rd.discardData(); err != nil {
			return err
		}
		return s.sequence(cmdSN, false, func() error { s.advance(false); return nil })
	}

	switch {
	case t.read && t.write:
		// Bidirectional commands are not supported by the SCSI core.
		t.refuse(scsi.RefuseInvalidField)
	case t.write && t.edtl > c.srv.cfg.MaxTransferLength:
		t.refuse(scsi.RefuseInvalidField)
	}
	if t.precheck == nil && t.write && t.edtl > 0 {
		if !c.srv.reserveDataOut(c, s, int64(t.edtl)) {
			t.refuse(scsi.RefuseTaskSetFull)
		} else {
			t.reserved.Store(int64(t.edtl))
			t.bufp = getBuf(int(t.edtl))
			t.buf = (*t.bufp)[:t.edtl]
		}
	}
	if dsl > 0 {
		if t.buf != nil {
			if err := c.rd.readData(t.buf[:dsl]); err != nil {
				return err
			}
		} else if err := c.rd.discardData(); err != nil {
			return err
		}
	} else if err := c.rd.readData(nil); err != nil {
		return err
	}
	t.received = dsl
	if t.precheck != nil {
		// Nothing more to gather; later unsolicited Data-Out PDUs for it
		// are discarded.
		t.received = t.edtl
	} else if t.write {
		t.unsolLimit = min(p.FirstBurstLength, t.edtl)
		t.unsolActive = !final && t.received < t.unsolLimit
		t.nextOffset = t.received
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		t.releaseMem()
		return nil
	}
	s.tasks[t.itt] = t
	s.active.Add(1)
	// Under s.mu, with the ended check: a session ending now aborts it.
	s.tm.Add(s.ctx, &t.st)
	s.mu.Unlock()

	if t.write && !t.unsolActive && t.precheck == nil {
		c.issueR2Ts(t)
	}
	return s.sequence(cmdSN, immediate, func() error {
		// The task takes its window slot before it enters the task
		// manager's order; if it was aborted (before or meanwhile) the
		// slot goes back at once, and releaseSlot makes sure it goes
		// back exactly once.
		if !immediate {
			s.mu.Lock()
			t.holdsSlot = true
			s.advance(true)
			s.mu.Unlock()
		}
		if !s.tm.Deliver(&t.st) {
			t.releaseSlot()
			return nil
		}
		t.ordered = true
		c.maybeStart(t)
		return nil
	})
}

// rejectCommand rejects a SCSI command PDU. The command's CmdSN is still
// consumed so that the window keeps moving.
func (c *conn) rejectCommand(h *bhs, reason uint8) error {
	if err := c.rd.discardData(); err != nil {
		return err
	}
	hdr := *h
	return c.sess.sequence(h.u32(24), h.immediate(), func() error {
		if !hdr.immediate() {
			c.sess.advance(false)
		}
		c.sendReject(&hdr, reason)
		return nil
	})
}

// issueR2Ts sends R2Ts until MaxOutstandingR2T are in flight or the whole
// expected length is solicited.
func (c *conn) issueR2Ts(t *task) {
	p := &c.params
	for t.nextOffset < t.edtl && uint32(len(t.r2ts)) < p.MaxOutstandingR2T {
		l := min(p.MaxBurstLength, t.edtl-t.nextOffset)
		r := r2tState{ttt: c.tags.next(), offset: t.nextOffset, length: l}
		t.r2ts = append(t.r2ts, r)
		t.nextOffset += l
		o := newOut(opR2T, flagFinal)
		o.hdr.setLUN(t.lunRaw)
		o.hdr.setITT(t.itt)
		o.hdr.setU32(20, r.ttt)
		o.hdr.setU32(36, t.r2tSN)
		o.hdr.setU32(40, r.offset)
		o.hdr.setU32(44, r.length)
		o.stat = statCurrent
		t.r2tSN++
		c.send(o)
	}
}

// handleDataOut places a Data-Out PDU's payload into its task's buffer,
// checking TTT, DataSN and BufferOffset (RFC 7143 §11.7).
func (c *conn) handleDataOut() error {
	h := c.rd.hdr
	s := c.sess
	n := uint32(h.dataLen())
	s.mu.Lock()
	t := s.tasks[h.itt()]
	s.mu.Unlock()
	live := t != nil && t.st.Waiting()
	if !live || t.precheck != nil {
		// Data for a task that was aborted, failed or already answered.
		return c.rd.discardData()
	}
	if !t.write {
		return c.failData(t, scsi.RefuseUnexpectedData, "Data-Out for a command without W bit")
	}
	ttt, dataSN, off := h.u32(20), h.u32(36), h.u32(40)
	final := h.final()
	if ttt == tagNone {
		switch {
		case !t.unsolActive:
			return c.failData(t, scsi.RefuseUnexpectedData, "unexpected unsolicited Data-Out")
		case dataSN != t.unsolDataSN:
			return c.failData(t, scsi.RefuseDataSequence, fmt.Sprintf("unsolicited DataSN %d, expected %d", dataSN, t.unsolDataSN))
		case off != t.received:
			return c.failData(t, scsi.RefuseDataOffset, fmt.Sprintf("unsolicited offset %d, expected %d", off, t.received))
		case uint64(off)+uint64(n) > uint64(t.unsolLimit):
			return c.failData(t, scsi.RefuseDataAmount, fmt.Sprintf("unsolicited data past %d", t.unsolLimit))
		}
		if err := c.rd.readData(t.buf[off : off+n]); err != nil {
			return err
		}
		t.received += n
		t.progress.Add(1)
		t.unsolDataSN++
		if final || t.received == t.unsolLimit {
			t.unsolActive = false
			t.nextOffset = t.received
			c.issueR2Ts(t)
		}
		c.maybeStart(t)
		return nil
	}
	i := 0
	for i < len(t.r2ts) && t.r2ts[i].ttt != ttt {
		i++
	}
	if i == len(t.r2ts) {
		return c.failData(t, scsi.RefuseBadTransferTag, fmt.Sprintf("unknown TTT %#x", ttt))
	}
	r := &t.r2ts[i]
	switch {
	case dataSN != r.dataSN:
		return c.failData(t, scsi.RefuseDataSequence, fmt.Sprintf("DataSN %d, expected %d", dataSN, r.dataSN))
	case off != r.offset+r.got:
		return c.failData(t, scsi.RefuseDataOffset, fmt.Sprintf("offset %d, expected %d", off, r.offset+r.got))
	case r.got+n > r.length, final && r.got+n != r.length:
		return c.failData(t, scsi.RefuseDataAmount, fmt.Sprintf("%d+%d bytes for an R2T of %d", r.got, n, r.length))
	}
	if err := c.rd.readData(t.buf[off : off+n]); err != nil {
		return err
	}
	r.got += n
	r.dataSN++
	t.received += n
	t.progress.Add(1)
	if r.got == r.length {
		t.r2ts = append(t.r2ts[:i], t.r2ts[i+1:]...)
		c.issueR2Ts(t)
	}
	c.maybeStart(t)
	return nil
}

// failData ends a task whose Data-Out sequence is broken (RFC 7143
// §11.4.7.2): the offending PDU is discarded and the task completes with
// the core's CHECK CONDITION (ABORTED COMMAND) once it is in CmdSN order:
// at ERL 0 we cannot ask for the data again, but we can end the one task
// and keep the session. Further Data-Out for it is ignored.
func (c *conn) failData(t *task, why scsi.Refusal, detail string) error {
	c.log.Info("iscsi: Data-Out sequence error", "tsih", c.sess.tsih, "itt", t.itt, "reason", detail)
	if err := c.rd.discardData(); err != nil {
		return err
	}
	t.refuse(why)
	t.unsolActive = false
	t.r2ts = t.r2ts[:0]
	t.nextOffset = t.edtl
	t.received = t.edtl
	c.maybeStart(t)
	return nil
}

// maybeStart runs the task once it is in CmdSN order and has all its data.
func (c *conn) maybeStart(t *task) {
	if !t.ordered || t.unsolActive || len(t.r2ts) > 0 || (t.write && t.received < t.edtl) {
		return
	}
	s := t.sess
	if !s.tm.Ready(&t.st) {
		// Not delivered yet, aborted, or held back by the task
		// attribute rules (then st.Start runs it later).
		return
	}
	inline := t.read && !t.write && s.active.Load() == 1 && c.rd.r.Buffered() == 0
	if inline {
		// The only task, and nothing more has arrived: the initiator is
		// waiting for this one (queue depth 1). The reader runs it and
		// writes its data itself, as a single-threaded target would,
		// instead of waking a task goroutine and then the writer, two
		// wake-ups that a cached read's latency is mostly made of. Only
		// commands with a Data-In phase run
		// here (reads, inquiries): they never wait for a commit, so the
		// reader is not kept from the initiator's NOP-Outs and task
		// management for long. Writes and flushes, which can wait seconds
		// for the flusher, always get a goroutine.
		c.runTask(t)
		return
	}
	go c.runTask(t)
}

// runTask executes the command and sends its data and status.
func (c *conn) runTask(t *task) {
	s := t.sess
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: panic executing SCSI command", "panic", fmt.Sprint(r),
				"cdb", fmt.Sprintf("% x", t.cdb), "stack", string(debug.Stack()))
			s.mu.Lock()
			if s.tasks[t.itt] == t {
				delete(s.tasks, t.itt)
			}
			s.mu.Unlock()
			s.tm.Complete(&t.st, nil)
			t.finish()
			c.close(errors.New("panic executing SCSI command"))
		}
	}()
	var res scsi.Result
	if t.precheck != nil {
		res = *t.precheck
	} else {
		cmd := scsi.Command{CDB: t.cdb, DataOut: t.buf}
		if t.read {
			cmd.ExpectedDataIn = int(t.readLen)
		}
		res = s.tm.Execute(&t.st, &cmd)
	}
	if t.bufp != nil {
		putBuf(t.bufp)
		t.bufp, t.buf = nil, nil
	}
	t.releaseMem()
	var release func()
	if len(res.DataIn) > 0 {
		b := res.DataIn
		release = func() { s.tm.ReleaseDataIn(b) }
	}
	// Complete sends the status unless the task was aborted meanwhile;
	// the task leaves the task set only once its status is queued, so an
	// ORDERED task behind it answers after it.
	sent := s.tm.Complete(&t.st, func() {
		s.mu.Lock()
		delete(s.tasks, t.itt)
		s.mu.Unlock()
		t.releaseSlot()
		c.sendResult(t, &res, release)
	})
	if !sent && release != nil {
		release()
	}
	t.finish()
}

// sendResult sends Data-In PDUs and the status for a finished task.
// release, if not nil, runs once the last of them is on the wire.
func (c *conn) sendResult(t *task, res *scsi.Result, release func()) {
	var flags uint8
	var residual uint32
	var data []byte
	if t.read {
		data = res.DataIn
		if uint32(len(data)) > t.readLen {
			data = data[:t.readLen]
		}
		tl := uint32(max(res.TransferLength, len(res.DataIn)))
		switch {
		case tl > t.readLen:
			flags, residual = flagOverflow, tl-t.readLen
		case uint32(len(data)) < t.readLen:
			flags, residual = flagUnder, t.readLen-uint32(len(data))
		}
	} else {
		var exp uint32
		if t.write {
			exp = t.edtl
		}
		tl := uint32(res.TransferLength)
		switch {
		case tl > exp:
			flags, residual = flagOverflow, tl-exp
		case tl < exp:
			flags, residual = flagUnder, exp-tl
		}
	}
	collapse := len(data) > 0 && res.Status == scsi.StatusGood && len(res.Sense) == 0
	var ps []*outPDU
	if len(data) > 0 {
		var last func()
		if collapse {
			last = release
		}
		ps = c.dataInPDUs(t, data, collapse, flags, residual, last)
	}
	if !collapse {
		p := newOut(opSCSIResp, flagFinal|flags)
		p.hdr[2] = 0 // command completed at target
		p.hdr[3] = byte(res.Status)
		p.hdr.setITT(t.itt)
		if t.read {
			p.hdr.setU32(36, t.dataInCount)
		} else {
			p.hdr.setU32(36, t.r2tSN)
		}
		p.hdr.setU32(44, residual)
		if len(res.Sense) > 0 {
			sense := make([]byte, 2+len(res.Sense))
			sense[0] = byte(len(res.Sense) >> 8)
			sense[1] = byte(len(res.Sense))
			copy(sense[2:], res.Sense)
			p.data = sense
		}
		p.stat = statAdvance
		p.sent = release
		ps = append(ps, p)
	}
	c.sendTask(ps)
}

// dataInPDUs splits data into Data-In PDUs no larger than the initiator's
// MaxRecvDataSegmentLength, with the F bit closing every MaxBurstLength
// sequence. With status, the last PDU carries the status (phase collapse).
// done runs once the last PDU is on the wire (or dropped).
func (c *conn) dataInPDUs(t *task, data []byte, status bool, resFlags uint8, residual uint32, done func()) []*outPDU {
	maxSeg := int(c.maxXmit.Load())
	burst := int(c.params.MaxBurstLength)
	ps := make([]*outPDU, 0, (len(data)+maxSeg-1)/maxSeg+1)
	inBurst := 0
	for off := 0; off < len(data); {
		n := min(maxSeg, len(data)-off, burst-inBurst)
		last := off+n == len(data)
		p := newOut(opDataIn, 0)
		inBurst += n
		if last || inBurst == burst {
			p.hdr[1] |= flagFinal
			inBurst = 0
		}
		if last && status {
			p.hdr[1] |= flagStatus | resFlags
			p.hdr[3] = byte(scsi.StatusGood)
			p.hdr.setU32(44, residual)
			p.stat = statAdvance
		}
		p.hdr.setLUN(t.lunRaw)
		p.hdr.setITT(t.itt)
		p.hdr.setU32(20, tagNone)
		p.hdr.setU32(36, t.dataInCount)
		p.hdr.setU32(40, uint32(off))
		p.data = data[off : off+n]
		if last {
			p.sent = done
		}
		t.dataInCount++
		ps = append(ps, p)
		off += n
	}
	return ps
}

// Data-Out buffers come from size-class pools so a steady write workload
// does not allocate per command.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 26 // 64 MiB
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of at least n bytes.
func getBuf(n int) *[]byte {
	cl := bufClass(n)
	if cl >= len(bufPools) {
		b := make([]byte, n)
		return &b
	}
	if v := bufPools[cl].Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, 1<<(cl+minBufShift))
	return &b
}

// putBuf returns a buffer obtained from getBuf.
func putBuf(b *[]byte) {
	c := cap(*b)
	if c&(c-1) != 0 || c < 1<<minBufShift {
		return
	}
	cl := bufClass(c)
	if cl < len(bufPools) {
		*b = (*b)[:c]
		bufPools[cl].Put(b)
	}
}
