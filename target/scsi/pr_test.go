package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
)

func prOut(sa, typ byte, rk, sark uint64, aptpl bool) ([]byte, []byte) {
	c := cdb(opPROut, 10)
	c[1] = sa
	c[2] = typ
	binary.BigEndian.PutUint32(c[5:], proutBasicParamLength)
	pl := make([]byte, proutBasicParamLength)
	binary.BigEndian.PutUint64(pl, rk)
	binary.BigEndian.PutUint64(pl[8:], sark)
	if aptpl {
		pl[20] = 1
	}
	return c, pl
}

func prIn(sa byte) []byte {
	c := cdb(opPRIn, 10)
	c[1] = sa
	binary.BigEndian.PutUint16(c[7:], 4096)
	return c
}

func (f *fixture) prout(n *Nexus, sa, typ byte, rk, sark uint64) Result {
	c, pl := prOut(sa, typ, rk, sark, false)
	return f.exec(n, c, pl)
}

func expectConflict(t *testing.T, r Result) {
	t.Helper()
	if r.Status != StatusReservationConflict {
		t.Fatalf("status %#x, want RESERVATION CONFLICT", r.Status)
	}
}

func readKeys(t *testing.T, f *fixture, n *Nexus) (gen uint32, keys []uint64) {
	t.Helper()
	r := f.exec(n, prIn(prinReadKeys), nil)
	expectGood(t, r)
	gen = binary.BigEndian.Uint32(r.DataIn)
	l := int(binary.BigEndian.Uint32(r.DataIn[4:]))
	for p := r.DataIn[8 : 8+l]; len(p) >= 8; p = p[8:] {
		keys = append(keys, binary.BigEndian.Uint64(p))
	}
	return gen, keys
}

func TestPersistentReservationRegisterAndKeys(t *testing.T) {
	f := newFixture(t)
	expectGood(t, f.prout(f.n1, proutRegister, 0, 0, 0xa))
	// Registering again without the key conflicts.
	expectConflict(t, f.prout(f.n1, proutRegister, 0, 0, 0xb))
	expectGood(t, f.prout(f.n2, proutRegisterIgnore, 0, 0, 0xb))
	gen, keys := readKeys(t, f, f.n1)
	if gen != 2 || len(keys) != 2 || keys[0] != 0xa || keys[1] != 0xb {
		t.Fatalf("gen %d keys %x", gen, keys)
	}
	// Change key with the right one, then unregister.
	expectGood(t, f.prout(f.n1, proutRegister, 0, 0xa, 0xc))
	expectConflict(t, f.prout(f.n1, proutRegister, 0, 0xa, 0))
	expectGood(t, f.prout(f.n1, proutRegister, 0, 0xc, 0))
	if _, keys := readKeys(t, f, f.n2); len(keys) != 1 || keys[0] != 0xb {
		t.Fatalf("keys after unregister %x", keys)
	}
	// RESERVE(6) conflicts while registrations exist.
	expectConflict(t, f.run(cdb(opReserve6, 6), nil))
	// Report capabilities: no APTPL without a store.
	r := f.run(prIn(prinReportCaps), nil)
	expectGood(t, r)
	if binary.BigEndian.Uint16(r.DataIn) != 8 || r.DataIn[2]&1 != 0 || r.DataIn[4] != 0xea || r.DataIn[5] != 1 {
		t.Errorf("capabilities % x", r.DataIn)
	}
	c, pl := prOut(proutRegister, 0, 0, 0xd, true)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidFieldInParamList)
	// Bad parameter list length and service action.
	c, pl = prOut(proutRegister, 0, 0, 0xd, false)
	binary.BigEndian.PutUint32(c[5:], 20)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascParameterListLength)
	c, pl = prOut(proutRegisterAndMove, 0, 0, 0xd, false)
	expectSense(t, f.run(c, pl), SenseIllegalRequest, ascInvalidFieldInCDB)
	expectSense(t, f.run(prIn(0x1f), nil), SenseIllegalRequest, ascInvalidFieldInCDB)
}

