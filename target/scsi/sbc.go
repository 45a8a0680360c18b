package scsi

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Block commands (SBC-3).

// lbaRange decodes the LBA and the transfer (or verification, or
// number-of-blocks) length of the READ/WRITE/VERIFY family and returns the
// CDB byte offset of the length field for error pointers.
func lbaRange(cdb []byte) (lba, n uint64, lenField int) {
	switch len(cdb) {
	case 6:
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		return lba, uint64(cdb[4]), 4
	case 10:
		return uint64(binary.BigEndian.Uint32(cdb[2:])), uint64(binary.BigEndian.Uint16(cdb[7:])), 7
	case 12:
		return uint64(binary.BigEndian.Uint32(cdb[2:])), uint64(binary.BigEndian.Uint32(cdb[6:])), 6
	default:
		return binary.BigEndian.Uint64(cdb[2:]), uint64(binary.BigEndian.Uint32(cdb[10:])), 10
	}
}

// checkRange fails with LBA OUT OF RANGE unless [lba, lba+n) lies within
// the medium.
func (x *task) checkRange(lba, n uint64) error {
	nb := x.lu.blocks()
	if lba > nb || n > nb-lba {
		return errLBARange
	}
	return nil
}

// checkWritable fails with DATA PROTECT when the volume refuses writes.
func (x *task) checkWritable() error {
	if x.lu.vol.ReadOnly() {
		return writeProtectErr(x.lu.vol)
	}
	if x.lu.swp.Load() {
		return errSWP
	}
	return nil
}

func isWrite(op byte) bool {
	switch op {
	case opWrite6, opWrite10, opWrite12, opWrite16:
		return true
	}
	return false
}

// dataOutBlocks returns the whole blocks of data-out the initiator sent, at
// most n. An initiator whose expected transfer length is shorter than the
// CDB's gets only what it sent written; the transport reports the residual.
func (x *task) dataOutBlocks(n uint64) []byte {
	bs := uint64(x.lu.vol.BlockSize())
	have := uint64(len(x.cmd.DataOut)) / bs
	if have > n {
		have = n
	}
	return x.cmd.DataOut[:have*bs]
}

// readWrite handles READ and WRITE (6), (10), (12) and (16).
func (x *task) readWrite() error {
	lu := x.lu
	op := x.cdb[0]
	write := isWrite(op)
	lba, n, lenField := lbaRange(x.cdb)
	if len(x.cdb) == 6 {
		if n == 0 {
			n = 256 // SBC-3: READ(6)/WRITE(6) length 0 means 256 blocks
		}
	} else if x.cdb[1]&0xe0 != 0 {
		// RDPROTECT/WRPROTECT: we have no protection information.
		return invalidCDB(1, 7)
	}
	bs := uint64(lu.vol.BlockSize())
	x.res.TransferLength = int(min(n, 1<<31/bs) * bs)
	if err := x.checkRange(lba, n); err != nil {
		return err
	}
	if n > lu.maxTransferBlocks() {
		return invalidCDB(lenField, -1)
	}
	if write {
		if err := x.checkWritable(); err != nil {
			return err
		}
	}
	if n == 0 {
		return nil
	}
	off := int64(lba * bs)
	if !write {
		buf := getDataIn(int(n * bs))
		if err := x.readAt(buf, off); err != nil {
			return fmt.Errorf("read %d blocks at LBA %d: %w", n, lba, err)
		}
		x.res.DataIn = buf
		return nil
	}
	fua := len(x.cdb) > 6 && x.cdb[1]&0x08 != 0
	data := x.dataOutBlocks(n)
	if len(data) == 0 {
		return nil
	}
	h := lu.lockBlocks(lba, uint64(len(data))/bs, false)
	defer h.Unlock()
	if err := x.writeAt(data, off, fua); err != nil {
		return fmt.Errorf("write %d blocks at LBA %d: %w", len(data)/int(bs), lba, err)
	}
	return nil
}

// readAt fills buf from off with one engine call, unless the command was
// aborted first.
func (x *task) readAt(buf []byte, off int64) error {
	if len(buf) == 0 {
		return nil
	}
	if err := x.ctx.Err(); err != nil {
		return err
	}
	return x.lu.vol.ReadAt(x.ctx, buf, off)
}

