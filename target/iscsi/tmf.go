package iscsi

import (
	"errors"
	"fmt"
	"slices"

	"github.com/anvilproject/anvil/target/scsi"
)

// TMF response codes (RFC 7143 §11.6.1).
const (
	tmfComplete       = 0
	tmfNoTask         = 1
	tmfNoLUN          = 2
	tmfStillAllegiant = 3
	tmfNoReassign     = 4
	tmfNotSupported   = 5
	tmfAuthFailed     = 6
	tmfFunctionReject = 255
	tmfFunctionMask   = 0x7f
)

// handleTMF processes a Task Management Function Request (RFC 7143 §11.5).
func (c *conn) handleTMF() error {
	h := c.rd.hdr
	if err := c.rd.discardData(); err != nil {
		return err
	}
	s := c.sess
	return s.sequence(h.u32(24), h.immediate(), func() error {
		if !h.immediate() {
			s.advance(false)
		}
		c.doTMF(&h)
		return nil
	})
}

// abortTaskSets aborts, as ABORT TASK SET does, every task of the given
// task sets except self, in whichever session of the server carries each
// nexus, and returns once they have all stopped (or this connection
// closed): PERSISTENT RESERVE OUT PREEMPT AND ABORT completes only after
// the preempted tasks can no longer touch the medium. The aborted tasks
// send no response (TAS = 0). If self is aborted meanwhile (two sessions
// preempting each other), it stops waiting: it will not answer either.
func (c *conn) abortTaskSets(self *task, sets []scsi.TaskSet) {
	c.srv.mu.Lock()
	var victims []*session
	var luns [][]uint64
	for _, ss := range c.srv.sessions {
		var mine []uint64
		for _, ts := range sets {
			if ss.nexus != nil && ss.nexus == ts.Nexus {
				mine = append(mine, ts.LUN)
			}
		}
		if mine != nil {
			victims, luns = append(victims, ss), append(luns, mine)
		}
	}
	c.srv.mu.Unlock()
	var waits []<-chan struct{}
	for i, ss := range victims {
		waits = append(waits, ss.abortWhere(func(t *task) bool {
			return t != self && slices.Contains(luns[i], t.lun)
		})...)
	}
	for _, w := range waits {
		select {
		case <-w:
		case <-c.closed:
			return
		case <-self.ctx.Done():
			return
		}
	}
}

// doTMF aborts the affected tasks at once (so no further Data-Out or
// responses are processed for them) and answers once they have stopped.
func (c *conn) doTMF(h *bhs) {
	s := c.sess
	fn := scsi.TMF(h[1] & tmfFunctionMask)
	lunRaw := h.lunBytes()
	lun := decodeLUN(lunRaw)
	itt := h.itt()
	rtt := h.u32(20)
	refCmdSN := h.u32(32)

	respond := func(code uint8, closeAfter bool) {
		p := newOut(opTMFResp, flagFinal)
		p.hdr[2] = code
		p.hdr.setITT(itt)
		p.stat = statAdvance
		p.closeAfter = closeAfter
		c.send(p)
	}
	// finishAfter responds once every task in waits has stopped, after
	// applying the SCSI-level side effects.
	finishAfter := func(waits []<-chan struct{}, after func() uint8, closeAfter bool) {
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			for _, w := range waits {
				select {
				case <-w:
				case <-c.closed:
					return
				}
			}
			code := uint8(tmfComplete)
			if after != nil {
				code = after()
			}
			respond(code, closeAfter)
		}()
	}
	reset := func(lun uint64) func() uint8 {
		return func() uint8 {
			if err := s.target.Reset(s.nexus, fn, lun); err != nil {
				c.log.Warn("iscsi: task management reset failed", "function", int(fn), "lun", lun, "err", err.Error())
				return tmfFunctionReject
			}
			return tmfComplete
		}
	}
	onLUN := func(t *task) bool { return t.lun == lun }

	switch fn {
	case scsi.TMFAbortTask:
		if !s.target.HasLUN(lun) {
			respond(tmfNoLUN, false)
			return
		}
		t := s.lookup(rtt)
		if t == nil || t.lun != lun {
			// Not here. If the command has not arrived yet (its CmdSN is
			// still ahead of us in the window), remember to drop it.
			exp, maxSN := s.cmdSNs()
			if snLE(exp, refCmdSN) && snLE(refCmdSN, maxSN) && t == nil {
				s.mu.Lock()
				s.abortedSN[refCmdSN] = struct{}{}
				s.mu.Unlock()
				respond(tmfComplete, false)
				return
			}
			respond(tmfNoTask, false)
			return
		}
		w := s.abortTask(t)
		if w == nil {
			respond(tmfNoTask, false)
			return
		}
		finishAfter([]<-chan struct{}{w}, nil, false)
	case scsi.TMFAbortTaskSet:
		if !s.target.HasLUN(lun) {
			respond(tmfNoLUN, false)
			return
		}
		finishAfter(s.abortWhere(onLUN), nil, false)
	case scsi.TMFClearTaskSet, scsi.TMFLogicalUnitReset:
		if !s.target.HasLUN(lun) {
			respond(tmfNoLUN, false)
			return
		}
		var waits []<-chan struct{}
		for _, ss := range c.srv.targetSessions(s.targetName) {
			waits = append(waits, ss.abortWhere(onLUN)...)
		}
		finishAfter(waits, reset(lun), false)
	case scsi.TMFTargetWarmReset, scsi.TMFTargetColdReset:
		var waits []<-chan struct{}
		others := c.srv.targetSessions(s.targetName)
		for _, ss := range others {
			waits = append(waits, ss.abortWhere(func(*task) bool { return true })...)
		}
		cold := fn == scsi.TMFTargetColdReset
		after := reset(0)
		if cold {
			// A cold reset ends every I_T nexus of the target: drop the
			// other sessions' connections now, ours after the response.
			inner := after
			after = func() uint8 {
				code := inner()
				for _, ss := range others {
					if ss != s && ss.conn != nil {
						ss.conn.close(errors.New("target cold reset"))
					}
				}
				return code
			}
		}
		finishAfter(waits, after, cold)
	case scsi.TMFClearACA:
		// ACA (NACA=1) is not supported, so there is never an ACA to clear.
		respond(tmfNotSupported, false)
	case scsi.TMFTaskReassign:
		// Task reassignment needs ErrorRecoveryLevel 2.
		respond(tmfNoReassign, false)
	default:
		c.log.Debug("iscsi: unknown task management function", "function", fmt.Sprint(int(fn)))
		respond(tmfNotSupported, false)
	}
}
