package apitest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// miniInitiator is the smallest iSCSI initiator that keeps one session
// open across an API change, which libiscsi's command-line tools (one
// session per run) cannot: the CAPACITY DATA HAS CHANGED unit attention is
// reported to the nexuses that existed when the capacity changed. It
// speaks RFC 7143 with no digests, ErrorRecoveryLevel 0, one command at a
// time.
type miniInitiator struct {
	c         net.Conn
	cmdSN     uint32
	expStatSN uint32
	itt       uint32
}

func dialInitiator(addr, initiator, target string) (*miniInitiator, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	m := &miniInitiator{c: c, cmdSN: 1}
	// Security stage (AuthMethod=None) then operational stage into full
	// feature phase.
	stages := []struct {
		flags byte
		keys  []string
	}{
		{0x81, []string{"InitiatorName=" + initiator, "TargetName=" + target, "SessionType=Normal", "AuthMethod=None"}},
		{0x87, []string{"HeaderDigest=None", "DataDigest=None", "MaxRecvDataSegmentLength=262144", "ErrorRecoveryLevel=0",
			"InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=262144", "FirstBurstLength=65536", "MaxConnections=1",
			"DataPDUInOrder=Yes", "DataSequenceInOrder=Yes", "DefaultTime2Wait=0", "DefaultTime2Retain=0", "MaxOutstandingR2T=1"}},
	}
	var tsih uint16
	for _, st := range stages {
		var h [48]byte
		h[0] = 0x43 // Login Request, immediate
		h[1] = st.flags
		copy(h[8:14], []byte{0x80, 0x00, 0x00, 0x12, 0x34, 0x56}) // ISID: random format
		binary.BigEndian.PutUint16(h[14:16], tsih)
		binary.BigEndian.PutUint32(h[16:20], m.itt)
		binary.BigEndian.PutUint32(h[24:28], m.cmdSN)
		binary.BigEndian.PutUint32(h[28:32], m.expStatSN)
		data := []byte(strings.Join(st.keys, "\x00") + "\x00")
		if err := m.send(h, data); err != nil {
			c.Close()
			return nil, err
		}
		rh, rdata, err := m.recv()
		if err != nil {
			c.Close()
			return nil, err
		}
		if rh[0]&0x3f != 0x23 {
			c.Close()
			return nil, fmt.Errorf("login: unexpected opcode %#x", rh[0])
		}
		if rh[36] != 0 {
			c.Close()
			return nil, fmt.Errorf("login refused: status class %d detail %d (%q)", rh[36], rh[37], rdata)
		}
		tsih = binary.BigEndian.Uint16(rh[14:16])
		m.expStatSN = binary.BigEndian.Uint32(rh[24:28]) + 1
	}
	return m, nil
}

func (m *miniInitiator) Close() error { return m.c.Close() }

func (m *miniInitiator) send(h [48]byte, data []byte) error {
	n := len(data)
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
	buf := append(h[:], data...)
	buf = append(buf, make([]byte, (4-n%4)%4)...)
	m.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := m.c.Write(buf)
	return err
}

func (m *miniInitiator) recv() ([48]byte, []byte, error) {
	var h [48]byte
	m.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(m.c, h[:]); err != nil {
		return h, nil, err
	}
	ahs := int(h[4]) * 4
	n := int(h[5])<<16 | int(h[6])<<8 | int(h[7])
	rest := make([]byte, ahs+n+(4-n%4)%4)
	if _, err := io.ReadFull(m.c, rest); err != nil {
		return h, nil, err
	}
	return h, rest[ahs : ahs+n], nil
}

// scsiResult is the outcome of one command.
type scsiResult struct {
	status         byte
	data           []byte
	key, asc, ascq byte
}

// command runs one CDB on LUN 0 with up to alloc bytes of data-in.
func (m *miniInitiator) command(cdb []byte, alloc int) (scsiResult, error) {
	return m.commandLUN(0, cdb, alloc)
}

// commandLUN runs one CDB on a LUN (SAM flat/peripheral addressing for
// LUNs below 256).
func (m *miniInitiator) commandLUN(lun uint8, cdb []byte, alloc int) (scsiResult, error) {
	m.itt++
	var h [48]byte
	h[0] = 0x01
	h[1] = 0x80 | 0x01 // F, simple task attribute
	if alloc > 0 {
		h[1] |= 0x40 // R
	}
	h[9] = lun
	binary.BigEndian.PutUint32(h[16:20], m.itt)
	binary.BigEndian.PutUint32(h[20:24], uint32(alloc))
	binary.BigEndian.PutUint32(h[24:28], m.cmdSN)
	binary.BigEndian.PutUint32(h[28:32], m.expStatSN)
	copy(h[32:48], cdb)
	m.cmdSN++
	if err := m.send(h, nil); err != nil {
		return scsiResult{}, err
	}
	var res scsiResult
	for {
		rh, data, err := m.recv()
		if err != nil {
			return res, err
		}
		switch rh[0] & 0x3f {
		case 0x20: // NOP-In: answer pings, ignore unsolicited ones
			if ttt := binary.BigEndian.Uint32(rh[20:24]); ttt != 0xffffffff {
				var out [48]byte
				out[0] = 0x40
				out[1] = 0x80
				binary.BigEndian.PutUint32(out[16:20], 0xffffffff)
				binary.BigEndian.PutUint32(out[20:24], ttt)
				binary.BigEndian.PutUint32(out[24:28], m.cmdSN)
				binary.BigEndian.PutUint32(out[28:32], m.expStatSN)
				if err := m.send(out, nil); err != nil {
					return res, err
				}
			}
		case 0x25: // Data-In
			res.data = append(res.data, data...)
			if rh[1]&0x01 != 0 { // S: status included
				res.status = rh[3]
				m.expStatSN = binary.BigEndian.Uint32(rh[24:28]) + 1
				return res, nil
			}
		case 0x21: // SCSI Response
			res.status = rh[3]
			m.expStatSN = binary.BigEndian.Uint32(rh[24:28]) + 1
			if len(data) >= 2 {
				sl := int(binary.BigEndian.Uint16(data[:2]))
				if sense := data[2:]; len(sense) >= sl && sl > 0 {
					sense = sense[:sl]
					switch sense[0] & 0x7f {
					case 0x70, 0x71:
						if len(sense) >= 14 {
							res.key, res.asc, res.ascq = sense[2]&0x0f, sense[12], sense[13]
						}
					case 0x72, 0x73:
						if len(sense) >= 4 {
							res.key, res.asc, res.ascq = sense[1]&0x0f, sense[2], sense[3]
						}
					}
				}
			}
			return res, nil
		case 0x32: // Async message: nothing to do for this test
		default:
			return res, fmt.Errorf("unexpected opcode %#x", rh[0]&0x3f)
		}
	}
}

// testUnitReady runs TEST UNIT READY.
func (m *miniInitiator) testUnitReady() (scsiResult, error) { return m.command(make([]byte, 6), 0) }

// readCapacity16 returns the number of blocks and the block size.
func (m *miniInitiator) readCapacity16() (uint64, uint32, scsiResult, error) {
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(cdb[10:14], 32)
	r, err := m.command(cdb, 32)
	if err != nil || r.status != 0 || len(r.data) < 12 {
		return 0, 0, r, err
	}
	return binary.BigEndian.Uint64(r.data[0:8]) + 1, binary.BigEndian.Uint32(r.data[8:12]), r, nil
}
