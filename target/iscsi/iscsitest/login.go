package iscsitest

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Login stages for CSG and NSG (RFC 7143 11.12).
const (
	StageSecurity    = 0
	StageOperational = 1
	StageFullFeature = 3
)

// Keys encodes key=value pairs as a text data segment: each pair followed
// by a NUL (RFC 7143 section 6).
func Keys(pairs ...string) []byte {
	var b []byte
	for _, p := range pairs {
		b = append(append(b, p...), 0)
	}
	return b
}

// ParseKeys decodes a text data segment into a map. Every pair must hold an
// '=' and end in a NUL, and no key may come twice: a target that sends
// otherwise is broken, and the test should say so.
func ParseKeys(data []byte) (map[string]string, error) {
	m := map[string]string{}
	for len(data) > 0 {
		i := bytes.IndexByte(data, 0)
		if i < 0 {
			return nil, fmt.Errorf("key=value pair %q not NUL-terminated", data)
		}
		item := string(data[:i])
		data = data[i+1:]
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("malformed key=value pair %q", item)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("key %q sent twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// LoginPDU sends one Login Request from stage csg to nsg (with the T bit
// when transit) carrying keys, and returns the response. It does not look
// at the response, so negative tests can check the status themselves.
func (c *Conn) LoginPDU(csg, nsg int, transit bool, keys []byte) (*PDU, error) {
	var h BHS
	h[0] = OpLoginReq | FlagImmediate
	h[1] = byte(csg<<2 | nsg)
	if transit {
		h[1] |= FlagTransit
	}
	copy(h[8:14], c.ISID[:])
	h.SetU16(14, c.TSIH)
	h.SetITT(c.ITT)
	h.SetU32(24, c.CmdSN)
	h.SetU32(28, c.ExpStatSN)
	if err := c.Send(&h, nil, keys); err != nil {
		return nil, err
	}
	p, err := c.recv()
	if err != nil {
		return nil, fmt.Errorf("login response: %w", err)
	}
	if p.Opcode() != OpLoginResp {
		return nil, fmt.Errorf("got opcode %#x, want a Login Response", p.Opcode())
	}
	return p, nil
}

// CHAP is the initiator's one-way CHAP identity (RFC 7143 12.1.3).
type CHAP struct {
	User, Secret string
}

// LoginOptions says how Login logs in.
type LoginOptions struct {
	// Initiator is the InitiatorName.
	Initiator string
	// Target is the TargetName; empty means a discovery session.
	Target string
	// CHAP, when set, authenticates with CHAP instead of AuthMethod=None.
	CHAP *CHAP
	// SkipSecurity starts in the operational stage, which a target that
	// requires no authentication allows; the names go with the
	// operational keys then.
	SkipSecurity bool
	// Security are extra keys for the first security-stage request; a key
	// named here replaces Login's own of that name.
	Security []string
	// Operational are the keys of the operational stage.
	Operational []string
}

// Login logs in to full feature phase and returns the keys the target sent
// (also kept in Params). Each stage must succeed and transit in one
// response; anything else is an error naming the stage, because a target
// that stalls or refuses a plain login is what the test is there to catch.
// On success TSIH holds the session's handle.
func (c *Conn) Login(o LoginOptions) (map[string]string, error) {
	names := []string{"InitiatorName=" + o.Initiator}
	if o.Target == "" {
		names = append(names, "SessionType=Discovery")
	} else {
		names = append(names, "SessionType=Normal", "TargetName="+o.Target)
	}
	got := map[string]string{}
	if !o.SkipSecurity {
		first := append(names, "AuthMethod=None")
		if o.CHAP != nil {
			first[len(first)-1] = "AuthMethod=CHAP"
		}
		p, err := c.LoginPDU(StageSecurity, StageOperational, o.CHAP == nil, Keys(override(first, o.Security)...))
		if err != nil {
			return nil, fmt.Errorf("security stage: %w", err)
		}
		if o.CHAP != nil {
			if p, err = c.chap(p, o.CHAP); err != nil {
				return nil, fmt.Errorf("security stage: %w", err)
			}
		}
		if err := c.merge(got, p, StageOperational); err != nil {
			return nil, fmt.Errorf("security stage: %w", err)
		}
		names = nil
	}
	p, err := c.LoginPDU(StageOperational, StageFullFeature, true, Keys(append(names, o.Operational...)...))
	if err != nil {
		return nil, fmt.Errorf("operational stage: %w", err)
	}
	if err := c.merge(got, p, StageFullFeature); err != nil {
		return nil, fmt.Errorf("operational stage: %w", err)
	}
	c.TSIH = p.BHS.U16(14)
	if c.TSIH == 0 {
		return nil, errors.New("final login response has TSIH 0")
	}
	c.Params = got
	return got, nil
}

// merge checks that p succeeded and moved to nsg, and adds its keys to m.
func (c *Conn) merge(m map[string]string, p *PDU, nsg int) error {
	if st := p.BHS.LoginStatus(); st != 0 {
		return fmt.Errorf("status %#04x (%q)", st, p.Data)
	}
	if f := p.BHS.Flags(); f&FlagTransit == 0 || int(f&3) != nsg {
		return fmt.Errorf("no transit to stage %d: flags %#x", nsg, f)
	}
	keys, err := ParseKeys(p.Data)
	if err != nil {
		return fmt.Errorf("response keys: %w", err)
	}
	for k, v := range keys {
		m[k] = v
	}
	return nil
}

// chap runs the CHAP exchange after the target answered AuthMethod in p,
// and returns the response to CHAP_N/CHAP_R.
func (c *Conn) chap(p *PDU, id *CHAP) (*PDU, error) {
	m, err := ParseKeys(p.Data)
	if err != nil {
		return nil, err
	}
	if st := p.BHS.LoginStatus(); st != 0 || m["AuthMethod"] != "CHAP" {
		return nil, fmt.Errorf("CHAP not accepted: status %#04x keys %v", st, m)
	}
	if p, err = c.LoginPDU(StageSecurity, StageOperational, false, Keys("CHAP_A=7,5")); err != nil {
		return nil, err
	}
	if m, err = ParseKeys(p.Data); err != nil {
		return nil, err
	}
	ident, err := strconv.ParseUint(m["CHAP_I"], 0, 8)
	if err != nil {
		return nil, fmt.Errorf("CHAP_I %q: %w", m["CHAP_I"], err)
	}
	chal, err := hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(m["CHAP_C"], "0x"), "0X"))
	if err != nil || len(chal) == 0 {
		return nil, fmt.Errorf("CHAP_C %q not a hex challenge", m["CHAP_C"])
	}
	r, err := CHAPResponse(m["CHAP_A"], byte(ident), id.Secret, chal)
	if err != nil {
		return nil, err
	}
	return c.LoginPDU(StageSecurity, StageOperational, true, Keys("CHAP_N="+id.User, "CHAP_R=0x"+hex.EncodeToString(r)))
}

// CHAPResponse computes a CHAP response: the hash named by CHAP_A value alg
// (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256, per the IANA CHAP algorithm
// registry) over the identifier, the secret and the challenge (RFC 1994
// section 4.1).
func CHAPResponse(alg string, ident byte, secret string, challenge []byte) ([]byte, error) {
	in := append(append([]byte{ident}, secret...), challenge...)
	switch alg {
	case "5":
		s := md5.Sum(in)
		return s[:], nil
	case "6":
		s := sha1.Sum(in)
		return s[:], nil
	case "7":
		s := sha256.Sum256(in)
		return s[:], nil
	case "8":
		s := sha3.Sum256(in)
		return s[:], nil
	}
	return nil, fmt.Errorf("unknown CHAP_A %q", alg)
}

// override returns base with each key of extra replacing base's pair of the
// same name, and the new keys appended.
func override(base, extra []string) []string {
	out := append([]string(nil), base...)
next:
	for _, e := range extra {
		k, _, _ := strings.Cut(e, "=")
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i] = e
				continue next
			}
		}
		out = append(out, e)
	}
	return out
}
