package iscsi

import (
	"reflect"
	"testing"
)

// TestCmdSNSequencing drives the session's ordering logic directly: requests
// ahead of ExpCmdSN wait, gaps filling releases them in order, and CmdSNs
// outside [ExpCmdSN, MaxCmdSN] are dropped.
func TestCmdSNSequencing(t *testing.T) {
	srv := NewServer(Config{MaxQueuedCommands: 16}, nil)
	s := newSession(srv, nil, 0xfffffffe) // exercise wrap-around
	var order []uint32
	deliver := func(sn uint32, holds bool) func() error {
		return func() error {
			s.advance(holds)
			order = append(order, sn)
			return nil
		}
	}
	submit := func(sn uint32, holds bool) {
		if err := s.sequence(sn, false, deliver(sn, holds)); err != nil {
			t.Fatal(err)
		}
	}
	submit(0xffffffff, true)
	submit(0, true)
	if len(order) != 0 {
		t.Fatalf("delivered before the gap filled: %v", order)
	}
	submit(0xfffffffe, true)
	want := []uint32{0xfffffffe, 0xffffffff, 0}
	if !reflect.DeepEqual(order, want) {
		t.Fatalf("order %x, want %x", order, want)
	}
	exp, maxSN := s.cmdSNs()
	if exp != 1 || maxSN != exp+16-1-3 {
		t.Fatalf("ExpCmdSN %d MaxCmdSN %d with 3 in flight", exp, maxSN)
	}
	// Out of window: too high and too low are dropped.
	submit(maxSN+1, false)
	submit(exp-1, false)
	if len(order) != 3 || len(s.pending) != 0 {
		t.Fatalf("out-of-window request handled: %v pending %d", order, len(s.pending))
	}
	// Completing tasks opens the window again; it never shrinks.
	for i := 0; i < 3; i++ {
		s.release()
	}
	_, m2 := s.cmdSNs()
	if m2 != exp+16-1 {
		t.Fatalf("MaxCmdSN %d after release, want %d", m2, exp+15)
	}
	// Immediate requests run at once and consume nothing.
	ran := false
	s.sequence(12345, true, func() error { ran = true; return nil })
	if e, _ := s.cmdSNs(); !ran || e != exp {
		t.Fatalf("immediate: ran %v ExpCmdSN %d", ran, e)
	}
}