// writeAt writes data at off with one engine call, unless the command was
// aborted first. A transfer larger than the engine's atomic size is not
// atomic, which SBC allows for ordinary writes (WRITE ATOMIC checks its
// length against the atomic size before it gets here).
func (x *task) writeAt(data []byte, off int64, fua bool) error {
	if len(data) == 0 {
		return nil
	}
	if err := x.ctx.Err(); err != nil {
		return err
	}
	return x.lu.vol.WriteAt(x.ctx, data, off, fua)
}

// writeAtomic handles WRITE ATOMIC(16) (SBC-4 5.48): the write is one
// engine call no larger than the engine's atomic size, so after a crash it
// is either wholly there or not at all.
func (x *task) writeAtomic() error {
	lu := x.lu
	if x.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7) // WRPROTECT
	}
	lba := binary.BigEndian.Uint64(x.cdb[2:])
	if binary.BigEndian.Uint16(x.cdb[10:]) != 0 {
		return invalidCDB(10, -1) // ATOMIC BOUNDARY: we report no boundary support
	}
	n := uint64(binary.BigEndian.Uint16(x.cdb[12:]))
	bs := uint64(lu.vol.BlockSize())
	x.res.TransferLength = int(n * bs)
	if err := x.checkRange(lba, n); err != nil {
		return err
	}
	if n > lu.maxAtomicBlocks() {
		return invalidCDB(12, -1)
	}
	if err := x.checkWritable(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	data := x.dataOutBlocks(n)
	if uint64(len(data)) != n*bs {
		// A partial atomic write would not be the write the CDB asked for.
		return errParamLength
	}
	h := lu.lockBlocks(lba, n, false)
	defer h.Unlock()
	if err := lu.vol.WriteAt(x.ctx, data, int64(lba*bs), x.cdb[1]&0x08 != 0); err != nil {
		return fmt.Errorf("write atomic %d blocks at LBA %d: %w", n, lba, err)
	}
	return nil
}

// verifyChunk bounds the memory a medium verification uses at once.
const verifyChunk = 1 << 20

// verifyMedium reads [lba, lba+n) and reports a read failure, which is all
// VERIFY with BYTCHK=0 asks of a device without checksums of its own.
func (x *task) verifyMedium(lba, n uint64) error {
	bs := uint64(x.lu.vol.BlockSize())
	chunk := max(verifyChunk/bs, 1)
	buf := make([]byte, min(n, chunk)*bs)
	for done := uint64(0); done < n; {
		c := min(n-done, chunk)
		if err := x.ctx.Err(); err != nil {
			return err
		}
		if err := x.lu.vol.ReadAt(x.ctx, buf[:c*bs], int64((lba+done)*bs)); err != nil {
			return fmt.Errorf("verify %d blocks at LBA %d: %w", c, lba+done, err)
		}
		done += c
	}
	return nil
}

// compareMedium compares want with the medium at lba and fails with
// MISCOMPARE, INFORMATION = the offset of the first differing byte.
func (x *task) compareMedium(lba uint64, want []byte) error {
	bs := uint64(x.lu.vol.BlockSize())
	got := make([]byte, len(want))
	if err := x.readAt(got, int64(lba*bs)); err != nil {
		return fmt.Errorf("compare %d bytes at LBA %d: %w", len(want), lba, err)
	}
	return miscompare(got, want, 0)
}

// miscompare returns the MISCOMPARE condition for the first byte where got
// and want differ, reporting base plus its offset.
func miscompare(got, want []byte, base uint64) error {
	if bytes.Equal(got, want) {
		return nil
	}
	i := 0
	for i < len(got) && got[i] == want[i] {
		i++
	}
	cc := newCC(SenseMiscompare, ascMiscompareDuringVerify)
	cc.info, cc.hasInfo = base+uint64(i), true
	return cc
}

