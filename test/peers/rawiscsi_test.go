package peers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// rawConn is a deliberately tiny iSCSI initiator (RFC 7143) used only where
// the real peers cannot go: sending malformed PDUs on a logged-in
// connection, and reading the raw bytes of a VPD page that iscsi-inq prints
// as text. It does one normal session on one connection, no digests, no
// authentication, and one command at a time.
type rawConn struct {
	c      net.Conn
	itt    uint32
	cmdSN  uint32
	statSN uint32 // ExpStatSN to send
}

const bhsLen = 48

// iSCSI opcodes used here (RFC 7143 section 11).
const (
	opSCSICmd    = 0x01
	opLoginReq   = 0x03
	opSCSIResp   = 0x21
	opLoginResp  = 0x23
	opDataIn     = 0x25
	opReject     = 0x3f
	opNopIn      = 0x20
	opImmediateB = 0x40
)

// dialRaw opens a TCP connection to addr.
func dialRaw(addr string) (*rawConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return &rawConn{c: c, itt: 1}, nil
}

func (r *rawConn) Close() error { return r.c.Close() }

// pdu is a received PDU: its basic header segment and data segment.
type pdu struct {
	bhs  [bhsLen]byte
	data []byte
}

func (p *pdu) opcode() byte { return p.bhs[0] & 0x3f }

