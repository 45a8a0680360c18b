package iscsi

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/scsi"
)

// preemptFake is a fakeTarget whose PERSISTENT RESERVE OUT answers, as the
// SCSI core does for PREEMPT AND ABORT, with the task sets to abort: those
// of the nexus whose WRITE is blocked, and of the requester itself.
type preemptFake struct {
	*fakeTarget
	victim         atomic.Pointer[scsi.Nexus]
	victimReturned atomic.Bool
}

func (p *preemptFake) Execute(ctx context.Context, cmd *scsi.Command) scsi.Result {
	switch cmd.CDB[0] {
	case 0x5f:
		return scsi.Result{Status: scsi.StatusGood, TransferLength: len(cmd.DataOut), AbortTaskSets: []scsi.TaskSet{
			{Nexus: p.victim.Load(), LUN: 0},
			{Nexus: cmd.Nexus, LUN: 0}, // self-preemption: the command itself must survive
		}}
	case 0x2a:
		p.victim.Store(cmd.Nexus)
		r := p.fakeTarget.Execute(ctx, cmd)
		p.victimReturned.Store(true)
		return r
	}
	return p.fakeTarget.Execute(ctx, cmd)
}

// TestPreemptAndAbortAbortsTasks blocks a WRITE on one session and sends
// PERSISTENT RESERVE OUT on another whose result names the first
// session's task set: the WRITE is aborted without a response, the PR OUT
// is answered only after the WRITE stopped, and both sessions keep
// working.
func TestPreemptAndAbortAbortsTasks(t *testing.T) {
	pf := &preemptFake{fakeTarget: newFakeTarget(testIQN)}
	pf.dev = pf
	pf.block = make(chan struct{})
	pf.started = make(chan struct{}, 4)
	ts := startServer(t, Config{NopInterval: -1}, pf)
	var once sync.Once
	unblock := func() { once.Do(func() { close(pf.block) }) }
	t.Cleanup(unblock)

	victim := dial(t, ts.addr)
	victim.login(testIQN, "ImmediateData=Yes")
	w := victim.scsiCmd(cdb10(0x2a, 0, 1), false, true, true, 512)
	victim.send(w, nil, make([]byte, 512))
	select {
	case <-pf.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the WRITE never started")
	}

	pre := dial(t, ts.addr)
	pre.ISID[5] = 2
	pre.login(testIQN, "ImmediateData=Yes")
	c := make([]byte, 10)
	c[0], c[1], c[2], c[8] = 0x5f, 0x05, 0x01, 24 // PREEMPT AND ABORT, WRITE EXCLUSIVE
	h := pre.scsiCmd(c, false, true, true, 24)
	pre.send(h, nil, make([]byte, 24))
	done := make(chan *response, 1)
	go func() { done <- pre.readResponse(h.itt()) }()
	select {
	case r := <-done:
		if r.status != 0 {
			t.Fatalf("PR OUT status %#x", r.status)
		}
	case <-time.After(5 * time.Second):
		unblock()
		t.Fatal("PR OUT never answered")
	}
	if !pf.victimReturned.Load() {
		unblock()
		t.Fatal("PR OUT answered while the preempted WRITE was still running")
	}
	// No response for the aborted WRITE ever comes; the session goes on.
	if p, err := victim.tryRecv(200 * time.Millisecond); err == nil {
		t.Fatalf("aborted WRITE answered: opcode %#x", p.hdr.opcode())
	}
	for _, cl := range []*client{victim, pre} {
		tur := cl.scsiCmd(make([]byte, 6), false, false, true, 0)
		cl.send(tur, nil, nil)
		if r := cl.readResponse(tur.itt()); r.status != 0 {
			t.Fatalf("TEST UNIT READY after PREEMPT AND ABORT: status %#x", r.status)
		}
	}
}
