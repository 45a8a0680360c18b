package iscsi

import (
	"errors"
	"fmt"

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

// tmfCodes maps the SCSI core's service responses to iSCSI TMF response
// codes.
var tmfCodes = map[scsi.TMFResponse]uint8{
	scsi.TMFComplete:     tmfComplete,
	scsi.TMFNoTask:       tmfNoTask,
	scsi.TMFNoLUN:        tmfNoLUN,
	scsi.TMFNotSupported: tmfNotSupported,
	scsi.TMFRejected:     tmfFunctionReject,
}

// doTMF turns a TMF request into one call on the task manager, which
// aborts the affected tasks at once (so no further Data-Out or responses
// are processed for them); the response goes out once they have stopped.
// What stays here is what only iSCSI knows: ABORT TASK for a command whose
// CmdSN has not arrived yet (RFC 7143 §11.5.1), task reassignment (an ERL
// 2 feature), and that a cold reset ends the target's other sessions.
func (c *conn) doTMF(h *bhs) {
	s := c.sess
	fn := scsi.TMF(h[1] & tmfFunctionMask)
	lun := scsi.DecodeLUN(h.lunBytes())
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
	req := scsi.TMFRequest{Function: fn, Nexus: s.nexus, LUN: lun}
	switch fn {
	case scsi.TMFAbortTask:
		t := s.lookup(rtt)
		if t == nil && s.tm.HasLUN(lun) {
			// Not here. If the command has not arrived yet (its CmdSN is
			// still ahead of us in the window), remember to drop it.
			exp, maxSN := s.cmdSNs()
			if snLE(exp, refCmdSN) && snLE(refCmdSN, maxSN) {
				s.mu.Lock()
				s.abortedSN[refCmdSN] = struct{}{}
				s.mu.Unlock()
				respond(tmfComplete, false)
				return
			}
		}
		if t != nil {
			req.Task = &t.st
		}
	case scsi.TMFAbortTaskSet, scsi.TMFClearTaskSet, scsi.TMFLogicalUnitReset,
		scsi.TMFTargetWarmReset, scsi.TMFTargetColdReset, scsi.TMFClearACA:
	case scsi.TMFTaskReassign:
		// Task reassignment needs ErrorRecoveryLevel 2.
		respond(tmfNoReassign, false)
		return
	default:
		c.log.Debug("iscsi: unknown task management function", "function", fmt.Sprint(int(fn)))
		respond(tmfNotSupported, false)
		return
	}
	// A cold reset ends every I_T nexus of the target: the other
	// sessions' connections drop once it is done, ours after the response.
	cold := fn == scsi.TMFTargetColdReset
	var others []*session
	if cold {
		others = c.srv.targetSessions(s.targetName)
	}
	r := s.tm.Manage(req)
	if !r.Pending() {
		code, _ := r.Wait(nil)
		respond(tmfCodes[code], false)
		return
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		code, ok := r.Wait(c.closed)
		if !ok {
			return
		}
		if cold {
			for _, ss := range others {
				if ss != s && ss.conn != nil {
					ss.conn.close(errors.New("target cold reset"))
				}
			}
		}
		respond(tmfCodes[code], cold)
	}()
}
