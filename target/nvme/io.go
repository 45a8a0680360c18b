package nvme

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/internal/rangelock"
)

// maxIOTransfer bounds the data of one Read, Write or Compare the namespace
// takes, whatever the command says. The controller refuses transfers larger
// than MDTS before they get here; this guard keeps a controller bug or a
// hostile NLB from making the namespace allocate 256 MiB for one read. The
// core's MDTS must not exceed it.
const maxIOTransfer = 32 << 20

// zeroChunk bounds one engine call of Write Zeroes and deallocation on an
// engine that names no MaxUnmap, so that a large request notices an abort
// between pieces.
const zeroChunk = 1 << 20

// Command dword 12 bits of Read, Write, Compare and Write Zeroes.
const (
	cdw12NLB  = 0xffff  // number of logical blocks, 0's based
	cdw12DEAC = 1 << 25 // Write Zeroes: deallocate
	cdw12FUA  = 1 << 30 // force unit access
	cdw12LR   = 1 << 31 // limited retry
)

// Dataset Management CDW11 attributes.
const (
	dsmIDR = 1 << 0 // integral dataset for read
	dsmIDW = 1 << 1 // integral dataset for write
	dsmAD  = 1 << 2 // deallocate
)

// ioRange is a command's starting LBA and block count.
type ioRange struct {
	slba, nlb uint64
}

// rwRange decodes SLBA (CDW10, CDW11) and NLB (CDW12 bits 15:0, 0's based)
// of a Read, Write, Compare or Write Zeroes command.
func rwRange(cmd *Command) ioRange {
	return ioRange{
		slba: uint64(cmd.CDW(11))<<32 | uint64(cmd.CDW(10)),
		nlb:  uint64(cmd.CDW(12)&cdw12NLB) + 1,
	}
}

// checkRange reports LBA Out of Range when r reaches past the namespace's
// end; the command fails the same way if retried.
func (n *Namespace) checkRange(r ioRange) Status {
	blocks := uint64(n.vol.Size() / int64(n.vol.BlockSize()))
	if r.slba > blocks || r.nlb > blocks-r.slba {
		return StatusLBAOutOfRange.WithDNR()
	}
	return StatusSuccess
}

// checkWritable is the status of a command that would modify a read-only
// volume: Capacity Exceeded when a commit that ran out of space froze it,
// so the host can tell a full thin pool from an operator's write protect,
// Namespace Write Protected otherwise.
func (n *Namespace) checkWritable() Status {
	if !n.vol.ReadOnly() {
		return StatusSuccess
	}
	if err := engine.FrozenErr(n.vol); err != nil && engine.IsNoSpace(err) {
		return StatusCapacityExceeded.WithDNR()
	}
	return StatusNSWriteProtected.WithDNR()
}

// checkLength is the status of a command whose data buffer does not hold
// exactly the blocks it names: Data SGL Length Invalid, as the controller
// advertises no support for SGLs longer than the transfer (SGLS bit 16).
func (n *Namespace) checkLength(r ioRange, have uint64) Status {
	want := r.nlb * uint64(n.vol.BlockSize())
	if want > maxIOTransfer {
		return StatusInvalidField.WithDNR()
	}
	if have != want {
		return StatusDataSGLLength.WithDNR()
	}
	return StatusSuccess
}

// ioStatus maps an engine error of a command to its status. read says the
// command only read the medium, so that a backing-store failure is an
// unrecovered read error rather than a write fault.
func (n *Namespace) ioStatus(cmd *Command, err error, read bool) Status {
	switch {
	case err == nil:
		return StatusSuccess
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The connection (and with it the submission queue) is gone.
		return StatusAbortSQDeleted
	case engine.IsNoSpace(err):
		// A thin volume's file system is full: not a medium fault, and
		// retrying will not help until an operator frees space.
		return StatusCapacityExceeded.WithDNR()
	case errors.Is(err, engine.ErrReadOnly), errors.Is(err, engine.ErrDegraded) && !read:
		if st := n.checkWritable(); !st.OK() {
			return st
		}
		return StatusNSWriteProtected.WithDNR()
	case errors.Is(err, engine.ErrOutOfRange):
		// The volume shrank between the range check and the call.
		return StatusLBAOutOfRange.WithDNR()
	case errors.Is(err, engine.ErrClosed):
		// The volume is going away (namespace removal, shutdown): the
		// host's retry finds the namespace gone or back.
		return StatusNamespaceNotReady
	}
	if !errors.Is(err, engine.ErrMedium) {
		n.log.Warn("nvme: I/O command failed", "opcode", fmt.Sprintf("%#02x", cmd.Opcode()), "cid", cmd.CID(), "err", err)
	}
	if read {
		return StatusUnrecoveredRead
	}
	return StatusWriteFault
}

