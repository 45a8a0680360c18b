// Package iscsitest is test tooling: a small iSCSI initiator (RFC 7143) for
// exercising an iSCSI target over TCP, the way net/http/httptest serves
// net/http tests. It dials, logs in (optionally with CHAP, extra or
// overriding keys, or one hand-built login PDU at a time for negative
// tests), runs SCSI commands with immediate data, unsolicited Data-Out and
// R2T handling, reads Data-In and responses, and sends task management,
// NOP, Text and Logout requests. It can also send any header or raw bytes
// so a test can feed a target malformed input.
//
// It owns its PDU encoding and decoding and does not import the target
// packages, so a target's own in-package tests can use it and a bug in the
// target's codec cannot hide itself by being on both ends. It is not an
// initiator for production use: one connection, one outstanding command at
// a time unless the caller builds PDUs itself, and no error recovery.
package iscsitest

import (
	"encoding/binary"
	"hash/crc32"
)

// Opcodes (RFC 7143 section 11.1.1). Op*Req and OpNOPOut, OpSCSICmd and
// OpDataOut are sent by initiators; the others by targets.
const (
	OpNOPOut     = 0x00
	OpSCSICmd    = 0x01
	OpTMFReq     = 0x02
	OpLoginReq   = 0x03
	OpTextReq    = 0x04
	OpDataOut    = 0x05
	OpLogoutReq  = 0x06
	OpSNACKReq   = 0x10
	OpNOPIn      = 0x20
	OpSCSIResp   = 0x21
	OpTMFResp    = 0x22
	OpLoginResp  = 0x23
	OpTextResp   = 0x24
	OpDataIn     = 0x25
	OpLogoutResp = 0x26
	OpR2T        = 0x31
	OpAsyncMsg   = 0x32
	OpReject     = 0x3f
)

// Header flag bits. Byte 0 carries FlagImmediate; the others live in byte 1
// and their meaning depends on the opcode, so several share a value.
const (
	// FlagImmediate (byte 0, the I bit) marks an immediate request.
	FlagImmediate = 0x40
	// FlagFinal is the F bit: last PDU of a sequence or command.
	FlagFinal = 0x80
	// FlagTransit is the T bit of login requests and responses.
	FlagTransit = 0x80
	// FlagContinue is the C bit of login and text PDUs.
	FlagContinue = 0x40
	// FlagRead is the R bit of a SCSI Command.
	FlagRead = 0x40
	// FlagWrite is the W bit of a SCSI Command.
	FlagWrite = 0x20
	// FlagAck is the A bit of a Data-In.
	FlagAck = 0x40
	// FlagOverflow is the O bit of a SCSI Response or final Data-In.
	FlagOverflow = 0x04
	// FlagUnderflow is the U bit of a SCSI Response or final Data-In.
	FlagUnderflow = 0x02
	// FlagStatus is the S bit of a Data-In that carries the status.
	FlagStatus = 0x01
)

// Task attributes for the ATTR field of a SCSI Command (RFC 7143 11.3.1).
const (
	AttrUntagged    = 0
	AttrSimple      = 1
	AttrOrdered     = 2
	AttrHeadOfQueue = 3
	AttrACA         = 4
)

// TagNone is the reserved tag 0xffffffff: no task (ITT) or no transfer (TTT).
const TagNone = 0xffffffff

// BHSLen is the size of the Basic Header Segment.
const BHSLen = 48

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// BHS is a Basic Header Segment. The accessors read and write big-endian
// fields at byte offsets as RFC 7143 section 11 lays them out.
type BHS [BHSLen]byte

// Opcode returns the opcode without the I bit.
func (h *BHS) Opcode() byte { return h[0] & 0x3f }

// Flags returns byte 1, the opcode-specific flags.
func (h *BHS) Flags() byte { return h[1] }

// AHSLen returns TotalAHSLength in bytes.
func (h *BHS) AHSLen() int { return int(h[4]) * 4 }

// DataLen returns DataSegmentLength.
func (h *BHS) DataLen() int { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }

// SetDataLen sets DataSegmentLength (24 bits; larger values are truncated,
// which a test may want).
func (h *BHS) SetDataLen(n int) { h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n) }

// LUN returns the 8-byte LUN field.
func (h *BHS) LUN() uint64 { return binary.BigEndian.Uint64(h[8:16]) }

// SetLUN sets the 8-byte LUN field.
func (h *BHS) SetLUN(l uint64) { binary.BigEndian.PutUint64(h[8:16], l) }

// ITT returns the Initiator Task Tag.
func (h *BHS) ITT() uint32 { return h.U32(16) }

// SetITT sets the Initiator Task Tag.
func (h *BHS) SetITT(v uint32) { h.SetU32(16, v) }

// U16 reads the 16-bit field at off.
func (h *BHS) U16(off int) uint16 { return binary.BigEndian.Uint16(h[off:]) }

// SetU16 writes the 16-bit field at off.
func (h *BHS) SetU16(off int, v uint16) { binary.BigEndian.PutUint16(h[off:], v) }

// U32 reads the 32-bit field at off.
func (h *BHS) U32(off int) uint32 { return binary.BigEndian.Uint32(h[off:]) }

// SetU32 writes the 32-bit field at off.
func (h *BHS) SetU32(off int, v uint32) { binary.BigEndian.PutUint32(h[off:], v) }

// StatSN returns the StatSN field of a target PDU.
func (h *BHS) StatSN() uint32 { return h.U32(24) }

// ExpCmdSN returns the ExpCmdSN field of a target PDU.
func (h *BHS) ExpCmdSN() uint32 { return h.U32(28) }

// LoginStatus returns Status-Class and Status-Detail of a Login Response as
// one number (0x0000 is success).
func (h *BHS) LoginStatus() uint16 { return h.U16(36) }

// PDU is one protocol data unit: header, additional header segments and
// data segment (without padding or digests).
type PDU struct {
	BHS  BHS
	AHS  []byte
	Data []byte
}

// Opcode returns the PDU's opcode.
func (p *PDU) Opcode() byte { return p.BHS.Opcode() }

// Encode returns p on the wire: the header with TotalAHSLength and
// DataSegmentLength filled in from AHS and Data, the AHS, an optional
// CRC32C header digest, the data padded to four bytes and an optional data
// digest over data and padding (RFC 7143 sections 11.1 and 13.1). AHS
// shorter than a multiple of four is padded too.
func Encode(p *PDU, headerDigest, dataDigest bool) []byte {
	h := p.BHS
	ahs := append([]byte(nil), p.AHS...)
	for len(ahs)%4 != 0 {
		ahs = append(ahs, 0)
	}
	h[4] = byte(len(ahs) / 4)
	h.SetDataLen(len(p.Data))
	b := make([]byte, 0, BHSLen+len(ahs)+8+len(p.Data)+3)
	b = append(b, h[:]...)
	b = append(b, ahs...)
	if headerDigest {
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	}
	if len(p.Data) > 0 {
		start := len(b)
		b = append(b, p.Data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		if dataDigest {
			b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
		}
	}
	return b
}