// verify handles VERIFY (10), (12) and (16).
func (x *task) verify() error {
	if x.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7) // VRPROTECT
	}
	bytchk := (x.cdb[1] >> 1) & 0x03
	if bytchk == 2 {
		return invalidCDB(1, 2)
	}
	lba, n, lenField := lbaRange(x.cdb)
	if err := x.checkRange(lba, n); err != nil {
		return err
	}
	bs := uint64(x.lu.vol.BlockSize())
	switch bytchk {
	case 0:
		return x.verifyMedium(lba, n)
	case 1:
		if n > x.lu.maxTransferBlocks() {
			return invalidCDB(lenField, -1)
		}
		x.res.TransferLength = int(n * bs)
		data := x.dataOutBlocks(n)
		if len(data) == 0 {
			return nil
		}
		return x.compareMedium(lba, data)
	default: // 3: one block of data-out compared with every block
		x.res.TransferLength = int(bs)
		data := x.dataOutBlocks(1)
		if len(data) == 0 || n == 0 {
			return nil
		}
		got := make([]byte, bs)
		for i := uint64(0); i < n; i++ {
			if err := x.ctx.Err(); err != nil {
				return err
			}
			if err := x.lu.vol.ReadAt(x.ctx, got, int64((lba+i)*bs)); err != nil {
				return fmt.Errorf("verify block at LBA %d: %w", lba+i, err)
			}
			if err := miscompare(got, data, i*bs); err != nil {
				return err
			}
		}
		return nil
	}
}

// writeRange is what WRITE AND VERIFY and ORWRITE do first: refuse
// protection information (byte 1 bits 7-5), decode the LBA range, set the
// transfer length, check range, size and write protection, and take the
// data-out, which is empty for a zero transfer length.
func (x *task) writeRange() (lba, n, bs uint64, data []byte, err error) {
	if x.cdb[1]&0xe0 != 0 {
		return 0, 0, 0, nil, invalidCDB(1, 7) // WRPROTECT / ORPROTECT
	}
	lba, n, lenField := lbaRange(x.cdb)
	bs = uint64(x.lu.vol.BlockSize())
	x.res.TransferLength = int(min(n, 1<<31/bs) * bs)
	if err := x.checkRange(lba, n); err != nil {
		return 0, 0, 0, nil, err
	}
	if n > x.lu.maxTransferBlocks() {
		return 0, 0, 0, nil, invalidCDB(lenField, -1)
	}
	if err := x.checkWritable(); err != nil {
		return 0, 0, 0, nil, err
	}
	return lba, n, bs, x.dataOutBlocks(n), nil
}

// writeVerify handles WRITE AND VERIFY (10), (12) and (16): the data is
// written, read back and compared.
func (x *task) writeVerify() error {
	lba, n, bs, data, err := x.writeRange()
	if err != nil || len(data) == 0 {
		return err
	}
	h := x.lu.lockBlocks(lba, uint64(len(data))/bs, false)
	err = x.writeAt(data, int64(lba*bs), false)
	h.Unlock()
	if err != nil {
		return fmt.Errorf("write and verify %d blocks at LBA %d: %w", n, lba, err)
	}
	if err := x.compareMedium(lba, data); err != nil {
		if _, ok := err.(*checkCondition); ok {
			return err
		}
		// The write is acknowledged only when it verifies, so a failed
		// read back is a write failure.
		return fmt.Errorf("write and verify read back: %w", err)
	}
	return nil
}

// syncCache handles SYNCHRONIZE CACHE (10) and (16). The engine flushes
// whole volumes, so the range is only checked. IMMED is honoured by
// flushing before returning anyway, which the standard allows.
func (x *task) syncCache() error {
	lba, n, _ := lbaRange(x.cdb)
	if err := x.checkRange(lba, n); err != nil {
		return err
	}
	if err := x.lu.vol.Flush(x.ctx); err != nil {
		return fmt.Errorf("synchronize cache: %w", err)
	}
	return nil
}

// preFetch handles PRE-FETCH (10) and (16). The engine's cache fills on
// demand, so nothing is loaded ahead and GOOD ("not all of it will fit in
// the cache") is the honest answer rather than CONDITION MET.
func (x *task) preFetch() error {
	lba, n, _ := lbaRange(x.cdb)
	return x.checkRange(lba, n)
}