// execute runs one NVM command set command on the namespace and returns its
// completion and, for Read, the data for the host. Flush with the
// broadcast NSID (FFFFFFFFh) is the controller's: it calls execute of every
// namespace. A fused half arriving here lost its partner; the controller
// pairs halves and calls executeFused.
func (n *Namespace) execute(ctx context.Context, cmd *Command) (Completion, []byte) {
	switch cmd.Fuse() {
	case FuseNone:
	case FuseFirst, FuseSecond:
		return Completion{Status: StatusAbortMissingFused}, nil
	default:
		return Completion{Status: StatusInvalidField.WithDNR()}, nil
	}
	if err := ctx.Err(); err != nil {
		return Completion{Status: StatusAbortSQDeleted}, nil
	}
	switch cmd.Opcode() {
	case OpRead:
		return n.read(ctx, cmd)
	case OpWrite:
		return Completion{Status: n.write(ctx, cmd)}, nil
	case OpFlush:
		return Completion{Status: n.flush(ctx, cmd)}, nil
	case OpWriteZeroes:
		return Completion{Status: n.writeZeroes(ctx, cmd)}, nil
	case OpDatasetMgmt:
		return Completion{Status: n.datasetMgmt(ctx, cmd)}, nil
	case OpCompare:
		return Completion{Status: n.compare(ctx, cmd)}, nil
	}
	return Completion{Status: StatusInvalidOpcode.WithDNR()}, nil
}

// read handles Read. FUA asks for data from non-volatile media, which is
// what the engine returns anyway (the cache holds nothing the medium would
// not); limited retry changes nothing either.
func (n *Namespace) read(ctx context.Context, cmd *Command) (Completion, []byte) {
	r := rwRange(cmd)
	if st := n.checkRange(r); !st.OK() {
		return Completion{Status: st}, nil
	}
	if st := n.checkLength(r, uint64(cmd.DataLength())); !st.OK() {
		return Completion{Status: st}, nil
	}
	bs := int64(n.vol.BlockSize())
	buf := make([]byte, int64(r.nlb)*bs)
	if err := n.vol.ReadAt(ctx, buf, int64(r.slba)*bs); err != nil {
		return Completion{Status: n.ioStatus(cmd, fmt.Errorf("read %d blocks at LBA %d: %w", r.nlb, r.slba, err), true)}, nil
	}
	n.st.readCmds.Add(1)
	n.st.units512Read.Add(uint64(len(buf)) / 512)
	return Completion{}, buf
}

// checkWrite validates a Write: range, write protection, data length.
func (n *Namespace) checkWrite(cmd *Command) (ioRange, Status) {
	r := rwRange(cmd)
	if st := n.checkRange(r); !st.OK() {
		return r, st
	}
	if st := n.checkLength(r, uint64(len(cmd.Data))); !st.OK() {
		return r, st
	}
	return r, n.checkWritable()
}

// write handles Write: one engine call, so that a write of up to NAWUPF
// blocks is all-or-nothing, holding its blocks shared against
// compare-and-write from either front end.
func (n *Namespace) write(ctx context.Context, cmd *Command) Status {
	r, st := n.checkWrite(cmd)
	if !st.OK() {
		return st
	}
	h := n.lockBlocks(r, false)
	err := n.vol.WriteAt(ctx, cmd.Data, int64(r.slba)*int64(n.vol.BlockSize()), cmd.CDW(12)&cdw12FUA != 0)
	h.Unlock()
	if err != nil {
		return n.ioStatus(cmd, fmt.Errorf("write %d blocks at LBA %d: %w", r.nlb, r.slba, err), false)
	}
	n.st.writeCmds.Add(1)
	n.st.units512Written.Add(uint64(len(cmd.Data)) / 512)
	return StatusSuccess
}

