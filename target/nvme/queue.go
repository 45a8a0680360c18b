package nvme

import (
	"context"
	"runtime/debug"
	"time"
)

// disconnectGrace is how long a queue that completed Disconnect waits for
// the host to close the connection before Done closes it from our side;
// closing at once could drop the Disconnect completion.
const disconnectGrace = time.Second

// Execute runs one command on the queue and returns its completion and,
// for commands that return data, the controller-to-host data. It may block
// (I/O, AERs waiting for an event). ctx is cancelled when the connection
// dies; the queue's own teardown cancels it too. Fused halves go to
// ExecuteFused.
func (q *Queue) Execute(ctx context.Context, cmd *Command) (c Completion, data []byte) {
	ctrl := q.ctrl
	defer func() {
		if r := recover(); r != nil {
			ctrl.t.stats.panics.Add(1)
			ctrl.log.Error("nvme: panic executing command", "panic", r, "qid", q.id,
				"opcode", cmd.Opcode(), "stack", string(debug.Stack()))
			c, data = Completion{Status: StatusInternal}, nil
		}
		if !c.Status.OK() {
			ctrl.t.countError(c.Status)
			if c.Status.SCT() != SCTGeneric || (c.Status.SC() != StatusAbortSQDeleted.SC() && c.Status.SC() != StatusAbortRequested.SC()) {
				ctrl.recordError(q.id, cmd, c.Status)
			}
		}
	}()
	ctrl.touch()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(q.ctx, cancel)
	defer stop()

	if cmd.Opcode() == OpFabrics {
		ctrl.t.stats.fabrics.Add(1)
		return q.fabrics(ctx, cmd), nil
	}
	if q.disconnected.Load() {
		return Completion{Status: StatusCommandSequence.WithDNR()}, nil
	}
	if !ctrl.ready() {
		return Completion{Status: StatusCommandSequence.WithDNR()}, nil
	}
	if q.id == 0 {
		ctrl.t.stats.admin.Add(1)
		if cmd.Fuse() != FuseNone {
			return Completion{Status: StatusInvalidField.WithDNR()}, nil
		}
		return ctrl.admin(ctx, cmd)
	}
	ctrl.t.stats.io.Add(1)
	if cmd.Fuse() != FuseNone {
		// A fused half alone: the transport sends pairs to ExecuteFused.
		return Completion{Status: StatusAbortMissingFused}, nil
	}
	return q.io(ctx, cmd)
}

// io runs an NVM command set command on its namespace.
func (q *Queue) io(ctx context.Context, cmd *Command) (Completion, []byte) {
	sub := q.ctrl.sub
	nsid := cmd.NSID()
	if nsid == 0xffffffff && cmd.Opcode() == OpFlush {
		// Flush of all namespaces.
		if err := sub.flushAll(ctx); err != nil {
			q.ctrl.log.Error("nvme: flush all namespaces", "err", err)
			return Completion{Status: StatusWriteFault}, nil
		}
		return Completion{}, nil
	}
	ns, release, ok := sub.acquire(nsid)
	if !ok {
		return Completion{Status: StatusInvalidNamespace.WithDNR()}, nil
	}
	defer release()
	switch cmd.Opcode() {
	case OpRead, OpWrite, OpCompare:
		// MDTS is the controller's promise to the host; enforce it here
		// so the namespace never sees a larger transfer.
		n := (uint64(cmd.CDW(12)&0xffff) + 1) * uint64(ns.Volume().BlockSize())
		if n > uint64(q.ctrl.t.maxTransfer()) {
			return Completion{Status: StatusInvalidField.WithDNR()}, nil
		}
	}
	return ns.execute(ctx, cmd)
}

// ExecuteFused runs a fused Compare (first) and Write (second) as one
// atomic operation and returns both completions; the data slice is the
// controller-to-host data, nil for this pair.
func (q *Queue) ExecuteFused(ctx context.Context, first, second *Command) (c1, c2 Completion, data []byte) {
	ctrl := q.ctrl
	defer func() {
		if r := recover(); r != nil {
			ctrl.t.stats.panics.Add(1)
			ctrl.log.Error("nvme: panic executing fused command", "panic", r, "stack", string(debug.Stack()))
			c1, c2, data = Completion{Status: StatusInternal}, Completion{Status: StatusAbortFailedFused}, nil
		}
		for i, c := range []Completion{c1, c2} {
			if !c.Status.OK() {
				ctrl.t.countError(c.Status)
				cmd := first
				if i == 1 {
					cmd = second
				}
				ctrl.recordError(q.id, cmd, c.Status)
			}
		}
	}()
	ctrl.touch()
	ctrl.t.stats.io.Add(2)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(q.ctx, cancel)
	defer stop()
	if q.id == 0 {
		return Completion{Status: StatusInvalidField.WithDNR()}, Completion{Status: StatusAbortFailedFused}, nil
	}
	if q.disconnected.Load() || !ctrl.ready() {
		s := StatusCommandSequence.WithDNR()
		return Completion{Status: s}, Completion{Status: s}, nil
	}
	if first.Fuse() != FuseFirst || second.Fuse() != FuseSecond ||
		first.Opcode() != OpCompare || second.Opcode() != OpWrite || first.NSID() != second.NSID() {
		return Completion{Status: StatusInvalidField.WithDNR()}, Completion{Status: StatusAbortFailedFused}, nil
	}
	ns, release, ok := ctrl.sub.acquire(first.NSID())
	if !ok {
		s := StatusInvalidNamespace.WithDNR()
		return Completion{Status: s}, Completion{Status: StatusAbortFailedFused}, nil
	}
	defer release()
	c1, c2 = ns.executeFused(ctx, first, second)
	return c1, c2, nil
}

// fabrics runs a Fabrics command on an established queue.
func (q *Queue) fabrics(ctx context.Context, cmd *Command) Completion {
	switch cmd.FCType() {
	case FabricsConnect:
		// The queue is connected already.
		return Completion{Status: StatusCommandSequence.WithDNR()}
	case FabricsDisconnect:
		if q.disconnected.Swap(true) {
			return Completion{Status: StatusCommandSequence.WithDNR()}
		}
		time.AfterFunc(disconnectGrace, q.Close)
		return Completion{}
	case FabricsPropertyGet:
		if q.id != 0 {
			return Completion{Status: StatusInvalidOpcode.WithDNR()}
		}
		return q.ctrl.propertyGet(cmd)
	case FabricsPropertySet:
		if q.id != 0 {
			return Completion{Status: StatusInvalidOpcode.WithDNR()}
		}
		return q.ctrl.propertySet(ctx, cmd)
	}
	return Completion{Status: StatusInvalidOpcode.WithDNR()}
}