func (x *task) readCapacity10() error {
	lba := binary.BigEndian.Uint32(x.cdb[2:])
	pmi := x.cdb[8]&0x01 != 0
	if !pmi && lba != 0 {
		return invalidCDB(2, -1)
	}
	b := make([]byte, 8)
	last := x.lu.blocks() - 1
	if last > 0xfffffffe {
		last = 0xffffffff // the initiator must use READ CAPACITY(16)
	}
	binary.BigEndian.PutUint32(b, uint32(last))
	binary.BigEndian.PutUint32(b[4:], uint32(x.lu.vol.BlockSize()))
	x.res.DataIn = b
	x.res.TransferLength = 8
	return nil
}

func (x *task) readCapacity16() error {
	alloc := int(binary.BigEndian.Uint32(x.cdb[10:]))
	lba := binary.BigEndian.Uint64(x.cdb[2:])
	pmi := x.cdb[14]&0x01 != 0
	if !pmi && lba != 0 {
		return invalidCDB(2, -1)
	}
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b, x.lu.blocks()-1)
	binary.BigEndian.PutUint32(b[8:], uint32(x.lu.vol.BlockSize()))
	if x.lu.thin() {
		b[14] = 0x80 | 0x40 // LBPME, LBPRZ
	}
	return x.dataIn(b, alloc)
}

