package scsi

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Persistent reservations (SPC-4 5.12, PERSISTENT RESERVE IN 6.15, PERSISTENT
// RESERVE OUT 6.16).

const (
	opPRIn  byte = 0x5e
	opPROut byte = 0x5f

	prinReadKeys          = 0x00
	prinReadReservation   = 0x01
	prinReportCaps        = 0x02
	prinReadFullStatus    = 0x03
	proutRegister         = 0x00
	proutReserve          = 0x01
	proutRelease          = 0x02
	proutClear            = 0x03
	proutPreempt          = 0x04
	proutPreemptAbort     = 0x05
	proutRegisterIgnore   = 0x06
	proutRegisterAndMove  = 0x07
	proutBasicParamLength = 24

	// Persistent reservation types.
	prWriteExclusive     = 0x1
	prExclusiveAccess    = 0x3
	prWriteExclusiveRO   = 0x5
	prExclusiveAccessRO  = 0x6
	prWriteExclusiveAR   = 0x7
	prExclusiveAccessAR  = 0x8
	ascReservationsPreem = 0x2a03
	ascReservationsRel   = 0x2a04
	ascRegistrationsPre  = 0x2a05
	ascInvalidPRRelease  = 0x2604
)

// PRRegistration is one registered I_T nexus and its reservation key.
type PRRegistration struct {
	// InitiatorPort and TargetPort name the I_T nexus (Nexus fields of the
	// same names).
	InitiatorPort string `json:"initiator_port"`
	TargetPort    string `json:"target_port"`
	// RelativeTargetPortID is reported by READ FULL STATUS.
	RelativeTargetPortID uint16 `json:"relative_target_port_id"`
	// Key is the reservation key.
	Key uint64 `json:"key"`
}

// PRState is a logical unit's persistent reservation state, in the form the
// catalog stores when the initiator asked for persistence (APTPL).
type PRState struct {
	// Generation is the PRGENERATION counter.
	Generation uint32 `json:"generation"`
	// APTPL is set when the state must survive a power loss.
	APTPL bool `json:"aptpl"`
	// Registrations lists the registered I_T nexuses.
	Registrations []PRRegistration `json:"registrations,omitempty"`
	// Holder indexes Registrations for the reservation holder; -1 when the
	// unit is not reserved. For the all-registrants types every
	// registrant holds the reservation and Holder is any one of them.
	Holder int `json:"holder"`
	// Type is the reservation type (SPC-4 table 173) when reserved.
	Type uint8 `json:"type,omitempty"`
}

// prState is the live persistent reservation state of one logical unit.
type prState struct {
	mu    sync.Mutex
	gen   uint32
	aptpl bool
	regs  []PRRegistration // in registration order
	// holder is the index in regs of the reservation holder, -1 if none.
	holder int
	typ    uint8
	// active mirrors len(regs) > 0 so that the I/O path can skip the lock.
	active atomic.Bool
}

func nexusID(n *Nexus) (string, string) { return n.InitiatorPort, n.TargetPort }

func (p *prState) find(n *Nexus) int {
	ip, tp := nexusID(n)
	for i, r := range p.regs {
		if r.InitiatorPort == ip && r.TargetPort == tp {
			return i
		}
	}
	return -1
}

func allRegistrants(t uint8) bool { return t == prWriteExclusiveAR || t == prExclusiveAccessAR }

func (p *prState) reserved() bool { return p.holder >= 0 }

// isHolder reports whether registration i holds the reservation.
func (p *prState) isHolder(i int) bool {
	if i < 0 || !p.reserved() {
		return false
	}
	return allRegistrants(p.typ) || i == p.holder
}

// remove drops registration i, keeping holder pointing at the right entry.
// It returns true when the reservation went away with it.
func (p *prState) remove(i int) (released bool) {
	p.regs = slices.Delete(p.regs, i, i+1)
	switch {
	case !p.reserved():
	case allRegistrants(p.typ):
		if len(p.regs) == 0 {
			p.holder, released = -1, true
		} else {
			p.holder = 0
		}
	case p.holder == i:
		p.holder, released = -1, true
	case p.holder > i:
		p.holder--
	}
	p.active.Store(len(p.regs) > 0)
	return released
}

func (p *prState) snapshot() PRState {
	return PRState{Generation: p.gen, APTPL: p.aptpl, Registrations: slices.Clone(p.regs), Holder: p.holder, Type: p.typ}
}

// restore loads a saved state (APTPL) into the unit.
func (p *prState) restore(s *PRState) {
	p.holder = -1
	if s == nil {
		return
	}
	p.gen, p.aptpl, p.regs = s.Generation, s.APTPL, slices.Clone(s.Registrations)
	if s.Holder >= 0 && s.Holder < len(p.regs) {
		p.holder, p.typ = s.Holder, s.Type
	}
	p.active.Store(len(p.regs) > 0)
}

// PRState returns a copy of the unit's persistent reservation state.
func (lu *LogicalUnit) PRState() PRState {
	lu.pr.mu.Lock()
	defer lu.pr.mu.Unlock()
	return lu.pr.snapshot()
}

// uaForRegistrant queues asc for the nexus registered as r: the live one,
// or, if it is away, for when it comes back.
func (lu *LogicalUnit) uaForRegistrant(r PRRegistration, asc uint16) {
	found := false
	lu.nexuses.Range(func(k, v any) bool {
		n := k.(*Nexus)
		if n.InitiatorPort == r.InitiatorPort && n.TargetPort == r.TargetPort {
			v.(*itNexusState).add(asc)
			found = true
		}
		return true
	})
	if !found {
		lu.queueForLost(r.InitiatorPort+"\x00"+r.TargetPort, asc)
	}
}

// Access classes for the persistent reservation conflict check.
type prAccess uint8

const (
	prWrite   prAccess = iota // changes the medium or device state (the default)
	prRead                    // reads the medium or its metadata
	prAllowed                 // never conflicts (INQUIRY, TUR, ...)
)

// prConflict reports whether a command of class acc from n conflicts with
// the persistent reservation (SPC-4 table 69).
func (lu *LogicalUnit) prConflict(n *Nexus, acc prAccess) bool {
	p := &lu.pr
	if !p.active.Load() || acc == prAllowed {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reserved() {
		return false
	}
	i := p.find(n)
	if p.isHolder(i) {
		return false
	}
	registered := i >= 0
	switch p.typ {
	case prWriteExclusive:
		return acc == prWrite
	case prExclusiveAccess:
		return true
	case prWriteExclusiveRO, prWriteExclusiveAR:
		return acc == prWrite && !registered
	case prExclusiveAccessRO, prExclusiveAccessAR:
		return !registered
	}
	return false
}

// persistentReserveIn handles PERSISTENT RESERVE IN.
func (x *task) persistentReserveIn() error {
	p := &x.lu.pr
	sa := x.cdb[1] & 0x1f
	alloc := int(binary.BigEndian.Uint16(x.cdb[7:]))
	p.mu.Lock()
	defer p.mu.Unlock()
	var b []byte
	switch sa {
	case prinReadKeys:
		b = make([]byte, 8, 8+8*len(p.regs))
		for _, r := range p.regs {
			b = binary.BigEndian.AppendUint64(b, r.Key)
		}
	case prinReadReservation:
		b = make([]byte, 8)
		if p.reserved() {
			d := make([]byte, 16)
			if !allRegistrants(p.typ) {
				binary.BigEndian.PutUint64(d, p.regs[p.holder].Key)
			}
			d[13] = p.typ // SCOPE 0 (LU) | TYPE
			b = append(b, d...)
		}
	case prinReportCaps:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b, 8)
		if x.lu.cfg.SavePR != nil {
			b[2] |= 0x01 // PTPL_C
		}
		b[3] = 0x80 // TMV: the type mask is valid
		if p.aptpl {
			b[3] |= 0x01 // PTPL_A
		}
		b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		b[5] = 0x01                             // EX_AC_AR
		return x.dataIn(b, alloc)
	case prinReadFullStatus:
		b = make([]byte, 8)
		for i, r := range p.regs {
			tid := transportID(r.InitiatorPort)
			d := make([]byte, 24, 24+len(tid))
			binary.BigEndian.PutUint64(d, r.Key)
			if p.isHolder(i) {
				d[12] = 0x01 // R_HOLDER
				d[13] = p.typ
			}
			binary.BigEndian.PutUint16(d[18:], r.RelativeTargetPortID)
			binary.BigEndian.PutUint32(d[20:], uint32(len(tid)))
			b = append(b, append(d, tid...)...)
		}
	default:
		return invalidCDB(1, 4)
	}
	binary.BigEndian.PutUint32(b, p.gen)
	binary.BigEndian.PutUint32(b[4:], uint32(len(b)-8))
	return x.dataIn(b, alloc)
}

// transportID encodes an iSCSI initiator port as a TransportID (SPC-4
// 7.6.4.6, format 01b: name with ",i,0x" ISID).
func transportID(port string) []byte {
	n := len(port) + 1
	n = max((n+3)&^3, 16)
	b := make([]byte, 4+n)
	b[0] = 0x40 | 0x05 // FORMAT CODE 01b, PROTOCOL IDENTIFIER iSCSI
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	copy(b[4:], port)
	return b
}

// persistentReserveOut handles PERSISTENT RESERVE OUT with the basic
// parameter list. SPEC_I_PT, ALL_TG_PT and REGISTER AND MOVE are not
// supported. PREEMPT AND ABORT preempts and hands the preempted nexuses'
// task sets to the transport to abort (Result.AbortTaskSets).
func (x *task) persistentReserveOut() error {
	lu := x.lu
	p := &lu.pr
	sa := x.cdb[1] & 0x1f
	scope, typ := x.cdb[2]>>4, x.cdb[2]&0x0f
	pll := int(binary.BigEndian.Uint32(x.cdb[5:]))
	x.res.TransferLength = pll
	if sa > proutRegisterIgnore {
		return invalidCDB(1, 4)
	}
	if pll != proutBasicParamLength {
		return errParamLength
	}
	if len(x.cmd.DataOut) < pll {
		return errParamLength
	}
	pl := x.cmd.DataOut[:pll]
	rk := binary.BigEndian.Uint64(pl)
	sark := binary.BigEndian.Uint64(pl[8:])
	if pl[20]&0x08 != 0 {
		return invalidParam(20, 3) // SPEC_I_PT
	}
	if pl[20]&0x04 != 0 {
		return invalidParam(20, 2) // ALL_TG_PT
	}
	aptpl := pl[20]&0x01 != 0
	if aptpl && lu.cfg.SavePR == nil {
		return invalidParam(20, 0)
	}
	needType := sa == proutReserve || sa == proutRelease || sa == proutPreempt || sa == proutPreemptAbort
	if needType {
		if scope != 0 {
			return invalidCDB(2, 7)
		}
		switch typ {
		case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRO, prExclusiveAccessRO, prWriteExclusiveAR, prExclusiveAccessAR:
		default:
			return invalidCDB(2, 3)
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	wasAPTPL := p.aptpl
	me := p.find(x.n)
	conflict := func() error {
		x.res.Status = StatusReservationConflict
		return nil
	}
	changed := false
	switch sa {
	case proutRegister, proutRegisterIgnore:
		if me < 0 {
			if sa == proutRegister && rk != 0 {
				return conflict()
			}
			if sark == 0 {
				return nil
			}
			ip, tp := nexusID(x.n)
			p.regs = append(p.regs, PRRegistration{InitiatorPort: ip, TargetPort: tp, RelativeTargetPortID: x.n.RelativeTargetPortID, Key: sark})
			p.active.Store(true)
		} else {
			if sa == proutRegister && rk != p.regs[me].Key {
				return conflict()
			}
			if sark == 0 {
				typ := p.typ
				if p.remove(me) && (typ == prWriteExclusiveRO || typ == prExclusiveAccessRO) {
					for _, r := range p.regs {
						lu.uaForRegistrant(r, ascReservationsRel)
					}
				}
			} else {
				p.regs[me].Key = sark
			}
		}
		p.gen++
		p.aptpl = aptpl
		changed = true
	case proutReserve:
		if me < 0 || rk != p.regs[me].Key {
			return conflict()
		}
		if p.reserved() {
			if !p.isHolder(me) || p.typ != typ {
				return conflict()
			}
			return nil
		}
		p.holder, p.typ = me, typ
		changed = true
	case proutRelease:
		if me < 0 || rk != p.regs[me].Key {
			return conflict()
		}
		if !p.isHolder(me) {
			return nil
		}
		if p.typ != typ {
			return newCC(SenseIllegalRequest, ascInvalidPRRelease)
		}
		old := p.typ
		p.holder, p.typ = -1, 0
		if old != prWriteExclusive && old != prExclusiveAccess {
			for i, r := range p.regs {
				if i != me {
					lu.uaForRegistrant(r, ascReservationsRel)
				}
			}
		}
		changed = true
	case proutClear:
		if me < 0 || rk != p.regs[me].Key {
			return conflict()
		}
		for i, r := range p.regs {
			if i != me {
				lu.uaForRegistrant(r, ascReservationsPreem)
			}
		}
		p.regs, p.holder, p.typ = nil, -1, 0
		p.active.Store(false)
		p.gen++
		changed = true
	case proutPreempt, proutPreemptAbort:
		if me < 0 || rk != p.regs[me].Key {
			return conflict()
		}
		preempted, err := x.preempt(me, sark, typ)
		if err != nil {
			return err
		}
		if x.res.Status == StatusReservationConflict {
			return nil
		}
		if sa == proutPreemptAbort {
			// A requester that preempts its own key (to change the
			// reservation type) loses its other tasks too; only this
			// command is spared, which the transport sees to.
			x.res.AbortTaskSets = lu.taskSets(preempted, rk == sark, x.n)
		}
		p.gen++
		changed = true
	}
	if changed && (p.aptpl || wasAPTPL) && lu.cfg.SavePR != nil {
		st := p.snapshot()
		if !p.aptpl {
			// Persistence switched off: what is stored must not come back
			// after a restart.
			st = PRState{Holder: -1}
		}
		if err := lu.cfg.SavePR(st); err != nil {
			lu.log.Error("scsi: saving persistent reservations failed", "err", err)
			return fmt.Errorf("save persistent reservations: %w", err)
		}
	}
	return nil
}

// preempt implements PREEMPT (SPC-4 5.12.11.4) and returns the
// registrations it removed. The caller holds p.mu and has checked that the
// requester (registration me) gave its key.
func (x *task) preempt(me int, sark uint64, typ uint8) (preempted []PRRegistration, err error) {
	lu := x.lu
	p := &lu.pr
	// removeKey drops every other registration holding key k (or all
	// others when all is set) and tells their nexuses.
	removeKey := func(k uint64, all bool) int {
		removed := 0
		for i := len(p.regs) - 1; i >= 0; i-- {
			r := p.regs[i]
			if i == me || (!all && r.Key != k) {
				continue
			}
			p.remove(i)
			if i < me {
				me--
			}
			lu.uaForRegistrant(r, ascRegistrationsPre)
			preempted = append(preempted, r)
			removed++
		}
		return removed
	}
	switch {
	case !p.reserved():
		if sark == 0 {
			return nil, invalidParam(8, -1)
		}
		if removeKey(sark, false) == 0 {
			x.res.Status = StatusReservationConflict
		}
	case allRegistrants(p.typ):
		if sark != 0 {
			if removeKey(sark, false) == 0 {
				x.res.Status = StatusReservationConflict
			}
			return preempted, nil
		}
		removeKey(0, true)
		p.holder, p.typ = me, typ
	default:
		holderKey := p.regs[p.holder].Key
		if sark == 0 {
			return nil, invalidParam(8, -1)
		}
		if sark != holderKey {
			if removeKey(sark, false) == 0 {
				x.res.Status = StatusReservationConflict
			}
			return preempted, nil
		}
		oldType := p.typ
		removeKey(sark, false)
		// The preempter takes the reservation (its own registration may
		// have carried the holder's key too and survives).
		p.holder, p.typ = me, typ
		if oldType != typ {
			for i, r := range p.regs {
				if i != me {
					lu.uaForRegistrant(r, ascReservationsRel)
				}
			}
		}
	}
	return preempted, nil
}

// taskSets returns the task sets at this unit of the live I_T nexuses
// registered as regs, and of self too when withSelf is set: one per LUN
// at which the nexus's target maps the unit.
func (lu *LogicalUnit) taskSets(regs []PRRegistration, withSelf bool, self *Nexus) []TaskSet {
	var out []TaskSet
	lu.nexuses.Range(func(k, v any) bool {
		n, st := k.(*Nexus), v.(*itNexusState)
		hit := withSelf && n == self
		for _, r := range regs {
			hit = hit || (r.InitiatorPort == n.InitiatorPort && r.TargetPort == n.TargetPort)
		}
		if !hit || st.tgt == nil {
			return true
		}
		for lun, m := range *st.tgt.luns.Load() {
			if m == lu {
				out = append(out, TaskSet{Nexus: n, LUN: lun, tm: st.tgt.tasks})
			}
		}
		return true
	})
	return out
}