// writePDU sends a BHS and a data segment padded to 4 bytes.
func (r *rawConn) writePDU(bhs []byte, data []byte) error {
	if len(bhs) != bhsLen {
		return fmt.Errorf("bhs is %d bytes", len(bhs))
	}
	n := len(data)
	bhs[5], bhs[6], bhs[7] = byte(n>>16), byte(n>>8), byte(n)
	buf := append(append([]byte{}, bhs...), data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.c.Write(buf); err != nil {
		return fmt.Errorf("write pdu: %w", err)
	}
	return nil
}

// readPDU reads one PDU, skipping any AHS.
func (r *rawConn) readPDU(timeout time.Duration) (*pdu, error) {
	r.c.SetReadDeadline(time.Now().Add(timeout))
	p := &pdu{}
	if _, err := io.ReadFull(r.c, p.bhs[:]); err != nil {
		return nil, fmt.Errorf("read bhs: %w", err)
	}
	ahs := int(p.bhs[4]) * 4
	dsl := int(p.bhs[5])<<16 | int(p.bhs[6])<<8 | int(p.bhs[7])
	pad := (4 - dsl%4) % 4
	rest := make([]byte, ahs+dsl+pad)
	if _, err := io.ReadFull(r.c, rest); err != nil {
		return nil, fmt.Errorf("read pdu body (%d bytes): %w", len(rest), err)
	}
	p.data = rest[ahs : ahs+dsl]
	return p, nil
}

// login performs a normal-session login straight into the operational
// stage (allowed when the target requires no authentication) and on to
// full feature phase.
func (r *rawConn) login(initiator, target string) error {
	keys := []string{
		"InitiatorName=" + initiator,
		"SessionType=Normal",
		"TargetName=" + target,
		"HeaderDigest=None",
		"DataDigest=None",
		"MaxRecvDataSegmentLength=65536",
		"ImmediateData=Yes",
		"InitialR2T=Yes",
	}
	isid := []byte{0x80, 0x12, 0x34, 0x56, 0x00, 0x01}
	for step := 0; step < 8; step++ {
		var bhs [bhsLen]byte
		bhs[0] = opImmediateB | opLoginReq
		bhs[1] = 0x80 | 1<<2 | 3 // Transit, CSG=operational, NSG=full feature
		copy(bhs[8:14], isid)
		binary.BigEndian.PutUint32(bhs[16:], r.itt)
		binary.BigEndian.PutUint32(bhs[24:], r.cmdSN)
		binary.BigEndian.PutUint32(bhs[28:], r.statSN)
		var data []byte
		for _, k := range keys {
			data = append(append(data, k...), 0)
		}
		keys = nil // later steps only ask to move on
		if err := r.writePDU(bhs[:], data); err != nil {
			return err
		}
		p, err := r.readPDU(10 * time.Second)
		if err != nil {
			return err
		}
		if p.opcode() != opLoginResp {
			return fmt.Errorf("login: got opcode %#x, want login response", p.opcode())
		}
		if class, detail := p.bhs[36], p.bhs[37]; class != 0 {
			return fmt.Errorf("login rejected: status class %d detail %d (%q)", class, detail, p.data)
		}
		r.statSN = binary.BigEndian.Uint32(p.bhs[24:]) + 1
		r.cmdSN = binary.BigEndian.Uint32(p.bhs[28:]) // ExpCmdSN
		if p.bhs[1]&0x80 != 0 && p.bhs[1]&0x3 == 3 {
			return nil
		}
	}
	return errors.New("login: target never moved to full feature phase")
}

// scsiStatus is a completed SCSI command.
type scsiStatus struct {
	status byte
	sense  []byte
	data   []byte
}

// readCommand runs a data-in (or no-data) SCSI command on LUN 0.
func (r *rawConn) readCommand(cdb []byte, alloc int) (*scsiStatus, error) {
	var bhs [bhsLen]byte
	bhs[0] = opSCSICmd
	bhs[1] = 0x80 | 0x40 | 0x01 // Final, Read, SIMPLE
	r.itt++
	binary.BigEndian.PutUint32(bhs[16:], r.itt)
	binary.BigEndian.PutUint32(bhs[20:], uint32(alloc))
	binary.BigEndian.PutUint32(bhs[24:], r.cmdSN)
	binary.BigEndian.PutUint32(bhs[28:], r.statSN)
	copy(bhs[32:48], cdb)
	r.cmdSN++
	if err := r.writePDU(bhs[:], nil); err != nil {
		return nil, err
	}
	st := &scsiStatus{}
	for {
		p, err := r.readPDU(10 * time.Second)
		if err != nil {
			return nil, err
		}
		switch p.opcode() {
		case opNopIn:
			continue
		case opDataIn:
			off := binary.BigEndian.Uint32(p.bhs[40:])
			if need := int(off) + len(p.data); need > len(st.data) {
				st.data = append(st.data, make([]byte, need-len(st.data))...)
			}
			copy(st.data[off:], p.data)
			if p.bhs[1]&0x01 != 0 { // S bit: status rides on the Data-In
				r.statSN = binary.BigEndian.Uint32(p.bhs[24:]) + 1
				st.status = p.bhs[3]
				return st, nil
			}
		case opSCSIResp:
			r.statSN = binary.BigEndian.Uint32(p.bhs[24:]) + 1
			st.status = p.bhs[3]
			if len(p.data) >= 2 {
				n := int(binary.BigEndian.Uint16(p.data))
				if 2+n <= len(p.data) {
					st.sense = p.data[2 : 2+n]
				}
			}
			return st, nil
		default:
			return nil, fmt.Errorf("unexpected opcode %#x while waiting for command completion", p.opcode())
		}
	}
}

// inquiryVPD reads one VPD page with INQUIRY EVPD=1, retrying once past a
// unit attention.
func (r *rawConn) inquiryVPD(page byte) ([]byte, error) {
	const alloc = 1024
	cdb := []byte{0x12, 0x01, page, alloc >> 8, alloc & 0xff, 0}
	for try := 0; try < 3; try++ {
		st, err := r.readCommand(cdb, alloc)
		if err != nil {
			return nil, err
		}
		if st.status == 0 {
			return st.data, nil
		}
		if st.status == 0x02 && len(st.sense) > 2 && st.sense[2]&0x0f == 0x06 {
			continue // UNIT ATTENTION: a real initiator retries
		}
		return nil, fmt.Errorf("INQUIRY VPD %#x: status %#x sense % x", page, st.status, st.sense)
	}
	return nil, fmt.Errorf("INQUIRY VPD %#x: unit attention kept coming", page)
}

// naaDesignator returns the first NAA designator with LOGICAL UNIT
// association in a Device Identification VPD page (SPC-4 7.8.6).
func naaDesignator(page []byte) ([]byte, error) {
	if len(page) < 4 || page[1] != 0x83 {
		return nil, fmt.Errorf("not a device identification page: % x", page[:min(len(page), 8)])
	}
	end := 4 + int(binary.BigEndian.Uint16(page[2:]))
	if end > len(page) {
		return nil, fmt.Errorf("page length %d exceeds the %d bytes returned", end, len(page))
	}
	for off := 4; off+4 <= end; {
		assoc := (page[off+1] >> 4) & 0x3
		typ := page[off+1] & 0x0f
		n := int(page[off+3])
		if off+4+n > end {
			return nil, fmt.Errorf("designator at %d overruns the page", off)
		}
		if typ == 3 && assoc == 0 {
			return page[off+4 : off+4+n], nil
		}
		off += 4 + n
	}
	return nil, errors.New("no NAA designator with logical-unit association")
}

// expectClosedOrRejected waits for the target to drop the connection. A
// Reject PDU (RFC 7143 11.17) before the close, or instead of it, is also
// accepted: what matters is that the target neither hangs on the bad PDU
// nor goes on as if it were valid.
func (r *rawConn) expectClosedOrRejected(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		p, err := r.readPDU(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return "", fmt.Errorf("connection still open and silent after %s", timeout)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
				return "closed", nil
			}
			return "", err
		}
		switch p.opcode() {
		case opReject:
			return fmt.Sprintf("rejected (reason %#x)", p.bhs[2]), nil
		case opNopIn:
			continue
		default:
			return "", fmt.Errorf("target answered the malformed PDU with opcode %#x", p.opcode())
		}
	}
	return "", fmt.Errorf("connection still open after %s", timeout)
}

func isReset(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}