// writeSame handles WRITE SAME (10) and (16). With NDOB set, or a data
// block of zeroes, the blocks are zeroed without data, and deallocated when
// UNMAP is set on a thin volume; otherwise the single data block is
// replicated, UNMAP or not.
func (x *task) writeSame() error {
	lu := x.lu
	if x.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7) // WRPROTECT
	}
	if x.cdb[1]&0x10 != 0 {
		return invalidCDB(1, 4) // ANCHOR: no anchored state
	}
	if x.cdb[1]&0x06 != 0 {
		return invalidCDB(1, 2) // PBDATA/LBDATA (obsolete)
	}
	unmap := x.cdb[1]&0x08 != 0
	ndob := x.cdb[0] == opWriteSame16 && x.cdb[1]&0x01 != 0
	lba, n, lenField := lbaRange(x.cdb)
	bs := uint64(lu.vol.BlockSize())
	if !ndob {
		x.res.TransferLength = int(bs)
	}
	if err := x.checkRange(lba, n); err != nil {
		return err
	}
	if n == 0 {
		// SBC-3: zero means "to the end of the medium"; with our WSNZ=0
		// that is allowed but capped by MAXIMUM WRITE SAME LENGTH.
		n = lu.blocks() - lba
	}
	if n > lu.maxWriteSameBlocks() {
		return invalidCDB(lenField, -1)
	}
	if err := x.checkWritable(); err != nil {
		return err
	}
	var block []byte
	if !ndob {
		block = x.dataOutBlocks(1)
		if len(block) == 0 {
			return errParamLength
		}
	}
	h := lu.lockBlocks(lba, n, false)
	defer h.Unlock()
	// Deallocating is only a way of writing zeroes here: LBPRZ=1 promises
	// that unmapped blocks read as zeroes, so a data block that is not
	// all zeroes must be written even with UNMAP set, or the blocks would
	// read back something other than what the command wrote.
	if ndob || isZero(block) {
		if err := x.zeroRange(lba, n, unmap && lu.thin(), false); err != nil {
			return fmt.Errorf("write same (zeroes) %d blocks at LBA %d: %w", n, lba, err)
		}
		return nil
	}
	// Replicate the block into a buffer of at most verifyChunk bytes and
	// write the range with it.
	per := max(min(n, verifyChunk/bs), 1)
	buf := bytes.Repeat(block, int(per))
	for done := uint64(0); done < n; {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		c := min(n-done, per)
		if err := lu.vol.WriteAt(x.ctx, buf[:c*bs], int64((lba+done)*bs), false); err != nil {
			return fmt.Errorf("write same %d blocks at LBA %d: %w", c, lba+done, err)
		}
		done += c
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// unmap handles UNMAP (SBC-3 5.28).
func (x *task) unmap() error {
	lu := x.lu
	if x.cdb[1]&0x01 != 0 {
		return invalidCDB(1, 0) // ANCHOR
	}
	pll := int(binary.BigEndian.Uint16(x.cdb[7:]))
	x.res.TransferLength = pll
	if pll == 0 {
		return nil
	}
	if pll < 8 || len(x.cmd.DataOut) < pll {
		return errParamLength
	}
	if err := x.checkWritable(); err != nil {
		return err
	}
	p := x.cmd.DataOut[:pll]
	dataLen := int(binary.BigEndian.Uint16(p))
	bdl := int(binary.BigEndian.Uint16(p[2:]))
	if dataLen < 6 || bdl%16 != 0 || bdl+8 > pll {
		return errParamLength
	}
	if bdl/16 > maxUnmapDescriptors {
		return invalidParam(2, -1)
	}
	descs := p[8 : 8+bdl]
	// Validate every descriptor before deallocating anything.
	var total uint64
	for i := 0; i < len(descs); i += 16 {
		lba := binary.BigEndian.Uint64(descs[i:])
		n := uint64(binary.BigEndian.Uint32(descs[i+8:]))
		if err := x.checkRange(lba, n); err != nil {
			return err
		}
		total += n
		if total > lu.maxUnmapBlocks() {
			return invalidParam(8+i+8, -1)
		}
	}
	for i := 0; i < len(descs); i += 16 {
		lba := binary.BigEndian.Uint64(descs[i:])
		n := uint64(binary.BigEndian.Uint32(descs[i+8:]))
		h := lu.lockBlocks(lba, n, false)
		err := x.zeroRange(lba, n, true, true)
		h.Unlock()
		if err != nil {
			return fmt.Errorf("unmap %d blocks at LBA %d: %w", n, lba, err)
		}
	}
	return nil
}

// zeroRange deallocates (unmap) or zeroes [lba, lba+n) in pieces no larger
// than the engine's MaxUnmap. With only, it uses Volume.Unmap; otherwise
// Volume.WriteZeroes with the unmap hint.
func (x *task) zeroRange(lba, n uint64, unmap, only bool) error {
	bs := uint64(x.lu.vol.BlockSize())
	step := uint64(x.lu.vol.Limits().MaxUnmap) / bs
	if step == 0 {
		step = verifyChunk / bs
	}
	for n > 0 {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		c := min(n, step)
		var err error
		if only {
			err = x.lu.vol.Unmap(x.ctx, int64(lba*bs), int64(c*bs))
		} else {
			err = x.lu.vol.WriteZeroes(x.ctx, int64(lba*bs), int64(c*bs), unmap)
		}
		if err != nil {
			return err
		}
		lba, n = lba+c, n-c
	}
	return nil
}

// getLBAStatus handles GET LBA STATUS (SBC-3 5.6) from the engine's
// allocation map.
func (x *task) getLBAStatus() error {
	lu := x.lu
	lba := binary.BigEndian.Uint64(x.cdb[2:])
	alloc := int(binary.BigEndian.Uint32(x.cdb[10:]))
	nb := lu.blocks()
	if lba >= nb {
		return errLBARange
	}
	if alloc < 24 {
		// Room for at least the header and one descriptor, or the
		// answer would be empty.
		return x.dataIn(make([]byte, 0), alloc)
	}
	bs := uint64(lu.vol.BlockSize())
	maxDescs := min((alloc-8)/16, 64)
	b := make([]byte, 8, 8+16*maxDescs)
	cur := lba
	for d := 0; d < maxDescs && cur < nb; d++ {
		span := min(nb-cur, 0xffffffff)
		mapped, length, err := lu.vol.Mapped(x.ctx, int64(cur*bs), int64(span*bs))
		if err != nil {
			return fmt.Errorf("get lba status at LBA %d: %w", cur, err)
		}
		blocks := uint64(length) / bs
		if blocks == 0 {
			blocks = 1
		}
		desc := make([]byte, 16)
		binary.BigEndian.PutUint64(desc, cur)
		binary.BigEndian.PutUint32(desc[8:], uint32(blocks))
		// A fully provisioned unit has every LBA mapped (SBC-4 4.7.2),
		// whatever holes the backing store happens to have.
		if !mapped && lu.thin() {
			desc[12] = 0x01 // deallocated
		}
		b = append(b, desc...)
		cur += blocks
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return x.dataIn(b, alloc)
}

// compareAndWrite handles COMPARE AND WRITE (SBC-3 5.2): the first half of
// data-out is compared with the medium and, if equal, the second half is
// written. The blocks are locked exclusively from the compare to the end of
// the write, so that no other command writes them in between.
func (x *task) compareAndWrite() error {
	lu := x.lu
	if x.cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7) // WRPROTECT
	}
	lba := binary.BigEndian.Uint64(x.cdb[2:])
	n := uint64(x.cdb[13])
	bs := uint64(lu.vol.BlockSize())
	x.res.TransferLength = int(2 * n * bs)
	if n > maxCompareAndWriteBlocks {
		return invalidCDB(13, -1)
	}
	if err := x.checkRange(lba, n); err != nil {
		return err
	}
	if err := x.checkWritable(); err != nil {
		return err
	}
	if n == 0 {
		if len(x.cmd.DataOut) > 0 {
			// NUMBER OF LOGICAL BLOCKS 0 transfers nothing, yet data
			// came: the initiator meant more blocks than the one-byte
			// field holds (e.g. 256 wrapped to 0).
			return invalidCDB(13, -1)
		}
		return nil
	}
	if uint64(len(x.cmd.DataOut)) < 2*n*bs {
		return errParamLength
	}
	verify, data := x.cmd.DataOut[:n*bs], x.cmd.DataOut[n*bs:2*n*bs]
	fua := x.cdb[1]&0x08 != 0
	h := lu.lockBlocks(lba, n, true)
	defer h.Unlock()
	if err := x.compareMedium(lba, verify); err != nil {
		return err
	}
	if err := lu.vol.WriteAt(x.ctx, data, int64(lba*bs), fua); err != nil {
		return fmt.Errorf("compare and write %d blocks at LBA %d: %w", n, lba, err)
	}
	return nil
}