func TestPersistentReservationAccess(t *testing.T) {
	for _, tc := range []struct {
		typ                          byte
		regRead, regWrite            bool
		unregRead, unregWrite, owner bool
	}{
		{prExclusiveAccess, false, false, false, false, true},
		{prWriteExclusive, true, false, true, false, true},
		{prExclusiveAccessRO, true, true, false, false, true},
		{prWriteExclusiveRO, true, true, true, false, true},
		{prExclusiveAccessAR, true, true, false, false, false},
		{prWriteExclusiveAR, true, true, true, false, false},
	} {
		f := newFixture(t)
		expectGood(t, f.prout(f.n1, proutRegisterIgnore, 0, 0, 1))
		expectGood(t, f.prout(f.n2, proutRegisterIgnore, 0, 0, 2))
		expectGood(t, f.prout(f.n1, proutReserve, tc.typ, 1, 0))
		// Reserving again with the same type is fine; another type is not.
		expectGood(t, f.prout(f.n1, proutReserve, tc.typ, 1, 0))
		r := f.run(prIn(prinReadReservation), nil)
		expectGood(t, r)
		wantKey := uint64(1)
		if !tc.owner {
			wantKey = 0
		}
		if binary.BigEndian.Uint32(r.DataIn[4:]) != 16 || binary.BigEndian.Uint64(r.DataIn[8:]) != wantKey || r.DataIn[21] != tc.typ {
			t.Fatalf("type %d: READ RESERVATION % x", tc.typ, r.DataIn)
		}
		check := func(who string, n *Nexus, read, write bool) {
			t.Helper()
			rr := f.exec(n, rw(opRead10, 10, 1, 1), nil)
			wr := f.exec(n, rw(opWrite10, 10, 1, 1), make([]byte, 512))
			if (rr.Status == StatusGood) != read || (wr.Status == StatusGood) != write {
				t.Errorf("type %d %s: read %#x write %#x, want read %v write %v", tc.typ, who, rr.Status, wr.Status, read, write)
			}
			if rr.Status != StatusGood && rr.Status != StatusReservationConflict {
				t.Errorf("type %d %s: read status %#x", tc.typ, who, rr.Status)
			}
			// INQUIRY and TEST UNIT READY never conflict.
			expectGood(t, f.exec(n, inquiryCDB(false, 0, 36), nil))
			expectGood(t, f.exec(n, cdb(opTestUnitReady, 6), nil))
		}
		check("holder", f.n1, true, true)
		check("registered", f.n2, tc.regRead, tc.regWrite)
		expectGood(t, f.prout(f.n2, proutRegister, 0, 2, 0))
		check("unregistered", f.n2, tc.unregRead, tc.unregWrite)
		// Release with the wrong type fails, with the right one works.
		other := byte(prWriteExclusive)
		if tc.typ == prWriteExclusive {
			other = prExclusiveAccess
		}
		expectSense(t, f.prout(f.n1, proutRelease, other, 1, 0), SenseIllegalRequest, ascInvalidPRRelease)
		expectGood(t, f.prout(f.n1, proutRelease, tc.typ, 1, 0))
		check("after release", f.n2, true, true)
	}
}

