// Package undo implements the undo FIFO that makes Anvil's in-place
// overwrites crash consistent.
//
// Each volume has a ring file beside its raw data file. Before the engine
// overwrites (or punches) a range of the data file in epoch E, it appends an
// undo record holding the range's old contents, or a compact "was a hole"
// record, and makes the records durable. Only then does it write in place,
// sync, and finally advance the FIFO header past E. A crash before the header
// advance leaves E's records live; Recover applies them newest-first, which
// puts the data file back exactly as it was after epoch E-1.
//
// On-disk layout (all integers little endian):
//
//	[0, 512)        header slot 0
//	[4096, 4608)    header slot 1
//	[8192, size)    the ring, addressed by a 64-bit logical position that only
//	                grows; the physical offset is 8192 + pos % ringSize.
//
// A header holds a generation counter and its own CRC32C; writes alternate
// between the slots, so a torn header write always leaves the previous
// generation intact. Records are 512-byte aligned, start with a 64-byte
// header (magic, kind, epoch, logical position, target offset and length,
// CRC32C of the payload, CRC32C of the header) and never straddle the end of
// the ring: a wrap record fills the tail instead. Because each record carries
// its own logical position, records left over from an earlier lap of the ring
// never pass for live ones.
package undo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Layout constants.
const (
	// SectorSize is the record alignment.
	SectorSize = 512
	// RingOffset is where the ring starts in the file.
	RingOffset = 8192
	// DefaultSize is the default FIFO file size.
	DefaultSize = 256 << 20
	// MinSize is the smallest FIFO file Create accepts.
	MinSize = RingOffset + 16*SectorSize*9

	slotSize   = 4096
	headerLen  = 48 // bytes covered by the header CRC
	recHdrLen  = 64
	maxPayload = 1 << 20
)

var (
	headerMagic = [8]byte{'A', 'N', 'V', 'I', 'L', 'U', 'F', '1'}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

const recMagic = 0x52554e41 // "ANUR"

// Kind says what an undo record restores.
type Kind uint8

// Record kinds.
const (
	// KindData records hold the old bytes of the range.
	KindData Kind = 1
	// KindHole records say the range was unallocated; undo punches it.
	KindHole Kind = 2
	// kindWrap pads the tail of the ring; the next record is at the next lap.
	kindWrap Kind = 3
)

// Errors.
var (
	// ErrNoHeader: neither header slot holds a valid header.
	ErrNoHeader = errors.New("undo: no valid FIFO header")
	// ErrFull: an epoch's records would overrun the ring.
	ErrFull = errors.New("undo: epoch does not fit in the FIFO")
	// ErrUncertain: one header slot is garbled and the other leaves one
	// epoch's records live, so recovery cannot tell whether that epoch
	// was committed (the garbled slot held the newer header) or not (it
	// held the older one). Recover then changes nothing.
	ErrUncertain = errors.New("undo: cannot tell whether the newest epoch was committed")
)

// Device is the storage the FIFO lives on.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Size() int64
}

// Target is the data device that recovery restores.
type Target interface {
	WriteAt(p []byte, off int64) (int, error)
	Discard(off, n int64) error
	Sync() error
}

// FIFO is an open undo FIFO. It is not safe for concurrent use: the engine
// serializes commits.
type FIFO struct {
	dev       Device
	ringSize  int64
	gen       uint64
	committed uint64 // last committed (or burned) epoch
	start     uint64 // logical position of the first live record
	maxPay    int64
	scratch   []byte // record buffer reused by successive batches
	// suspect names the header slot that Open found garbled (neither a
	// valid header nor blank); it may have held a newer generation than
	// the header in use. Empty once a header has been rewritten over it.
	suspect string
}

