package iscsitest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"syscall"
	"time"
)

// DefaultTimeout bounds each Recv made by the higher-level methods (Login,
// Read, Write, ...), so a test fails rather than hangs on a silent target.
const DefaultTimeout = 10 * time.Second

// Conn is one initiator connection. Its exported fields are the session
// state a test may read or deliberately corrupt between calls; the methods
// keep them current (ITT, CmdSN and ExpStatSN advance as PDUs go and come).
type Conn struct {
	// ISID is the initiator part of the session ID sent at login.
	ISID [6]byte
	// TSIH is 0 for a new session; Login sets it from the final response.
	// Set it before logging in to add a connection to a session.
	TSIH uint16
	// ITT is the last Initiator Task Tag handed out; NextITT increments it.
	ITT uint32
	// CmdSN is the CmdSN the next non-immediate command carries.
	CmdSN uint32
	// ExpStatSN is sent on every request; Recv sets it to StatSN+1 of
	// every PDU that carries a status.
	ExpStatSN uint32
	// HeaderDigest and DataDigest switch CRC32C digests on for everything
	// sent and received after they are set (tests set them once login has
	// negotiated them).
	HeaderDigest, DataDigest bool
	// MaxRecvDataSegmentLength is the largest data segment Recv accepts.
	MaxRecvDataSegmentLength int
	// Params are the keys the target answered during Login; Write reads
	// ImmediateData, InitialR2T and FirstBurstLength from them.
	Params map[string]string
	// Timeout bounds each Recv of the higher-level methods.
	Timeout time.Duration

	nc net.Conn
	r  *bufio.Reader
}

// NewConn wraps an established connection, with ISID 80 00 00 00 00 01
// (random format, fixed so tests are repeatable), CmdSN 1 and ITT 1.
func NewConn(nc net.Conn) *Conn {
	return &Conn{
		ISID:                     [6]byte{0x80, 0, 0, 0, 0, 1},
		ITT:                      1,
		CmdSN:                    1,
		MaxRecvDataSegmentLength: 1 << 24,
		Timeout:                  DefaultTimeout,
		nc:                       nc,
		r:                        bufio.NewReader(nc),
	}
}

// Dial opens a TCP connection to addr.
func Dial(addr string) (*Conn, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return NewConn(nc), nil
}

// DialFrom opens a TCP connection to addr from local address src, so that a
// test can play another initiator host (all of 127.0.0.0/8 is loopback on
// Linux).
func DialFrom(src, addr string) (*Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, src, err)
	}
	return NewConn(nc), nil
}

// NetConn returns the underlying connection, for raw writes, deadlines or
// closing it under the target.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// NextITT hands out a new Initiator Task Tag.
func (c *Conn) NextITT() uint32 { c.ITT++; return c.ITT }

// Send encodes and sends one PDU with the connection's digest settings.
// The header goes as given: Send fills in only the two length fields.
func (c *Conn) Send(h *BHS, ahs, data []byte) error {
	return c.SendRaw(Encode(&PDU{BHS: *h, AHS: ahs, Data: data}, c.HeaderDigest, c.DataDigest))
}

// SendRaw writes b as it is, for malformed input.
func (c *Conn) SendRaw(b []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// ErrDigest reports a header or data digest that does not match.
var ErrDigest = errors.New("iscsitest: digest mismatch")

// Recv reads the next PDU, waiting at most d, and checks its digests. It
// advances ExpStatSN past every PDU that carries a StatSN: responses,
// rejects, asynchronous messages, NOP-Ins answering a ping and Data-Ins
// with the S bit.
func (c *Conn) Recv(d time.Duration) (*PDU, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	p := &PDU{}
	if _, err := io.ReadFull(c.r, p.BHS[:]); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	p.AHS = make([]byte, p.BHS.AHSLen())
	if _, err := io.ReadFull(c.r, p.AHS); err != nil {
		return nil, fmt.Errorf("read AHS: %w", err)
	}
	if c.HeaderDigest {
		if err := c.digest(append(p.BHS[:], p.AHS...)); err != nil {
			return nil, fmt.Errorf("header: %w", err)
		}
	}
	n := p.BHS.DataLen()
	if n > c.MaxRecvDataSegmentLength {
		return nil, fmt.Errorf("data segment of %d bytes exceeds %d", n, c.MaxRecvDataSegmentLength)
	}
	if n > 0 {
		padded := make([]byte, (n+3)&^3)
		if _, err := io.ReadFull(c.r, padded); err != nil {
			return nil, fmt.Errorf("read data segment (%d bytes): %w", n, err)
		}
		if c.DataDigest {
			if err := c.digest(padded); err != nil {
				return nil, fmt.Errorf("data: %w", err)
			}
		}
		p.Data = padded[:n]
	}
	switch p.Opcode() {
	case OpSCSIResp, OpTMFResp, OpTextResp, OpLogoutResp, OpReject, OpAsyncMsg, OpLoginResp:
		c.ExpStatSN = p.BHS.StatSN() + 1
	case OpNOPIn:
		// A NOP-In with ITT 0xffffffff is the target's own ping; its
		// StatSN is not advanced (RFC 7143 11.19).
		if p.BHS.ITT() != TagNone {
			c.ExpStatSN = p.BHS.StatSN() + 1
		}
	case OpDataIn:
		if p.BHS.Flags()&FlagStatus != 0 {
			c.ExpStatSN = p.BHS.StatSN() + 1
		}
	}
	return p, nil
}

// digest checks the CRC32C that follows covered.
func (c *Conn) digest(covered []byte) error {
	var d [4]byte
	if _, err := io.ReadFull(c.r, d[:]); err != nil {
		return fmt.Errorf("read digest: %w", err)
	}
	if binary.LittleEndian.Uint32(d[:]) != crc32.Checksum(covered, castagnoli) {
		return ErrDigest
	}
	return nil
}

// recv is Recv with c.Timeout.
func (c *Conn) recv() (*PDU, error) { return c.Recv(c.Timeout) }

// ExpectClose waits for the target to close the connection, at most d per
// PDU. Up to ten Rejects and NOP-Ins may come first; any other PDU, or d
// passing in silence, is an error. A read error other than a timeout counts
// as the close.
func (c *Conn) ExpectClose(d time.Duration) error {
	for i := 0; i < 10; i++ {
		p, err := c.Recv(d)
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				return fmt.Errorf("connection not closed: %w", err)
			}
			return nil
		}
		if op := p.Opcode(); op != OpReject && op != OpNOPIn {
			return fmt.Errorf("expected close, got opcode %#x", op)
		}
	}
	return errors.New("connection not closed after ten PDUs")
}

// ExpectRejectOrClose waits up to d for the target either to send a Reject
// or to drop the connection, skipping NOP-Ins, and says which. Any other
// PDU, silence, or a read error that is not an end of stream or reset is an
// error.
func (c *Conn) ExpectRejectOrClose(d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		p, err := c.Recv(time.Until(deadline))
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				return "", fmt.Errorf("connection still open and silent after %s", d)
			}
			if Closed(err) {
				return "closed", nil
			}
			return "", err
		}
		switch p.Opcode() {
		case OpReject:
			return fmt.Sprintf("rejected (reason %#x)", p.BHS[2]), nil
		case OpNOPIn:
		default:
			return "", fmt.Errorf("target answered with opcode %#x", p.Opcode())
		}
	}
	return "", fmt.Errorf("connection still open after %s", d)
}

// Closed reports whether err says the peer ended the connection: end of
// stream, a reset or a broken pipe.
func Closed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
