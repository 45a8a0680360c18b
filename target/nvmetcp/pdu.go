package nvmetcp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// PDU types (NVMe/TCP transport specification, PDU-Type field).
const (
	typeICReq       = 0x00
	typeICResp      = 0x01
	typeH2CTermReq  = 0x02
	typeC2HTermReq  = 0x03
	typeCapsuleCmd  = 0x04
	typeCapsuleResp = 0x05
	typeH2CData     = 0x06
	typeC2HData     = 0x07
	typeR2T         = 0x09
)

// Common header flags.
const (
	flagHDGST   = 0x01 // header digest present
	flagDDGST   = 0x02 // data digest present
	flagLastPDU = 0x04 // H2CData / C2HData: last PDU of the transfer
	flagSuccess = 0x08 // C2HData: command completed successfully, no CapsuleResp follows
)

// Header lengths (HLEN) of each PDU type.
const (
	chLen          = 8
	icLen          = 128
	capsuleCmdLen  = chLen + 64 // 72
	capsuleRespLen = chLen + 16 // 24
	dataHdrLen     = 24         // H2CData, C2HData
	r2tLen         = 24
	termReqLen     = 24
	maxHdrLen      = icLen
	digestLen      = 4
	// termReqMaxLen bounds a TermReq PDU: its header and at most 128 bytes
	// of the header of the PDU in error.
	termReqMaxLen = 152
)

// ICReq/ICResp DGST bits.
const (
	dgstHeader = 0x01
	dgstData   = 0x02
)

// Fatal error statuses (FES) of a TermReq.
const (
	fesInvalidHeaderField = 0x01
	fesPDUSequence        = 0x02
	fesHeaderDigest       = 0x03
	fesDataOutOfRange     = 0x04
	fesDataLimitExceeded  = 0x05
	fesUnsupportedParam   = 0x06
)

// Byte offsets of common header fields, for a TermReq's FEI.
const (
	offType  = 0
	offFlags = 1
	offHLEN  = 2
	offPDO   = 3
	offPLEN  = 4
)

