package iscsi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// pdu is a fully decoded PDU as the tests' initiator sees it.
type pdu struct {
	hdr  bhs
	ahs  []byte
	data []byte
}

// decodePDU decodes one PDU from b with the pduReader connections use,
// then applies validateHeader.
func decodePDU(b []byte, maxData int, headerDigest, dataDigest bool) (*pdu, error) {
	p := &pduReader{r: bufio.NewReaderSize(bytes.NewReader(b), 64), maxData: maxData, headerDigest: headerDigest, dataDigest: dataDigest}
	out, err := readPDU(p)
	if err != nil {
		return nil, err
	}
	if err := validateHeader(&out.hdr, out.ahs); err != nil {
		return nil, err
	}
	return out, nil
}

// readPDU reads the next PDU from p the way a connection does: the header
// (BHS, AHS, header digest) with readHeader, then the data segment with
// readData, keeping copies of both.
func readPDU(p *pduReader) (*pdu, error) {
	if err := p.readHeader(); err != nil {
		return nil, err
	}
	out := &pdu{hdr: p.hdr}
	if p.ahsLen > 0 {
		out.ahs = append([]byte(nil), p.ahs[:p.ahsLen]...)
	}
	out.data = make([]byte, p.hdr.dataLen())
	if err := p.readData(out.data); err != nil {
		return nil, err
	}
	return out, nil
}

// validateHeader applies the structural checks that make the connection
// refuse a PDU whatever the session state: an opcode an initiator may
// send, and AHS that parses as a sequence of well-formed segments.
func validateHeader(h *bhs, ahs []byte) error {
	switch h.opcode() {
	case opNOPOut, opSCSICmd, opTMFReq, opLoginReq, opTextReq, opDataOut, opLogoutReq, opSNACKReq:
	default:
		return fmt.Errorf("%w: opcode %#x", errPDU, h.opcode())
	}
	if _, _, err := parseAHS(ahs); err != nil {
		return err
	}
	return nil
}

// encodePDU serialises a PDU into a new buffer, as an initiator would send
// it (the target's own writer is pduWriter). ahs must already be padded to
// a multiple of 4.
func encodePDU(h *bhs, ahs, data []byte, headerDigest, dataDigest bool) []byte {
	hh := *h
	hh[4] = byte(len(ahs) / 4)
	hh.setDataLen(len(data))
	out := make([]byte, 0, bhsLen+len(ahs)+8+len(data)+4)
	out = append(out, hh[:]...)
	out = append(out, ahs...)
	if headerDigest {
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, crc32c))
	}
	if len(data) > 0 {
		out = append(out, data...)
		var pad [4]byte
		out = append(out, pad[:pad4(len(data))]...)
		if dataDigest {
			crc := crc32.Update(0, crc32c, data)
			crc = crc32.Update(crc, crc32c, pad[:pad4(len(data))])
			out = binary.LittleEndian.AppendUint32(out, crc)
		}
	}
	return out
}