// Create formats dev as an empty FIFO whose last committed epoch is 0.
func Create(dev Device) (*FIFO, error) {
	size := dev.Size()
	if size < MinSize {
		return nil, fmt.Errorf("undo: FIFO of %d bytes is smaller than the minimum %d", size, MinSize)
	}
	f := &FIFO{dev: dev, ringSize: (size - RingOffset) / SectorSize * SectorSize}
	f.setMaxPayload()
	// Invalidate slot 1 so a stale header there cannot win.
	if _, err := dev.WriteAt(make([]byte, SectorSize), slotSize); err != nil {
		return nil, fmt.Errorf("undo: format: %w", err)
	}
	if err := f.writeHeader(0, 0); err != nil {
		return nil, err
	}
	return f, nil
}

// Open reads the FIFO header from dev. It does not recover; call Recover.
func Open(dev Device) (*FIFO, error) {
	var best *header
	var suspect string
	buf := make([]byte, SectorSize)
	for slot := int64(0); slot < 2; slot++ {
		if _, err := dev.ReadAt(buf, slot*slotSize); err != nil {
			return nil, fmt.Errorf("undo: read header slot %d: %w", slot, err)
		}
		h, ok := decodeHeader(buf)
		if ok && (best == nil || h.gen > best.gen) {
			best = &h
		}
		if !ok && !allZero(buf) {
			suspect = fmt.Sprintf("header slot %d is garbled", slot)
		}
	}
	if best == nil {
		return nil, ErrNoHeader
	}
	if best.ringSize <= 0 || RingOffset+best.ringSize > dev.Size() || best.ringSize%SectorSize != 0 {
		return nil, fmt.Errorf("undo: header ring size %d does not fit a %d-byte file", best.ringSize, dev.Size())
	}
	f := &FIFO{dev: dev, ringSize: best.ringSize, gen: best.gen, committed: best.committed, start: best.start, suspect: suspect}
	f.setMaxPayload()
	return f, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (f *FIFO) setMaxPayload() {
	f.maxPay = min(maxPayload, f.ringSize/8) / 4096 * 4096
	if f.maxPay < 4096 {
		f.maxPay = 4096
	}
}

// Committed is the last epoch whose commit completed (or that recovery rolled
// back). The next epoch to commit must be larger.
func (f *FIFO) Committed() uint64 { return f.committed }

// RingSize is the ring capacity in bytes.
func (f *FIFO) RingSize() int64 { return f.ringSize }

// MaxPayload is the largest payload one data record carries; callers split
// longer ranges.
func (f *FIFO) MaxPayload() int64 { return f.maxPay }

// EpochBudget is the largest number of record bytes one epoch may append,
// counting the worst-case wrap padding.
func (f *FIFO) EpochBudget() int64 { return f.ringSize - f.maxPay - 2*recHdrLen - SectorSize }

// RecordSize is the ring space a record with an n-byte payload takes.
func RecordSize(payload int64) int64 {
	return (recHdrLen + payload + SectorSize - 1) / SectorSize * SectorSize
}

type header struct {
	gen, committed, start uint64
	ringSize              int64
}

func decodeHeader(b []byte) (header, bool) {
	if [8]byte(b[0:8]) != headerMagic {
		return header{}, false
	}
	if crc32.Checksum(b[:headerLen], castagnoli) != binary.LittleEndian.Uint32(b[headerLen:]) {
		return header{}, false
	}
	return header{
		gen:       binary.LittleEndian.Uint64(b[16:]),
		ringSize:  int64(binary.LittleEndian.Uint64(b[24:])),
		committed: binary.LittleEndian.Uint64(b[32:]),
		start:     binary.LittleEndian.Uint64(b[40:]),
	}, true
}

// writeHeader durably records (committed, start) under the next generation,
// in the slot the current generation does not use.
func (f *FIFO) writeHeader(committed, start uint64) error {
	gen, err := f.putHeader(committed, start)
	if err != nil {
		return err
	}
	if err := f.dev.Sync(); err != nil {
		return fmt.Errorf("undo: sync header: %w", err)
	}
	f.gen, f.committed, f.start = gen, committed, start
	return nil
}

// putHeader writes (committed, start) under the next generation without
// syncing, and returns that generation. The in-memory state changes only
// once a sync has made the header durable.
func (f *FIFO) putHeader(committed, start uint64) (uint64, error) {
	gen := f.gen + 1
	b := make([]byte, SectorSize)
	copy(b, headerMagic[:])
	binary.LittleEndian.PutUint32(b[8:], 1) // version
	binary.LittleEndian.PutUint64(b[16:], gen)
	binary.LittleEndian.PutUint64(b[24:], uint64(f.ringSize))
	binary.LittleEndian.PutUint64(b[32:], committed)
	binary.LittleEndian.PutUint64(b[40:], start)
	binary.LittleEndian.PutUint32(b[headerLen:], crc32.Checksum(b[:headerLen], castagnoli))
	if _, err := f.dev.WriteAt(b, int64(gen%2)*slotSize); err != nil {
		return 0, fmt.Errorf("undo: write header: %w", err)
	}
	return gen, nil
}

// Batch collects one epoch's undo records and writes them to the ring.
type Batch struct {
	f       *FIFO
	epoch   uint64
	pos     uint64 // logical position of the next record
	flushed uint64 // logical position up to which buf has been written
	buf     []byte // encoded records from flushed to pos, CRCs pending
	pending []int  // offsets in buf of records whose CRCs are not yet set
	bytes   int64  // payload bytes appended
	err     error
}

// flushThreshold is how much encoded record data a Batch buffers before
// writing it to the ring.
const flushThreshold = 4 << 20

// Begin starts the records of epoch, which must be newer than Committed.
func (f *FIFO) Begin(epoch uint64) *Batch {
	b := &Batch{f: f, epoch: epoch, pos: f.start, flushed: f.start, buf: f.scratch[:0]}
	if epoch <= f.committed {
		b.err = fmt.Errorf("undo: epoch %d is not newer than committed epoch %d", epoch, f.committed)
	}
	return b
}

// reserve makes room for a record of size bytes at b.pos, inserting a wrap
// record when the ring tail is too short, and returns the record's offset in
// b.buf.
func (b *Batch) reserve(size int64) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	tail := b.f.ringSize - int64(b.pos%uint64(b.f.ringSize))
	if tail < size {
		w := b.grow(tail)
		clear(b.buf[w:])
		b.encodeHeader(w, kindWrap, 0, tail)
		b.pos += uint64(tail)
	}
	if int64(b.pos-b.f.start)+size > b.f.ringSize {
		b.err = ErrFull
		return 0, b.err
	}
	i := b.grow(size)
	b.pos += uint64(size)
	return i, nil
}

