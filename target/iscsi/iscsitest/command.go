package iscsitest

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// CDB10 builds a 10-byte READ/WRITE-style CDB: opcode, 32-bit LBA, 16-bit
// transfer length in blocks.
func CDB10(op byte, lba uint32, blocks uint16) []byte {
	b := make([]byte, 10)
	b[0] = op
	binary.BigEndian.PutUint32(b[2:6], lba)
	binary.BigEndian.PutUint16(b[7:9], blocks)
	return b
}

// CommandBHS builds a SIMPLE SCSI Command header for LUN 0 with a new ITT
// and the next CmdSN (which it consumes). cdb may be up to 16 bytes.
func (c *Conn) CommandBHS(cdb []byte, read, write, final bool, edtl uint32) *BHS {
	var h BHS
	h[0] = OpSCSICmd
	h[1] = AttrSimple
	if final {
		h[1] |= FlagFinal
	}
	if read {
		h[1] |= FlagRead
	}
	if write {
		h[1] |= FlagWrite
	}
	h.SetITT(c.NextITT())
	h.SetU32(20, edtl)
	h.SetU32(24, c.CmdSN)
	c.CmdSN++
	h.SetU32(28, c.ExpStatSN)
	copy(h[32:48], cdb)
	return &h
}

// Response is what a SCSI command brought back.
type Response struct {
	// Status is the SCSI status byte.
	Status byte
	// Flags is byte 1 of the PDU that carried the status (O and U bits).
	Flags byte
	// Residual is the Residual Count.
	Residual uint32
	// Data is the Data-In payload, in order.
	Data []byte
	// Sense is the sense data of a SCSI Response, without its length.
	Sense []byte
	// DataSNs are the DataSNs of the Data-Ins, in arrival order.
	DataSNs []uint32
	// DataIns counts the Data-In PDUs.
	DataIns int
	// R2Ts are the R2Ts that arrived for the command.
	R2Ts []*PDU
}

// ReadResponse reads PDUs for the command itt until its status arrives,
// answering the target's NOP-In pings on the way and collecting R2Ts
// without answering them. Data-In must come for itt, in order and without
// gaps; any other PDU is an error.
func (c *Conn) ReadResponse(itt uint32) (*Response, error) { return c.await(itt, nil) }

// await is ReadResponse; with r2t set, it is for a write: each R2T goes to
// r2t and a Data-In is an error.
func (c *Conn) await(itt uint32, r2t func(*PDU) error) (*Response, error) {
	r := &Response{}
	for {
		p, err := c.recv()
		if err != nil {
			return nil, fmt.Errorf("waiting for ITT %#x: %w", itt, err)
		}
		switch op := p.Opcode(); {
		case op == OpDataIn && r2t == nil:
			if p.BHS.ITT() != itt {
				return nil, fmt.Errorf("Data-In for ITT %#x, want %#x", p.BHS.ITT(), itt)
			}
			if off := p.BHS.U32(40); int(off) != len(r.Data) {
				return nil, fmt.Errorf("Data-In offset %d, want %d", off, len(r.Data))
			}
			r.Data = append(r.Data, p.Data...)
			r.DataSNs = append(r.DataSNs, p.BHS.U32(36))
			r.DataIns++
			if p.BHS.Flags()&FlagStatus != 0 {
				r.Status, r.Flags, r.Residual = p.BHS[3], p.BHS.Flags(), p.BHS.U32(44)
				return r, nil
			}
		case op == OpSCSIResp:
			if p.BHS.ITT() != itt {
				return nil, fmt.Errorf("SCSI Response for ITT %#x, want %#x", p.BHS.ITT(), itt)
			}
			r.Status, r.Flags, r.Residual = p.BHS[3], p.BHS.Flags(), p.BHS.U32(44)
			if r.Sense, err = senseOf(p.Data); err != nil {
				return nil, err
			}
			return r, nil
		case op == OpR2T:
			r.R2Ts = append(r.R2Ts, p)
			if r2t != nil {
				if err := r2t(p); err != nil {
					return nil, err
				}
			}
		case op == OpNOPIn:
			if err := c.AnswerNOP(p); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unexpected opcode %#x waiting for ITT %#x", op, itt)
		}
	}
}

