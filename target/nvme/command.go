// Package nvme is Anvil's NVMe command core: NVM subsystems, their
// namespaces and controllers, and the admin, I/O and Fabrics commands a
// host sends them. It is transport-independent: a transport binding
// (target/nvmetcp for NVMe/TCP) turns its PDUs into Commands, hands the
// first one of a connection to Target.Connect and every later one to the
// Queue it got, and sends back the Completion and data.
//
// The layering follows the NVMe over Fabrics model: a transport carries
// capsules, the controller executes them, and the namespaces are the
// engine's volumes.
package nvme

import "encoding/binary"

// Opcodes of the commands the core implements.
const (
	// Admin command set.
	OpDeleteIOSQ     = 0x00
	OpGetLogPage     = 0x02
	OpDeleteIOCQ     = 0x04
	OpIdentify       = 0x06
	OpAbort          = 0x08
	OpSetFeatures    = 0x09
	OpGetFeatures    = 0x0a
	OpAsyncEventReq  = 0x0c
	OpKeepAlive      = 0x18
	OpFabrics        = 0x7f
	OpNamespaceMgmt  = 0x0d
	OpFirmwareCommit = 0x10

	// NVM command set (I/O queues).
	OpFlush       = 0x00
	OpWrite       = 0x01
	OpRead        = 0x02
	OpCompare     = 0x05
	OpWriteZeroes = 0x08
	OpDatasetMgmt = 0x09
)

// Fabrics command types (FCTYPE, byte 4 of a Fabrics command).
const (
	FabricsPropertySet = 0x00
	FabricsConnect     = 0x01
	FabricsPropertyGet = 0x04
	FabricsAuthSend    = 0x05
	FabricsAuthRecv    = 0x06
	FabricsDisconnect  = 0x08
)

// Fused operation values (FUSE, bits 1:0 of command byte 1).
const (
	FuseNone   = 0
	FuseFirst  = 1
	FuseSecond = 2
)

// SGL descriptor types (upper nibble of byte 15 of the descriptor) and
// subtypes (lower nibble) a Fabrics host uses.
const (
	SGLDataBlock          = 0x0
	SGLTransportDataBlock = 0x5
	SGLSubtypeAddress     = 0x0
	SGLSubtypeOffset      = 0x1
	SGLSubtypeTransport   = 0xa
)

// SQESize and CQESize are the sizes of a submission and a completion queue
// entry on every Fabrics transport.
const (
	SQESize = 64
	CQESize = 16
)

// Command is one submission queue entry as it arrived, with the data the
// host sent with it.
type Command struct {
	// SQE is the entry as on the wire (little-endian fields).
	SQE [SQESize]byte
	// Data is the command's host-to-controller data (write data, Connect
	// data, Set Features data), nil if it has none.
	Data []byte
}

// Opcode is the command's opcode (CDW0 bits 7:0).
func (c *Command) Opcode() uint8 { return c.SQE[0] }

// Fuse is the command's fused operation (CDW0 bits 9:8).
func (c *Command) Fuse() uint8 { return c.SQE[1] & 0x3 }

// PSDT is the PRP or SGL for data transfer field (CDW0 bits 15:14).
func (c *Command) PSDT() uint8 { return c.SQE[1] >> 6 }

// CID is the command identifier (CDW0 bits 31:16).
func (c *Command) CID() uint16 { return binary.LittleEndian.Uint16(c.SQE[2:]) }

// NSID is the namespace identifier (CDW1).
func (c *Command) NSID() uint32 { return binary.LittleEndian.Uint32(c.SQE[4:]) }

// FCType is a Fabrics command's type (byte 4; only meaningful when
// Opcode is OpFabrics).
func (c *Command) FCType() uint8 { return c.SQE[4] }

// CDW returns command dword n, for n from 10 to 15.
func (c *Command) CDW(n int) uint32 { return binary.LittleEndian.Uint32(c.SQE[4*n:]) }

// SGL returns the first SGL descriptor (DPTR, bytes 24..39): its address
// or offset, its length, and its type and subtype.
func (c *Command) SGL() (addr uint64, length uint32, typ, subtype uint8) {
	d := c.SQE[24:40]
	return binary.LittleEndian.Uint64(d), binary.LittleEndian.Uint32(d[8:]), d[15] >> 4, d[15] & 0xf
}

// DataLength is the length of the command's data buffer as its SGL
// descriptor gives it.
func (c *Command) DataLength() uint32 {
	_, n, _, _ := c.SGL()
	return n
}

// Direction is a command's data transfer direction.
type Direction uint8

// Data transfer directions.
const (
	DirNone Direction = iota
	DirHostToController
	DirControllerToHost
	// DirBidirectional is reserved by the specification; transports
	// refuse such commands.
	DirBidirectional
)

// Direction reports the command's data transfer direction, which the NVMe
// base specification encodes in the low two bits of the opcode (of FCTYPE
// for a Fabrics command).
func (c *Command) Direction() Direction {
	op := c.Opcode()
	if op == OpFabrics {
		op = c.FCType()
	}
	return Direction(op & 0x3)
}

// Completion is the core's answer to one command. The transport builds the
// completion queue entry from it: SQHD, SQID, CID and the phase tag are the
// transport's.
type Completion struct {
	// DW0 and DW1 are the command-specific dwords.
	DW0, DW1 uint32
	// Status is the status field.
	Status Status
}

// CQE encodes the completion queue entry for the command cid of queue
// sqid, at submission queue head sqhd. Fabrics transports carry no phase
// tag, so bit 0 of the status word stays clear.
func (c Completion) CQE(sqhd, sqid, cid uint16) [CQESize]byte {
	var e [CQESize]byte
	binary.LittleEndian.PutUint32(e[0:], c.DW0)
	binary.LittleEndian.PutUint32(e[4:], c.DW1)
	binary.LittleEndian.PutUint16(e[8:], sqhd)
	binary.LittleEndian.PutUint16(e[10:], sqid)
	binary.LittleEndian.PutUint16(e[12:], cid)
	binary.LittleEndian.PutUint16(e[14:], uint16(c.Status)<<1)
	return e
}