func (b *Batch) grow(n int64) int {
	i := len(b.buf)
	if need := i + int(n); need > cap(b.buf) {
		nb := make([]byte, i, max(need, 2*cap(b.buf), flushThreshold+int(b.f.maxPay)+2*SectorSize))
		copy(nb, b.buf)
		b.buf = nb
		b.f.scratch = nb[:0] // keep the larger buffer for later batches
	}
	b.buf = b.buf[:i+int(n)]
	return i
}

func (b *Batch) encodeHeader(i int, kind Kind, off, length int64) {
	h := b.buf[i : i+recHdrLen]
	binary.LittleEndian.PutUint32(h[0:], recMagic)
	h[4] = byte(kind)
	binary.LittleEndian.PutUint64(h[8:], b.epoch)
	binary.LittleEndian.PutUint64(h[16:], b.flushed+uint64(i))
	binary.LittleEndian.PutUint64(h[24:], uint64(off))
	binary.LittleEndian.PutUint64(h[32:], uint64(length))
	b.pending = append(b.pending, i)
}

// AppendHole records that [off, off+n) was unallocated.
func (b *Batch) AppendHole(off, n int64) error {
	i, err := b.reserve(RecordSize(0))
	if err != nil {
		return err
	}
	clear(b.buf[i:])
	b.encodeHeader(i, KindHole, off, n)
	return b.maybeFlush()
}

