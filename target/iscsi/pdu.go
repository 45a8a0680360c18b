package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// Opcodes (RFC 7143 §11.2.1.2). Initiator opcodes are 0x00-0x1f, target
// opcodes 0x20-0x3f.
const (
	opNOPOut     = 0x00
	opSCSICmd    = 0x01
	opTMFReq     = 0x02
	opLoginReq   = 0x03
	opTextReq    = 0x04
	opDataOut    = 0x05
	opLogoutReq  = 0x06
	opSNACKReq   = 0x10
	opNOPIn      = 0x20
	opSCSIResp   = 0x21
	opTMFResp    = 0x22
	opLoginResp  = 0x23
	opTextResp   = 0x24
	opDataIn     = 0x25
	opLogoutResp = 0x26
	opR2T        = 0x31
	opAsyncMsg   = 0x32
	opReject     = 0x3f
)

// Header flag bits shared by several PDUs (byte 1).
const (
	flagFinal    = 0x80 // F
	flagContinue = 0x40 // C (login/text)
	flagRead     = 0x40 // R (SCSI command)
	flagWrite    = 0x20 // W (SCSI command)
	flagTransit  = 0x80 // T (login)
	flagImmed    = 0x40 // I, in byte 0
	flagStatus   = 0x01 // S (Data-In)
	flagOverflow = 0x04 // O
	flagUnder    = 0x02 // U
)

// Reject reasons (RFC 7143 §11.17.1).
const (
	rejectDigestError      = 0x02
	rejectSNACKRejected    = 0x03
	rejectProtocolError    = 0x04
	rejectNotSupported     = 0x05
	rejectImmediateReject  = 0x06
	rejectTaskInProgress   = 0x07
	rejectInvalidDataAck   = 0x08
	rejectInvalidPDUField  = 0x09
	rejectOutOfResources   = 0x0a
	rejectWaitingForLogout = 0x0c
)

// Reserved tag value: "no task" for ITT and TTT.
const tagNone = 0xffffffff

// bhsLen is the size of the Basic Header Segment.
const bhsLen = 48

// maxAHSLen bounds TotalAHSLength (a byte counting 4-byte words).
const maxAHSLen = 255 * 4

// AHS types (RFC 7143 §11.2.2).
const (
	ahsExtendedCDB = 1
	ahsBidiReadLen = 2
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// errDigest reports a header or data digest mismatch.
var errDigest = errors.New("iscsi: digest mismatch")

// errPDU marks malformed PDUs; the connection that sent one is closed.
var errPDU = errors.New("iscsi: malformed PDU")

// bhs is a Basic Header Segment with typed accessors. Field positions follow
// RFC 7143 §11; fields that differ between opcodes are read at their offset.
type bhs [bhsLen]byte

func (h *bhs) opcode() uint8            { return h[0] & 0x3f }
func (h *bhs) immediate() bool          { return h[0]&flagImmed != 0 }
func (h *bhs) final() bool              { return h[1]&flagFinal != 0 }
func (h *bhs) totalAHSLen() int         { return int(h[4]) * 4 }
func (h *bhs) dataLen() int             { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *bhs) lunBytes() uint64         { return binary.BigEndian.Uint64(h[8:16]) }
func (h *bhs) itt() uint32              { return binary.BigEndian.Uint32(h[16:20]) }
func (h *bhs) u32(off int) uint32       { return binary.BigEndian.Uint32(h[off : off+4]) }
func (h *bhs) setU32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:off+4], v) }
func (h *bhs) setU16(off int, v uint16) { binary.BigEndian.PutUint16(h[off:off+2], v) }
func (h *bhs) setLUN(l uint64)          { binary.BigEndian.PutUint64(h[8:16], l) }
func (h *bhs) setITT(v uint32)          { h.setU32(16, v) }

func (h *bhs) setDataLen(n int) {
	h[5] = byte(n >> 16)
	h[6] = byte(n >> 8)
	h[7] = byte(n)
}