// senseOf extracts the sense data from a SCSI Response data segment
// (SenseLength then sense, RFC 7143 11.4.7).
func senseOf(data []byte) ([]byte, error) {
	if len(data) < 2 {
		return nil, nil
	}
	n := int(binary.BigEndian.Uint16(data))
	if 2+n > len(data) {
		return nil, fmt.Errorf("SenseLength %d exceeds the %d-byte data segment", n, len(data))
	}
	return data[2 : 2+n], nil
}

// Read runs a data-in or no-data command on LUN 0 expecting up to edtl
// bytes, and returns its response.
func (c *Conn) Read(cdb []byte, edtl uint32) (*Response, error) {
	h := c.CommandBHS(cdb, edtl > 0, false, true, edtl)
	if err := c.Send(h, nil, nil); err != nil {
		return nil, err
	}
	return c.ReadResponse(h.ITT())
}

// DataOut sends one Data-Out PDU.
func (c *Conn) DataOut(itt, ttt, dataSN, offset uint32, final bool, data []byte) error {
	var h BHS
	h[0] = OpDataOut
	if final {
		h[1] = FlagFinal
	}
	h.SetITT(itt)
	h.SetU32(20, ttt)
	h.SetU32(28, c.ExpStatSN)
	h.SetU32(36, dataSN)
	h.SetU32(40, offset)
	return c.Send(&h, nil, data)
}

// dataOuts sends data[off:off+n] as Data-Outs of at most seg bytes.
func (c *Conn) dataOuts(itt, ttt, off, n uint32, seg int, data []byte) error {
	sn := uint32(0)
	for done := uint32(0); done < n; sn++ {
		m := min(uint32(seg), n-done)
		if err := c.DataOut(itt, ttt, sn, off+done, done+m == n, data[off+done:off+done+m]); err != nil {
			return err
		}
		done += m
	}
	return nil
}

// Write runs a data-out command on LUN 0 as the negotiated Params allow:
// immediate data, then unsolicited Data-Out up to FirstBurstLength unless
// InitialR2T, then Data-Out for each R2T, in PDUs of at most seg bytes.
func (c *Conn) Write(cdb, data []byte, seg int) (*Response, error) {
	immediate := c.Params["ImmediateData"] == "Yes"
	initialR2T := c.Params["InitialR2T"] != "No"
	first := 65536
	if v, err := strconv.Atoi(c.Params["FirstBurstLength"]); err == nil {
		first = v
	}
	var imm []byte
	if immediate {
		imm = data[:min(len(data), seg, first)]
	}
	unsol := !initialR2T && len(imm) < min(len(data), first)
	h := c.CommandBHS(cdb, false, true, !unsol, uint32(len(data)))
	itt := h.ITT()
	if err := c.Send(h, nil, imm); err != nil {
		return nil, err
	}
	if unsol {
		limit := uint32(min(len(data), first))
		if err := c.dataOuts(itt, TagNone, uint32(len(imm)), limit-uint32(len(imm)), seg, data); err != nil {
			return nil, err
		}
	}
	return c.await(itt, func(p *PDU) error {
		off, n := p.BHS.U32(40), p.BHS.U32(44)
		if uint64(off)+uint64(n) > uint64(len(data)) {
			return fmt.Errorf("R2T for %d bytes at %d beyond the %d-byte write", n, off, len(data))
		}
		return c.dataOuts(itt, p.BHS.U32(20), off, n, seg, data)
	})
}

// AnswerNOP answers a NOP-In that asks for it (TTT not 0xffffffff) with a
// NOP-Out echoing its TTT; other NOP-Ins need no answer.
func (c *Conn) AnswerNOP(p *PDU) error {
	if p.BHS.U32(20) == TagNone {
		return nil
	}
	h := c.immediate(OpNOPOut, FlagFinal, TagNone)
	h.SetU32(20, p.BHS.U32(20))
	return c.Send(&h, nil, nil)
}