// AppendData reserves a data record for [off, off+n) and returns the slice
// the caller must fill with the range's old contents before the next call on
// the Batch. n must not exceed MaxPayload.
func (b *Batch) AppendData(off int64, n int) ([]byte, error) {
	if int64(n) > b.f.maxPay {
		return nil, fmt.Errorf("undo: record of %d bytes exceeds the %d-byte maximum", n, b.f.maxPay)
	}
	if err := b.maybeFlush(); err != nil {
		return nil, err
	}
	i, err := b.reserve(RecordSize(int64(n)))
	if err != nil {
		return nil, err
	}
	// Zero the header and the padding after the payload, not the payload:
	// the caller overwrites it, and clearing it first would be one more
	// pass over every byte of old data.
	clear(b.buf[i : i+recHdrLen])
	clear(b.buf[i+recHdrLen+n:])
	b.encodeHeader(i, KindData, off, int64(n))
	b.bytes += int64(n)
	return b.buf[i+recHdrLen : i+recHdrLen+n], nil
}

// seal computes the CRCs of all pending records.
func (b *Batch) seal() {
	for _, i := range b.pending {
		h := b.buf[i : i+recHdrLen]
		if Kind(h[4]) == KindData {
			n := binary.LittleEndian.Uint64(h[32:])
			binary.LittleEndian.PutUint32(h[40:], crc32.Checksum(b.buf[i+recHdrLen:i+recHdrLen+int(n)], castagnoli))
		}
		binary.LittleEndian.PutUint32(h[60:], crc32.Checksum(h[:60], castagnoli))
	}
	b.pending = b.pending[:0]
}

// maybeFlush writes buffered records once enough have gathered, bounding
// the batch's memory. Callers fill a data record before the next call, so
// every buffered record is complete here.
func (b *Batch) maybeFlush() error {
	if len(b.buf) < flushThreshold {
		return b.err
	}
	from := b.flushed
	if err := b.write(); err != nil {
		return err
	}
	// Start the disk on what is written while the rest of the batch is
	// gathered, so that Write's Sync waits only for the tail.
	if w, ok := b.f.dev.(writebackStarter); ok {
		b.startWriteback(w, from, b.flushed)
	}
	return nil
}

// writebackStarter is implemented by devices that can start writeback of a
// range without waiting for it (engine.WritebackStarter).
type writebackStarter interface {
	StartWriteback(off, n int64) error
}

// startWriteback starts writeback of ring positions [from, to). It is only
// a hint: errors surface at the Sync that follows.
func (b *Batch) startWriteback(w writebackStarter, from, to uint64) {
	for from < to {
		phys := int64(from % uint64(b.f.ringSize))
		n := min(int64(to-from), b.f.ringSize-phys)
		_ = w.StartWriteback(RingOffset+phys, n)
		from += uint64(n)
	}
}

// write seals and writes the buffered records, splitting at the ring end.
func (b *Batch) write() error {
	if b.err != nil {
		return b.err
	}
	b.seal()
	data := b.buf
	pos := b.flushed
	for len(data) > 0 {
		phys := int64(pos % uint64(b.f.ringSize))
		n := min(int64(len(data)), b.f.ringSize-phys)
		if _, err := b.f.dev.WriteAt(data[:n], RingOffset+phys); err != nil {
			b.err = fmt.Errorf("undo: write records: %w", err)
			return b.err
		}
		data = data[n:]
		pos += uint64(n)
	}
	b.flushed = pos
	b.buf = b.buf[:0]
	return nil
}

// PayloadBytes is the number of old-data bytes appended so far.
func (b *Batch) PayloadBytes() int64 { return b.bytes }

// Len is the ring space the batch's records take so far.
func (b *Batch) Len() int64 { return int64(b.pos - b.f.start) }

// Write makes the batch's records durable. It must complete before any of
// the epoch's data is written in place.
func (b *Batch) Write() error {
	if err := b.write(); err != nil {
		return err
	}
	if err := b.f.dev.Sync(); err != nil {
		b.err = fmt.Errorf("undo: sync records: %w", err)
		return b.err
	}
	return nil
}