// pad4 returns the number of padding bytes after a segment of n bytes.
func pad4(n int) int { return (4 - n&3) & 3 }

// pduReader reads PDUs from a connection. It keeps one BHS/AHS buffer that
// is reused for every PDU, so a PDU header never allocates; data segments
// are read by the caller into a buffer of its choosing (for Data-Out, straight
// into the task's buffer).
type pduReader struct {
	r            *bufio.Reader
	hdr          bhs
	ahs          [maxAHSLen]byte
	ahsLen       int
	headerDigest bool
	dataDigest   bool
	// maxData is our MaxRecvDataSegmentLength: a longer data segment is a
	// protocol error.
	maxData int
	// loginOnly makes any PDU other than a Login Request an error before
	// its AHS or data is read (nothing else is legal before login).
	loginOnly bool
	scratch   [8]byte
}

// readHeader reads the BHS, the AHS and the header digest of the next PDU.
func (p *pduReader) readHeader() error {
	if _, err := io.ReadFull(p.r, p.hdr[:]); err != nil {
		return err
	}
	if n := p.hdr.dataLen(); n > p.maxData {
		return fmt.Errorf("%w: data segment length %d exceeds MaxRecvDataSegmentLength %d", errPDU, n, p.maxData)
	}
	p.ahsLen = p.hdr.totalAHSLen()
	if p.loginOnly && (p.hdr.opcode() != opLoginReq || p.ahsLen != 0) {
		return fmt.Errorf("%w: opcode %#x (AHS %d bytes) during login", errPDU, p.hdr.opcode(), p.ahsLen)
	}
	if p.ahsLen > 0 {
		if _, err := io.ReadFull(p.r, p.ahs[:p.ahsLen]); err != nil {
			return fmt.Errorf("read AHS: %w", err)
		}
	}
	if p.headerDigest {
		if _, err := io.ReadFull(p.r, p.scratch[:4]); err != nil {
			return fmt.Errorf("read header digest: %w", err)
		}
		crc := crc32.Update(0, crc32c, p.hdr[:])
		crc = crc32.Update(crc, crc32c, p.ahs[:p.ahsLen])
		if crc != binary.LittleEndian.Uint32(p.scratch[:4]) {
			return fmt.Errorf("header: %w", errDigest)
		}
	}
	return nil
}

// readData reads the current PDU's data segment into dst, which must be
// exactly dataLen() bytes, then skips the padding and checks the digest.
func (p *pduReader) readData(dst []byte) error {
	if _, err := io.ReadFull(p.r, dst); err != nil {
		return fmt.Errorf("read data segment: %w", err)
	}
	pad := pad4(len(dst))
	if pad > 0 {
		if _, err := io.ReadFull(p.r, p.scratch[:pad]); err != nil {
			return fmt.Errorf("read padding: %w", err)
		}
	}
	if p.dataDigest && len(dst) > 0 {
		crc := crc32.Update(0, crc32c, dst)
		crc = crc32.Update(crc, crc32c, p.scratch[:pad])
		var d [4]byte
		if _, err := io.ReadFull(p.r, d[:]); err != nil {
			return fmt.Errorf("read data digest: %w", err)
		}
		if crc != binary.LittleEndian.Uint32(d[:]) {
			return fmt.Errorf("data: %w", errDigest)
		}
	}
	return nil
}

// discardData skips the current PDU's data segment (with padding and
// digest) without keeping it.
func (p *pduReader) discardData() error {
	n := p.hdr.dataLen()
	if n == 0 {
		return nil
	}
	n += pad4(n)
	if p.dataDigest {
		n += 4
	}
	if _, err := p.r.Discard(n); err != nil {
		return fmt.Errorf("discard data segment: %w", err)
	}
	return nil
}