// flush handles Flush: every write completed before it becomes durable.
func (n *Namespace) flush(ctx context.Context, cmd *Command) Status {
	if err := n.vol.Flush(ctx); err != nil {
		return n.ioStatus(cmd, fmt.Errorf("flush: %w", err), false)
	}
	return StatusSuccess
}

// writeZeroes handles Write Zeroes. DEAC lets the engine deallocate (a thin
// volume punches a hole), which reads back as zeroes just the same (DLFEAT).
// The engine's WriteZeroes has no FUA of its own, so FUA is a Flush after
// it.
func (n *Namespace) writeZeroes(ctx context.Context, cmd *Command) Status {
	r := rwRange(cmd)
	if st := n.checkRange(r); !st.OK() {
		return st
	}
	if st := n.checkWritable(); !st.OK() {
		return st
	}
	cdw12 := cmd.CDW(12)
	h := n.lockBlocks(r, false)
	err := n.zeroRange(ctx, r, cdw12&cdw12DEAC != 0, false)
	h.Unlock()
	if err == nil && cdw12&cdw12FUA != 0 {
		err = n.vol.Flush(ctx)
	}
	if err != nil {
		return n.ioStatus(cmd, fmt.Errorf("write zeroes %d blocks at LBA %d: %w", r.nlb, r.slba, err), false)
	}
	n.st.writeCmds.Add(1)
	return StatusSuccess
}

// lockBlocks locks r's blocks of the volume.
func (n *Namespace) lockBlocks(r ioRange, excl bool) rangelock.Held {
	bs := uint64(n.vol.BlockSize())
	return n.locks.Lock(int64(r.slba*bs), int64(r.nlb*bs), excl)
}

// zeroRange zeroes (dealloc: may deallocate) or, with only, deallocates r
// in pieces no larger than the engine's MaxUnmap, checking for an abort
// between them.
func (n *Namespace) zeroRange(ctx context.Context, r ioRange, dealloc, only bool) error {
	bs := uint64(n.vol.BlockSize())
	step := uint64(n.vol.Limits().MaxUnmap) / bs
	if step == 0 {
		step = zeroChunk / bs
	}
	for lba, left := r.slba, r.nlb; left > 0; {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(left, step)
		var err error
		if only {
			err = n.vol.Unmap(ctx, int64(lba*bs), int64(c*bs))
		} else {
			err = n.vol.WriteZeroes(ctx, int64(lba*bs), int64(c*bs), dealloc)
		}
		if err != nil {
			return err
		}
		lba, left = lba+c, left-c
	}
	return nil
}

// datasetMgmt handles Dataset Management. Only the Deallocate attribute
// does anything: it unmaps every range. The integral-dataset hints and the
// per-range context attributes describe access patterns the engine has no
// use for. A volume that cannot deallocate (no MaxUnmap) ignores it too,
// as the specification lets it: writing zeroes instead would make a host's
// whole-device discard (mkfs) rewrite the device.
func (n *Namespace) datasetMgmt(ctx context.Context, cmd *Command) Status {
	nr := int(cmd.CDW(10)&0xff) + 1
	if len(cmd.Data) < nr*16 {
		// Longer is fine: the ranges are the first NR+1 entries of
		// the buffer (Linux nvmet takes that too).
		return StatusDataSGLLength.WithDNR()
	}
	if cmd.CDW(11)&dsmAD == 0 {
		return StatusSuccess
	}
	if st := n.checkWritable(); !st.OK() {
		return st
	}
	ranges := make([]ioRange, 0, nr)
	// Validate every range before deallocating anything.
	for i := range nr {
		d := cmd.Data[i*16:]
		r := ioRange{nlb: uint64(binary.LittleEndian.Uint32(d[4:])), slba: binary.LittleEndian.Uint64(d[8:])}
		if st := n.checkRange(r); !st.OK() {
			return st
		}
		if r.nlb > 0 {
			ranges = append(ranges, r)
		}
	}
	if !n.thin() {
		return StatusSuccess
	}
	for _, r := range ranges {
		h := n.lockBlocks(r, false)
		err := n.zeroRange(ctx, r, true, true)
		h.Unlock()
		if err != nil {
			return n.ioStatus(cmd, fmt.Errorf("deallocate %d blocks at LBA %d: %w", r.nlb, r.slba, err), false)
		}
	}
	return StatusSuccess
}