// orWrite handles ORWRITE(16) (SBC-3 5.9, the single-command form): each
// block becomes the bitwise OR of its old contents and the data-out.
// Like COMPARE AND WRITE it holds its blocks exclusively, which makes the
// read-modify-write atomic with respect to every other write of them.
func (x *task) orWrite() error {
	lba, n, bs, data, err := x.writeRange()
	if err != nil || len(data) == 0 {
		return err
	}
	lu := x.lu
	off := int64(lba * bs)
	h := lu.lockBlocks(lba, uint64(len(data))/bs, true)
	defer h.Unlock()
	cur := make([]byte, len(data))
	if err := x.readAt(cur, off); err != nil {
		return fmt.Errorf("orwrite read %d blocks at LBA %d: %w", n, lba, err)
	}
	for i := range cur {
		cur[i] |= data[i]
	}
	if err := x.writeAt(cur, off, x.cdb[1]&0x08 != 0); err != nil {
		return fmt.Errorf("orwrite %d blocks at LBA %d: %w", n, lba, err)
	}
	return nil
}

// readDefectData handles READ DEFECT DATA (10) and (12) (SBC-3 5.16,
// 5.17). A volume has no grown or primary defects, so the list is empty in
// whatever format was asked for.
func (x *task) readDefectData() error {
	var flags byte
	var alloc int
	var b []byte
	if x.cdb[0] == opReadDefectData10 {
		flags = x.cdb[2] & 0x1f
		alloc = int(binary.BigEndian.Uint16(x.cdb[7:]))
		b = make([]byte, 4)
	} else {
		flags = x.cdb[1] & 0x1f
		alloc = int(binary.BigEndian.Uint32(x.cdb[6:]))
		b = make([]byte, 8)
	}
	b[1] = flags // PLISTV/GLISTV echo the request: the (empty) lists are valid
	return x.dataIn(b, alloc)
}