// Commit durably advances the header past the batch's epoch. Call it only
// after the epoch's in-place data is durable.
func (b *Batch) Commit() error {
	if b.err != nil {
		return b.err
	}
	return b.f.writeHeader(b.epoch, b.pos)
}

// Commit durably marks epoch committed without records (an epoch that wrote
// nothing in place).
func (f *FIFO) Commit(epoch uint64) error {
	return f.writeHeader(epoch, f.start)
}

// Epoch returns the epoch number the batch's records carry.
func (b *Batch) Epoch() uint64 { return b.epoch }

// Next starts the records of the epoch after b's, placed right behind b's
// records, before b is committed. Together with CommitWith it lets one sync
// both commit b's epoch and make the next epoch's records durable. The two
// epochs' records must fit in the ring together.
func (b *Batch) Next(epoch uint64) *Batch {
	// b is fully written (Write), so next may reuse the scratch buffer.
	n := &Batch{f: b.f, epoch: epoch, pos: b.pos, flushed: b.pos, err: b.err, buf: b.f.scratch[:0]}
	if epoch <= b.epoch && n.err == nil {
		n.err = fmt.Errorf("undo: epoch %d does not follow epoch %d", epoch, b.epoch)
	}
	return n
}

// CommitWith advances the header past b's epoch and writes next's records
// (see Next), then syncs once. Afterwards b's epoch is committed and next's
// records are durable, exactly as after b.Commit and next.Write. If the
// sync fails neither is known durable; recovery then rolls both back.
func (b *Batch) CommitWith(next *Batch) error {
	if b.err != nil {
		return b.err
	}
	if next.err != nil {
		return next.err
	}
	gen, err := b.f.putHeader(b.epoch, b.pos)
	if err != nil {
		return err
	}
	if err := next.write(); err != nil {
		return err
	}
	if err := b.f.dev.Sync(); err != nil {
		next.err = fmt.Errorf("undo: sync header and records: %w", err)
		return next.err
	}
	b.f.gen, b.f.committed, b.f.start = gen, b.epoch, b.pos
	return nil
}

// record is a parsed record header.
type record struct {
	kind        Kind
	epoch, pos  uint64
	off, length int64
	payCRC      uint32
	data        []byte
}

// readRecord parses the record at logical position pos, reporting ok=false
// for anything that is not an intact live record.
func (f *FIFO) readRecord(pos uint64) (record, bool, error) {
	phys := int64(pos % uint64(f.ringSize))
	h := make([]byte, SectorSize)
	if _, err := f.dev.ReadAt(h, RingOffset+phys); err != nil {
		return record{}, false, fmt.Errorf("undo: read record at %d: %w", pos, err)
	}
	if binary.LittleEndian.Uint32(h[0:]) != recMagic ||
		crc32.Checksum(h[:60], castagnoli) != binary.LittleEndian.Uint32(h[60:]) {
		return record{}, false, nil
	}
	r := record{
		kind:   Kind(h[4]),
		epoch:  binary.LittleEndian.Uint64(h[8:]),
		pos:    binary.LittleEndian.Uint64(h[16:]),
		off:    int64(binary.LittleEndian.Uint64(h[24:])),
		length: int64(binary.LittleEndian.Uint64(h[32:])),
		payCRC: binary.LittleEndian.Uint32(h[40:]),
	}
	if r.pos != pos || r.epoch <= f.committed || r.off < 0 || r.length < 0 {
		return record{}, false, nil
	}
	switch r.kind {
	case kindWrap:
		if r.length != f.ringSize-phys {
			return record{}, false, nil
		}
	case KindHole:
	case KindData:
		if r.length > f.maxPay || phys+RecordSize(r.length) > f.ringSize {
			return record{}, false, nil
		}
		buf := make([]byte, recHdrLen+r.length)
		copy(buf, h[:min(len(h), len(buf))])
		if len(buf) > SectorSize {
			if _, err := f.dev.ReadAt(buf[SectorSize:], RingOffset+phys+SectorSize); err != nil {
				return record{}, false, fmt.Errorf("undo: read record at %d: %w", pos, err)
			}
		}
		r.data = buf[recHdrLen:]
		if crc32.Checksum(r.data, castagnoli) != r.payCRC {
			return record{}, false, nil
		}
	default:
		return record{}, false, nil
	}
	return r, true, nil
}