// Ping sends an immediate NOP-Out that asks for a NOP-In and returns its
// ITT; the caller reads the answer.
func (c *Conn) Ping() (uint32, error) {
	h := c.immediate(OpNOPOut, FlagFinal, c.NextITT())
	h.SetU32(20, TagNone)
	return h.ITT(), c.Send(&h, nil, nil)
}

// immediate starts the header of an immediate request: it carries CmdSN
// without consuming it (RFC 7143 3.2.2.1).
func (c *Conn) immediate(op, flags byte, itt uint32) BHS {
	var h BHS
	h[0] = op | FlagImmediate
	h[1] = flags
	h.SetITT(itt)
	h.SetU32(24, c.CmdSN)
	h.SetU32(28, c.ExpStatSN)
	return h
}

// TMF functions (RFC 7143 11.5.1).
const (
	TMFAbortTask        = 1
	TMFAbortTaskSet     = 2
	TMFClearACA         = 3
	TMFClearTaskSet     = 4
	TMFLogicalUnitReset = 5
	TMFTargetWarmReset  = 6
	TMFTargetColdReset  = 7
	TMFTaskReassign     = 8
)

// TMF sends an immediate Task Management Function Request and returns the
// response, answering NOP-In pings on the way. refITT and refCmdSN name the
// task for ABORT TASK; pass TagNone and 0 otherwise.
func (c *Conn) TMF(fn byte, lun uint64, refITT, refCmdSN uint32) (*PDU, error) {
	h := c.immediate(OpTMFReq, FlagFinal|fn&0x7f, c.NextITT())
	h.SetLUN(lun)
	h.SetU32(20, refITT)
	h.SetU32(32, refCmdSN)
	if err := c.Send(&h, nil, nil); err != nil {
		return nil, err
	}
	return c.awaitReply(h.ITT(), OpTMFResp)
}

// Text sends a final Text Request with keys (SendTargets=All, say) and
// returns the keys of the answer with the number of Text Responses it took:
// while a response is not final, Text asks for the rest with an empty
// request echoing its Target Transfer Tag (RFC 7143 11.10.4).
func (c *Conn) Text(keys []byte) ([]byte, int, error) {
	h := c.immediate(OpTextReq, FlagFinal, c.NextITT())
	h.SetU32(20, TagNone)
	var all []byte
	for n := 1; ; n++ {
		if err := c.Send(&h, nil, keys); err != nil {
			return nil, n, err
		}
		p, err := c.awaitReply(h.ITT(), OpTextResp)
		if err != nil {
			return nil, n, err
		}
		all = append(all, p.Data...)
		if p.BHS.Flags()&FlagFinal != 0 {
			return all, n, nil
		}
		keys = nil
		h.SetU32(20, p.BHS.U32(20))
		h.SetU32(28, c.ExpStatSN)
	}
}

// Logout reasons (RFC 7143 11.14.1).
const (
	LogoutSession    = 0
	LogoutConnection = 1
)

// Logout sends an immediate Logout Request with reason and returns the
// Logout Response.
func (c *Conn) Logout(reason byte) (*PDU, error) {
	h := c.immediate(OpLogoutReq, FlagFinal|reason&0x7f, c.NextITT())
	if err := c.Send(&h, nil, nil); err != nil {
		return nil, err
	}
	return c.awaitReply(h.ITT(), OpLogoutResp)
}

// awaitReply reads until the PDU of opcode op for itt, answering NOP-In
// pings; a Reject or anything else is an error.
func (c *Conn) awaitReply(itt uint32, op byte) (*PDU, error) {
	for {
		p, err := c.recv()
		if err != nil {
			return nil, fmt.Errorf("waiting for opcode %#x: %w", op, err)
		}
		switch {
		case p.Opcode() == op && p.BHS.ITT() == itt:
			return p, nil
		case p.Opcode() == OpNOPIn:
			if err := c.AnswerNOP(p); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("got opcode %#x ITT %#x waiting for opcode %#x ITT %#x", p.Opcode(), p.BHS.ITT(), op, itt)
		}
	}
}