func TestPersistentReservationPreemptClear(t *testing.T) {
	f := newFixture(t)
	expectGood(t, f.prout(f.n1, proutRegisterIgnore, 0, 0, 1))
	expectGood(t, f.prout(f.n2, proutRegisterIgnore, 0, 0, 2))
	expectGood(t, f.prout(f.n1, proutReserve, prExclusiveAccess, 1, 0))
	expectConflict(t, f.prout(f.n2, proutReserve, prExclusiveAccess, 2, 0))
	// A registrant away while it is preempted hears about it on return.
	n3 := &Nexus{InitiatorPort: "iqn.i3,i,0x1", TargetPort: f.n1.TargetPort}
	f.clearUA(n3)
	expectGood(t, f.prout(n3, proutRegisterIgnore, 0, 0, 3))
	f.tgt.NexusLoss(n3)
	expectGood(t, f.prout(f.n2, proutPreempt, prExclusiveAccess, 2, 3))
	n3back := *n3
	expectSense(t, f.exec(&n3back, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascNexusLoss)
	expectSense(t, f.exec(&n3back, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascRegistrationsPre)
	// n2 preempts n1: n1 loses registration and reservation and hears
	// about it.
	expectGood(t, f.prout(f.n2, proutPreempt, prWriteExclusive, 2, 1))
	expectSense(t, f.run(cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascRegistrationsPre)
	if _, keys := readKeys(t, f, f.n2); len(keys) != 1 || keys[0] != 2 {
		t.Fatalf("keys after preempt %x", keys)
	}
	r := f.run(prIn(prinReadReservation), nil)
	if binary.BigEndian.Uint64(r.DataIn[8:]) != 2 || r.DataIn[21] != prWriteExclusive {
		t.Fatalf("reservation after preempt % x", r.DataIn)
	}
	expectConflict(t, f.run(rw(opWrite10, 10, 0, 1), make([]byte, 512)))
	// Preempting an unknown key conflicts; key 0 is invalid.
	expectConflict(t, f.prout(f.n2, proutPreempt, prWriteExclusive, 2, 99))
	expectSense(t, f.prout(f.n2, proutPreempt, prWriteExclusive, 2, 0), SenseIllegalRequest, ascInvalidFieldInParamList)
	// Full status lists the holder with its TransportID.
	r = f.run(prIn(prinReadFullStatus), nil)
	expectGood(t, r)
	d := r.DataIn[8:]
	if binary.BigEndian.Uint64(d) != 2 || d[12]&1 == 0 || d[24] != 0x45 {
		t.Errorf("full status % x", d)
	}
	// CLEAR drops everything; the others get RESERVATIONS PREEMPTED.
	expectGood(t, f.prout(f.n1, proutRegisterIgnore, 0, 0, 1))
	expectGood(t, f.prout(f.n2, proutClear, 0, 2, 0))
	expectSense(t, f.run(cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascReservationsPreem)
	if _, keys := readKeys(t, f, f.n1); len(keys) != 0 {
		t.Fatalf("keys after clear %x", keys)
	}
	expectGood(t, f.run(cdb(opReserve6, 6), nil))
	// Registrations survive nexus loss and resets.
	expectGood(t, f.run(cdb(opRelease6, 6), nil))
	expectGood(t, f.prout(f.n1, proutRegisterIgnore, 0, 0, 7))
	f.tgt.NexusLoss(f.n1)
	f.tgt.Reset(f.n2, TMFLogicalUnitReset, 0)
	f.clearUA(f.n2)
	if _, keys := readKeys(t, f, f.n2); len(keys) != 1 || keys[0] != 7 {
		t.Fatalf("keys after nexus loss %x", keys)
	}
}

func TestPersistentReservationAPTPL(t *testing.T) {
	var saved []PRState
	save := func(s PRState) error {
		saved = append(saved, s)
		if s.Generation == 99 {
			return errors.New("disk full")
		}
		return nil
	}
	vol := newMemVolume(64, 512)
	lu := NewLogicalUnit(vol, LUConfig{SavePR: save})
	tgt := NewTarget("t")
	tgt.AddLUN(0, lu)
	n := &Nexus{InitiatorPort: "iqn.x,i,0x1", TargetPort: "t,t,0x1"}
	ex := func(c, pl []byte) Result {
		return tgt.Execute(context.Background(), &Command{Nexus: n, CDB: c, DataOut: pl})
	}
	ex(cdb(opTestUnitReady, 6), nil)
	expectGood(t, ex(prOut(proutRegister, 0, 0, 5, false)))
	if len(saved) != 0 {
		t.Fatalf("saved without APTPL: %+v", saved)
	}
	expectGood(t, ex(prOut(proutRegister, 0, 5, 6, true)))
	expectGood(t, ex(prOut(proutReserve, prWriteExclusive, 6, 0, false)))
	if len(saved) != 2 || !saved[1].APTPL || saved[1].Holder != 0 || saved[1].Registrations[0].Key != 6 {
		t.Fatalf("saved %+v", saved)
	}
	// A restart restores it.
	lu2 := NewLogicalUnit(vol, LUConfig{PR: &saved[1], SavePR: save})
	tgt2 := NewTarget("t")
	tgt2.AddLUN(0, lu2)
	n2 := &Nexus{InitiatorPort: "iqn.y,i,0x1"}
	tgt2.Execute(context.Background(), &Command{Nexus: n2, CDB: cdb(opTestUnitReady, 6)})
	expectConflict(t, tgt2.Execute(context.Background(), &Command{Nexus: n2, CDB: rw(opWrite10, 10, 0, 1), DataOut: make([]byte, 512)}))
	if st := lu2.PRState(); st.Generation != saved[1].Generation || st.Type != prWriteExclusive {
		t.Fatalf("restored %+v", st)
	}
	// Turning APTPL off stores an empty state.
	expectGood(t, ex(prOut(proutRegister, 0, 6, 6, false)))
	if last := saved[len(saved)-1]; last.APTPL || len(last.Registrations) != 0 || last.Holder != -1 {
		t.Fatalf("after APTPL off %+v", last)
	}
}

// TestPreemptAndAbortTaskSets checks what PREEMPT AND ABORT asks the
// transport to abort: the task sets of every live nexus whose registration
// it removed, at each LUN through which that nexus's target maps the unit
// (here also a second target mapping it at LUN 5), not those of nexuses
// that kept their registration, and nothing for a plain PREEMPT.
func TestPreemptAndAbortTaskSets(t *testing.T) {
	f := newFixture(t)
	tgt2 := NewTarget("iqn.2026-11.io.anvil:other")
	if err := tgt2.AddLUN(5, f.lu); err != nil {
		t.Fatal(err)
	}
	n3 := &Nexus{InitiatorPort: "iqn.i3,i,0x1", TargetPort: f.n1.TargetPort}
	n4 := &Nexus{InitiatorPort: "iqn.i4,i,0x1", TargetPort: "iqn.2026-11.io.anvil:other,t,0x0001"}
	exec4 := func(c, out []byte) Result {
		return tgt2.Execute(context.Background(), &Command{Nexus: n4, LUN: 5, CDB: c, DataOut: out, ExpectedDataIn: 4096})
	}
	f.clearUA(n3)
	exec4(cdb(opTestUnitReady, 6), nil)
	expectGood(t, f.prout(f.n1, proutRegister, 0, 0, 0xa))
	expectGood(t, f.prout(f.n2, proutRegister, 0, 0, 0xb))
	expectGood(t, f.prout(n3, proutRegister, 0, 0, 0xc))
	c, pl := prOut(proutRegister, 0, 0, 0xb, false)
	expectGood(t, exec4(c, pl))
	expectGood(t, f.prout(f.n2, proutReserve, prWriteExclusive, 0xb, 0))

	has := func(sets []TaskSet, n *Nexus, lun uint64) bool {
		for _, s := range sets {
			if s.Nexus == n && s.LUN == lun {
				return true
			}
		}
		return false
	}
	r := f.prout(f.n1, proutPreemptAbort, prWriteExclusive, 0xa, 0xb)
	expectGood(t, r)
	if len(r.AbortTaskSets) != 2 || !has(r.AbortTaskSets, f.n2, 0) || !has(r.AbortTaskSets, n4, 5) {
		t.Fatalf("PREEMPT AND ABORT of key 0xb aborts %+v, want n2 at LUN 0 and n4 at LUN 5", r.AbortTaskSets)
	}
	// The preempted nexuses hear of it; the reservation moved to n1.
	expectSense(t, f.exec(f.n2, cdb(opTestUnitReady, 6), nil), SenseUnitAttention, ascRegistrationsPre)
	if _, keys := readKeys(t, f, f.n1); len(keys) != 2 {
		t.Fatalf("keys after preempt %x", keys)
	}

	// Preempting its own key to change the reservation type aborts the
	// requester's other tasks too (the transport spares the command).
	r = f.prout(f.n1, proutPreemptAbort, prExclusiveAccess, 0xa, 0xa)
	expectGood(t, r)
	if len(r.AbortTaskSets) != 1 || !has(r.AbortTaskSets, f.n1, 0) {
		t.Fatalf("self PREEMPT AND ABORT aborts %+v, want n1 at LUN 0", r.AbortTaskSets)
	}
	// Plain PREEMPT aborts nothing; a conflict aborts nothing.
	r = f.prout(f.n1, proutPreempt, prExclusiveAccess, 0xa, 0xc)
	expectGood(t, r)
	if len(r.AbortTaskSets) != 0 {
		t.Fatalf("PREEMPT aborts %+v", r.AbortTaskSets)
	}
	r = f.prout(f.n1, proutPreemptAbort, prExclusiveAccess, 0xa, 0xdd)
	expectConflict(t, r)
	if len(r.AbortTaskSets) != 0 {
		t.Fatalf("conflicting PREEMPT AND ABORT aborts %+v", r.AbortTaskSets)
	}
}