// parseAHS walks the AHS and returns the extended CDB bytes (beyond the 16
// in the BHS) and the bidirectional read expected length, if present.
func parseAHS(ahs []byte) (extCDB []byte, bidiRead uint32, err error) {
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return nil, 0, fmt.Errorf("%w: truncated AHS", errPDU)
		}
		l := int(binary.BigEndian.Uint16(ahs[0:2]))
		typ := ahs[2]
		// AHSLength counts the type-specific bytes from byte 3 on; the
		// segment is padded to 4 bytes.
		total := 3 + l
		total += pad4(total)
		if l == 0 || total > len(ahs) {
			return nil, 0, fmt.Errorf("%w: AHS length %d", errPDU, l)
		}
		body := ahs[3 : 3+l]
		switch typ {
		case ahsExtendedCDB:
			// First byte of the type-specific area is reserved.
			if len(body) < 2 || extCDB != nil {
				return nil, 0, fmt.Errorf("%w: extended CDB AHS", errPDU)
			}
			extCDB = body[1:]
		case ahsBidiReadLen:
			if l != 5 {
				return nil, 0, fmt.Errorf("%w: bidirectional read AHS length %d", errPDU, l)
			}
			bidiRead = binary.BigEndian.Uint32(body[1:5])
		default:
			return nil, 0, fmt.Errorf("%w: AHS type %d", errPDU, typ)
		}
		ahs = ahs[total:]
	}
	return extCDB, bidiRead, nil
}

// directThreshold is the data segment size from which the writer stops
// copying a segment into its buffer and hands it to writev instead, so a
// large Data-In payload is never copied in user space.
const directThreshold = 16 << 10

// pduWriter batches outgoing PDUs for one connection. Headers, digests,
// padding and small segments are appended to buf; large segments are
// referenced in vec between slices of buf, and flush sends everything with
// one writev. Not safe for concurrent use: one goroutine owns it.
type pduWriter struct {
	w    io.Writer
	buf  []byte
	mark int // start of buf bytes not yet referenced from vec
	vec  net.Buffers
	// size is the number of bytes pending.
	size int
}

// write queues one PDU (no AHS: targets never send one).
func (w *pduWriter) write(h *bhs, data []byte, headerDigest, dataDigest bool) {
	h[4] = 0
	h.setDataLen(len(data))
	start := len(w.buf)
	w.buf = append(w.buf, h[:]...)
	if headerDigest {
		w.buf = binary.LittleEndian.AppendUint32(w.buf, crc32.Checksum(h[:], crc32c))
	}
	if len(data) > 0 {
		if len(data) >= directThreshold {
			w.vec = append(w.vec, w.buf[w.mark:], data)
			w.mark = len(w.buf)
		} else {
			w.buf = append(w.buf, data...)
		}
		var zero [4]byte
		pad := pad4(len(data))
		w.buf = append(w.buf, zero[:pad]...)
		if dataDigest {
			crc := crc32.Update(0, crc32c, data)
			crc = crc32.Update(crc, crc32c, zero[:pad])
			w.buf = binary.LittleEndian.AppendUint32(w.buf, crc)
		}
	}
	w.size += len(w.buf) - start
	if len(data) >= directThreshold {
		w.size += len(data)
	}
}

// flush writes everything queued.
func (w *pduWriter) flush() error {
	var err error
	if len(w.vec) == 0 {
		if len(w.buf) > w.mark {
			_, err = w.w.Write(w.buf[w.mark:])
		}
	} else {
		w.vec = append(w.vec, w.buf[w.mark:])
		bufs := w.vec
		_, err = bufs.WriteTo(w.w)
		clear(w.vec) // drop references to data segments
		w.vec = w.vec[:0]
	}
	if cap(w.buf) > 4<<20 {
		// Don't keep a huge buffer around after a burst of small PDUs.
		w.buf = nil
	}
	w.buf = w.buf[:0]
	w.mark = 0
	w.size = 0
	return err
}

// Serial number arithmetic (RFC 1982) on 32-bit sequence numbers.
func snLess(a, b uint32) bool { return a != b && int32(a-b) < 0 }
func snLE(a, b uint32) bool   { return a == b || int32(a-b) < 0 }