// size is the ring space the record takes.
func (r record) size() int64 {
	switch r.kind {
	case kindWrap:
		return r.length
	case KindData:
		return RecordSize(r.length)
	}
	return RecordSize(0)
}

// RecoveryResult describes what Recover did.
type RecoveryResult struct {
	// Records is the number of undo records applied.
	Records int
	// Bytes is the number of bytes of old data written back.
	Bytes int64
	// Epoch is the epoch that was rolled back (0 if none).
	Epoch uint64
	// Kept is the number of live epochs recovery found complete in place
	// and kept instead of rolling them back.
	Kept int
}

// Recover rolls back the uncommitted epoch, if any: it applies the live
// records of the newest live epoch newest-first to target (data records are
// written back, hole records punched), stopping the scan at the first torn
// or foreign record, syncs target, and then durably resets the FIFO past
// them. Every step is idempotent, so a crash during Recover is repaired by
// the next Recover.
//
// Live records of an older epoch than the newest are kept, not applied: an
// epoch's successor writes records only after the epoch's data is durable
// in place and its header advance has been issued, so that epoch is whole
// on the device, and it may have been acknowledged by a header that was
// since lost. When a header slot is garbled and only one epoch is live,
// recovery cannot tell which of the two happened and returns ErrUncertain
// without touching target or the FIFO.
func (f *FIFO) Recover(target Target) (RecoveryResult, error) {
	var recs []record
	var res RecoveryResult
	pos := f.start
	for int64(pos-f.start) < f.ringSize {
		r, ok, err := f.readRecord(pos)
		if err != nil {
			return res, err
		}
		if !ok {
			break
		}
		pos += uint64(r.size())
		if r.kind != kindWrap {
			recs = append(recs, r)
		}
		res.Epoch = max(res.Epoch, r.epoch)
	}
	var undo []record
	var prev uint64
	for _, r := range recs {
		if r.epoch == res.Epoch {
			undo = append(undo, r)
		} else if r.epoch != prev {
			res.Kept++
			prev = r.epoch
		}
	}
	if len(undo) > 0 && res.Kept == 0 && f.suspect != "" {
		return RecoveryResult{}, fmt.Errorf("%w: %s and epoch %d (after committed epoch %d) has live undo records; it may have been committed and acknowledged or not, so the data was left as it is", ErrUncertain, f.suspect, res.Epoch, f.committed)
	}
	for i := len(undo) - 1; i >= 0; i-- {
		r := undo[i]
		switch r.kind {
		case KindData:
			if _, err := target.WriteAt(r.data, r.off); err != nil {
				return res, fmt.Errorf("undo: restore [%d,+%d): %w", r.off, r.length, err)
			}
			res.Bytes += r.length
		case KindHole:
			if err := target.Discard(r.off, r.length); err != nil {
				return res, fmt.Errorf("undo: restore hole [%d,+%d): %w", r.off, r.length, err)
			}
		}
		res.Records++
	}
	if len(undo) > 0 {
		if err := target.Sync(); err != nil {
			return res, fmt.Errorf("undo: sync restored data: %w", err)
		}
	}
	// Burn the rolled-back epoch number (and any epoch whose records might
	// linger past a torn one) so that no leftover record can ever be taken
	// for a live one again. Kept epochs become committed. The new header
	// goes to the slot the header in use does not occupy, over a garbled
	// one.
	if err := f.writeHeader(max(f.committed+1, res.Epoch), pos); err != nil {
		return res, err
	}
	f.suspect = ""
	if len(undo) == 0 {
		res.Epoch = 0
	}
	return res, nil
}