// compare handles Compare: Compare Failure when the blocks differ from the
// data. A lone Compare takes no lock: it reads once, and no write can be
// lost by it.
func (n *Namespace) compare(ctx context.Context, cmd *Command) Status {
	r := rwRange(cmd)
	if st := n.checkRange(r); !st.OK() {
		return st
	}
	if st := n.checkLength(r, uint64(len(cmd.Data))); !st.OK() {
		return st
	}
	return n.compareBlocks(ctx, cmd, r)
}

// compareBlocks reads r and compares it with the command's data.
func (n *Namespace) compareBlocks(ctx context.Context, cmd *Command, r ioRange) Status {
	bs := int64(n.vol.BlockSize())
	buf := make([]byte, len(cmd.Data))
	if err := n.vol.ReadAt(ctx, buf, int64(r.slba)*bs); err != nil {
		return n.ioStatus(cmd, fmt.Errorf("compare %d blocks at LBA %d: %w", r.nlb, r.slba, err), true)
	}
	n.st.readCmds.Add(1)
	n.st.units512Read.Add(uint64(len(buf)) / 512)
	if !bytes.Equal(buf, cmd.Data) {
		return StatusCompareFailure
	}
	return StatusSuccess
}

// executeFused runs a fused Compare (first, FUSE=01b) and Write (second,
// FUSE=10b) as one atomic operation: the blocks are held exclusively from
// before the compare until after the write, so no write from any front end
// of the volume lands in between. A half that fails its checks fails
// itself and aborts the other with Command Aborted due to Failed Fused
// Command; a miscompare does the same to the write.
func (n *Namespace) executeFused(ctx context.Context, first, second *Command) (Completion, Completion) {
	fail := func(a, b Status) (Completion, Completion) {
		return Completion{Status: a}, Completion{Status: b}
	}
	aborted := StatusAbortFailedFused
	if first.Fuse() != FuseFirst || second.Fuse() != FuseSecond || first.NSID() != second.NSID() {
		return fail(StatusInvalidField.WithDNR(), aborted)
	}
	if first.Opcode() != OpCompare {
		return fail(StatusInvalidOpcode.WithDNR(), aborted)
	}
	if second.Opcode() != OpWrite {
		return fail(aborted, StatusInvalidOpcode.WithDNR())
	}
	r := rwRange(first)
	if st := n.checkRange(r); !st.OK() {
		return fail(st, aborted)
	}
	if st := n.checkLength(r, uint64(len(first.Data))); !st.OK() {
		return fail(st, aborted)
	}
	if rwRange(second) != r {
		// Both halves must name the same blocks.
		return fail(aborted, StatusInvalidField.WithDNR())
	}
	if _, st := n.checkWrite(second); !st.OK() {
		return fail(aborted, st)
	}
	if err := ctx.Err(); err != nil {
		return fail(StatusAbortSQDeleted, StatusAbortSQDeleted)
	}
	h := n.lockBlocks(r, true)
	defer h.Unlock()
	if st := n.compareBlocks(ctx, first, r); !st.OK() {
		return fail(st, aborted)
	}
	bs := int64(n.vol.BlockSize())
	if err := n.vol.WriteAt(ctx, second.Data, int64(r.slba)*bs, second.CDW(12)&cdw12FUA != 0); err != nil {
		return fail(StatusSuccess, n.ioStatus(second, fmt.Errorf("compare and write %d blocks at LBA %d: %w", r.nlb, r.slba, err), false))
	}
	n.st.writeCmds.Add(1)
	n.st.units512Written.Add(uint64(len(second.Data)) / 512)
	return Completion{}, Completion{}
}