// Byte offsets in ICReq, H2CData and TermReq headers.
const (
	offICPFV    = 8
	offICHPDA   = 10
	offICDGST   = 11
	offICMAXR2T = 12
	offCCCID    = 8
	offTTAG     = 10
	offDATAO    = 12
	offDATAL    = 16
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// digest is the NVMe/TCP CRC32C digest of b (standard CRC-32C with the
// usual pre- and post-inversion, stored little-endian on the wire).
func digest(b []byte) uint32 { return crc32.Checksum(b, crc32c) }

// errClosedByPeer is returned when the host ended the connection with an
// H2CTermReq.
var errClosedByPeer = errors.New("nvmetcp: host sent H2CTermReq")

// fatalError is a transport error that ends the connection with a
// C2HTermReq carrying fes and fei (and the header of the offending PDU).
type fatalError struct {
	fes    uint16
	fei    uint32
	hdr    []byte // header of the PDU in error (copied), up to 128 bytes
	reason string
}

func (e *fatalError) Error() string {
	return fmt.Sprintf("nvmetcp: fatal transport error (FES %#x, FEI %#x): %s", e.fes, e.fei, e.reason)
}

func fatal(fes uint16, fei uint32, hdr []byte, format string, args ...any) *fatalError {
	n := min(len(hdr), maxHdrLen)
	return &fatalError{fes: fes, fei: fei, hdr: append([]byte(nil), hdr[:n]...), reason: fmt.Sprintf(format, args...)}
}

// pduHeader is the decoded common header of a received PDU.
type pduHeader struct {
	typ, flags, hlen, pdo uint8
	plen                  uint32
}

// pduReader reads PDUs from a connection. Its header buffer is reused for
// every PDU; the data part is read by the caller into a buffer it picks
// (for H2CData, straight into the command's buffer), so a PDU costs no
// allocation of its own.
type pduReader struct {
	r *bufio.Reader
	// hdr holds the current PDU's header (HLEN bytes) and header digest.
	hdr [maxHdrLen + digestLen]byte
	ch  pduHeader
	// hdgst and ddgst are the digests negotiated by ICReq/ICResp.
	hdgst, ddgst bool
	// dataLen is the length of the current PDU's data (without padding
	// and digest); pad is what lies between header (and digest) and PDO.
	dataLen int
	pad     int
	scratch [256]byte
}

func newPDUReader(r io.Reader) *pduReader {
	return &pduReader{r: bufio.NewReaderSize(r, 64<<10)}
}

// header returns the current PDU's header bytes.
func (p *pduReader) header() []byte { return p.hdr[:p.ch.hlen] }

// u16/u32 read little-endian fields of the current header.
func (p *pduReader) u16(off int) uint16 { return binary.LittleEndian.Uint16(p.hdr[off:]) }
func (p *pduReader) u32(off int) uint32 { return binary.LittleEndian.Uint32(p.hdr[off:]) }

// expectedHLEN is the HLEN each PDU type a controller may receive must
// carry; 0 for types a controller never receives.
func expectedHLEN(typ uint8) int {
	switch typ {
	case typeICReq:
		return icLen
	case typeH2CTermReq:
		return termReqLen
	case typeCapsuleCmd:
		return capsuleCmdLen
	case typeH2CData:
		return dataHdrLen
	}
	return 0
}

// readHeader reads and validates the next PDU's common header, the rest
// of its header and its header digest. maxData bounds the data part for
// this PDU type (a hostile PLEN cannot make us read without limit);
// icreq says whether the connection still waits for its ICReq. Errors the
// specification reports with a C2HTermReq are *fatalError; plain errors
// (I/O, or a TermReq with a bad length) close the connection silently.
// Fields are validated lowest offset first, as the specification asks.
func (p *pduReader) readHeader(icreq bool, maxData func(typ uint8) int) error {
	if _, err := io.ReadFull(p.r, p.hdr[:chLen]); err != nil {
		return err
	}
	ch := pduHeader{typ: p.hdr[0], flags: p.hdr[1], hlen: p.hdr[2], pdo: p.hdr[3], plen: binary.LittleEndian.Uint32(p.hdr[4:])}
	p.ch = ch
	raw := p.hdr[:chLen]
	hl := expectedHLEN(ch.typ)
	if hl == 0 || (icreq != (ch.typ == typeICReq)) {
		if icreq {
			return fatal(fesPDUSequence, 0, raw, "PDU type %#x before ICReq", ch.typ)
		}
		if ch.typ == typeICReq {
			return fatal(fesPDUSequence, 0, raw, "second ICReq")
		}
		return fatal(fesInvalidHeaderField, offType, raw, "PDU type %#x", ch.typ)
	}
	if ch.typ == typeH2CTermReq && (ch.plen < termReqLen || ch.plen > termReqMaxLen) {
		// A TermReq with a bad length ends the connection without a
		// report: answering a broken TermReq with a TermReq could loop.
		return fmt.Errorf("nvmetcp: H2CTermReq with PLEN %d", ch.plen)
	}
	var valid uint8
	switch ch.typ {
	case typeCapsuleCmd:
		valid = flagHDGST | flagDDGST
	case typeH2CData:
		valid = flagHDGST | flagDDGST | flagLastPDU
	}
	if ch.flags&^valid != 0 {
		return fatal(fesInvalidHeaderField, offFlags, raw, "flags %#x", ch.flags)
	}
	fullHdr := int(ch.hlen)
	if ch.flags&flagHDGST != 0 {
		fullHdr += digestLen
	}
	hasData := int64(ch.plen) > int64(fullHdr)
	var want uint8
	if p.hdgst && valid&flagHDGST != 0 {
		want |= flagHDGST
	}
	if p.ddgst && hasData && valid&flagDDGST != 0 {
		want |= flagDDGST
	}
	if ch.flags&(flagHDGST|flagDDGST) != want {
		return fatal(fesInvalidHeaderField, offFlags, raw, "digest flags %#x, negotiated %#x", ch.flags&(flagHDGST|flagDDGST), want)
	}
	if int(ch.hlen) != hl {
		return fatal(fesInvalidHeaderField, offHLEN, raw, "HLEN %d for PDU type %#x", ch.hlen, ch.typ)
	}
	switch ch.typ {
	case typeCapsuleCmd, typeH2CData:
		if !(ch.pdo == 0 && !hasData) && (int(ch.pdo) < fullHdr || int64(ch.pdo) > int64(ch.plen) || ch.pdo%4 != 0) {
			return fatal(fesInvalidHeaderField, offPDO, raw, "PDO %d", ch.pdo)
		}
	default:
		if ch.pdo != 0 {
			return fatal(fesInvalidHeaderField, offPDO, raw, "PDO %d", ch.pdo)
		}
	}
	if int64(ch.plen) < int64(fullHdr) {
		return fatal(fesInvalidHeaderField, offPLEN, raw, "PLEN %d shorter than the header", ch.plen)
	}
	p.dataLen, p.pad = 0, 0
	switch ch.typ {
	case typeICReq:
		if ch.plen != icLen {
			return fatal(fesInvalidHeaderField, offPLEN, raw, "ICReq PLEN %d", ch.plen)
		}
	case typeH2CTermReq:
		// The rest is error data; read with the header below.
	default:
		if hasData {
			n := int64(ch.plen) - int64(ch.pdo)
			if ch.flags&flagDDGST != 0 {
				n -= digestLen
			}
			if n <= 0 {
				return fatal(fesInvalidHeaderField, offPLEN, raw, "PLEN %d leaves no room for data", ch.plen)
			}
			if n > int64(maxData(ch.typ)) {
				if ch.typ == typeH2CData {
					return fatal(fesDataLimitExceeded, 0, raw, "%d bytes of H2C data exceed MAXH2CDATA %d", n, maxData(ch.typ))
				}
				return fatal(fesInvalidHeaderField, offPLEN, raw, "%d bytes of in-capsule data exceed the %d allowed", n, maxData(ch.typ))
			}
			p.dataLen = int(n)
			p.pad = int(ch.pdo) - fullHdr
		}
	}
	if _, err := io.ReadFull(p.r, p.hdr[chLen:ch.hlen]); err != nil {
		return fmt.Errorf("nvmetcp: read PDU header: %w", unexpected(err))
	}
	if ch.flags&flagHDGST != 0 {
		d := p.hdr[ch.hlen : int(ch.hlen)+digestLen]
		if _, err := io.ReadFull(p.r, d); err != nil {
			return fmt.Errorf("nvmetcp: read header digest: %w", unexpected(err))
		}
		if got, exp := binary.LittleEndian.Uint32(d), digest(p.hdr[:ch.hlen]); got != exp {
			return fatal(fesHeaderDigest, 0, p.header(), "header digest %#08x, computed %#08x", got, exp)
		}
	}
	if p.pad > 0 {
		if _, err := p.r.Discard(p.pad); err != nil {
			return fmt.Errorf("nvmetcp: read PDU padding: %w", unexpected(err))
		}
	}
	return nil
}

// errDataDigest reports a data digest mismatch: the command the data
// belongs to fails, the connection stays up.
var errDataDigest = errors.New("nvmetcp: data digest mismatch")

// readData reads the current PDU's data into dst (len(dst) == dataLen)
// and checks its digest. A mismatch returns errDataDigest with the data
// consumed, so the stream stays in step.
func (p *pduReader) readData(dst []byte) error {
	if _, err := io.ReadFull(p.r, dst); err != nil {
		return fmt.Errorf("nvmetcp: read PDU data: %w", unexpected(err))
	}
	if p.ch.flags&flagDDGST != 0 {
		var d [digestLen]byte
		if _, err := io.ReadFull(p.r, d[:]); err != nil {
			return fmt.Errorf("nvmetcp: read data digest: %w", unexpected(err))
		}
		if binary.LittleEndian.Uint32(d[:]) != digest(dst) {
			return errDataDigest
		}
	}
	return nil
}

// discardData skips the current PDU's data and its digest.
func (p *pduReader) discardData() error {
	n := p.dataLen
	if p.ch.flags&flagDDGST != 0 {
		n += digestLen
	}
	if n == 0 {
		return nil
	}
	if _, err := p.r.Discard(n); err != nil {
		return fmt.Errorf("nvmetcp: discard PDU data: %w", unexpected(err))
	}
	return nil
}

// readTermData reads an H2CTermReq's error data (after its header).
func (p *pduReader) readTermData() ([]byte, error) {
	n := int(p.ch.plen) - termReqLen
	if p.ch.flags&flagHDGST != 0 {
		n -= digestLen
	}
	n = max(n, 0)
	b := p.scratch[:n]
	if _, err := io.ReadFull(p.r, b); err != nil {
		return nil, fmt.Errorf("nvmetcp: read H2CTermReq data: %w", unexpected(err))
	}
	return b, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// directThreshold is the data size from which the writer stops copying
// data into its buffer and hands the caller's slice to writev instead, so
// a large read's payload is never copied in user space.
const directThreshold = 16 << 10

// pduWriter batches outgoing PDUs of one connection. Headers, digests,
// padding and small data are appended to buf; large data is referenced
// from vec between slices of buf; flush sends everything with one writev.
// Not safe for concurrent use.
type pduWriter struct {
	buf  []byte
	mark int // start of buf bytes not yet referenced from vec
	vec  net.Buffers
	size int
	// hdgst and ddgst are the negotiated digests; pda is the host's PDU
	// data alignment in bytes ((HPDA+1)*4).
	hdgst, ddgst bool
	pda          int
}

var zeroPad [128]byte

// add appends one PDU: hdr is its header (HLEN bytes, common header
// fields other than type-specific flags filled here), data its payload.
func (w *pduWriter) add(hdr []byte, data []byte) {
	hlen := len(hdr)
	full := hlen
	if w.hdgst {
		hdr[1] |= flagHDGST
		full += digestLen
	}
	pdo, pad := 0, 0
	plen := full
	if len(data) > 0 {
		pdo = full
		if w.pda > 4 {
			pdo = (full + w.pda - 1) / w.pda * w.pda
		}
		pad = pdo - full
		plen = pdo + len(data)
		if w.ddgst {
			hdr[1] |= flagDDGST
			plen += digestLen
		}
	}
	hdr[2] = uint8(hlen)
	hdr[3] = uint8(pdo)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(plen))
	w.buf = append(w.buf, hdr...)
	if w.hdgst {
		w.buf = binary.LittleEndian.AppendUint32(w.buf, digest(hdr))
	}
	w.buf = append(w.buf, zeroPad[:pad]...)
	if len(data) > 0 {
		if len(data) >= directThreshold {
			w.vec = append(w.vec, w.buf[w.mark:], data)
			w.mark = len(w.buf)
		} else {
			w.buf = append(w.buf, data...)
		}
		if w.ddgst {
			w.buf = binary.LittleEndian.AppendUint32(w.buf, digest(data))
		}
	}
	w.size += plen
}

// empty reports whether nothing is pending.
func (w *pduWriter) empty() bool { return w.size == 0 }

// flush writes everything pending to dst.
func (w *pduWriter) flush(dst io.Writer) error {
	var err error
	if len(w.vec) == 0 {
		if len(w.buf) > w.mark {
			_, err = dst.Write(w.buf[w.mark:])
		}
	} else {
		if len(w.buf) > w.mark {
			w.vec = append(w.vec, w.buf[w.mark:])
		}
		bufs := w.vec
		_, err = bufs.WriteTo(dst)
		clear(w.vec[:cap(w.vec)])
		w.vec = w.vec[:0]
	}
	if cap(w.buf) > 4<<20 {
		// Don't keep a huge buffer after a burst.
		w.buf = nil
	}
	w.buf = w.buf[:0]
	w.mark = 0
	w.size = 0
	return err
}
