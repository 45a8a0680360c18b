package iscsi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Text keys (RFC 7143 §6, §13) are "key=value" strings, each followed by a
// NUL byte, carried in Login and Text data segments.

// Limits from RFC 7143 §6.1: key names are at most 63 bytes, values at most
// 255 bytes unless the key says otherwise (CHAP binary values and
// SendTargets responses run longer, so we allow up to 8 KiB).
const (
	maxKeyName  = 63
	maxKeyValue = 8192
	// maxTextLen bounds the text accumulated across Login/Text PDUs with
	// the C bit, so a peer cannot make us buffer without limit.
	maxTextLen = 64 * 1024
)

// Special values (RFC 7143 §6.2).
const (
	valReject        = "Reject"
	valIrrelevant    = "Irrelevant"
	valNotUnderstood = "NotUnderstood"
)

// kv is one key=value pair, kept in the order received.
type kv struct {
	Key, Value string
}

// parseKeys splits a text data segment into key=value pairs. Trailing NUL
// padding is accepted; a pair without '=' or with an invalid key name is an
// error. Repeated keys are legal in responses (TargetName, TargetAddress);
// negotiation rejects repeats itself.
func parseKeys(data []byte) ([]kv, error) {
	var out []kv
	for len(data) > 0 {
		i := bytes.IndexByte(data, 0)
		var item []byte
		if i < 0 {
			// The RFC wants a NUL after the last pair; tolerate its absence.
			item, data = data, nil
		} else {
			item, data = data[:i], data[i+1:]
		}
		if len(item) == 0 {
			// Only padding NULs may follow.
			if len(bytes.Trim(data, "\x00")) != 0 {
				return nil, fmt.Errorf("empty key=value pair")
			}
			break
		}
		eq := bytes.IndexByte(item, '=')
		if eq < 0 {
			return nil, fmt.Errorf("key=value pair %q without '='", truncate(item))
		}
		k, v := item[:eq], item[eq+1:]
		if err := checkKeyName(k); err != nil {
			return nil, err
		}
		if len(v) > maxKeyValue {
			return nil, fmt.Errorf("value of %q too long (%d bytes)", k, len(v))
		}
		out = append(out, kv{Key: string(k), Value: string(v)})
	}
	return out, nil
}

func truncate(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// checkKeyName enforces RFC 7143 §6.1: 1-63 characters from the set
// letters, digits, '.', '-', '+', '@', '_'.
func checkKeyName(k []byte) error {
	if len(k) == 0 || len(k) > maxKeyName {
		return fmt.Errorf("bad key name length %d", len(k))
	}
	for _, c := range k {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '+', c == '@', c == '_':
		default:
			return fmt.Errorf("bad character %q in key name", c)
		}
	}
	return nil
}

// appendKey appends key=value and its NUL terminator.
func appendKey(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, '=')
	b = append(b, v...)
	return append(b, 0)
}

// Params are a session's negotiated operational parameters (RFC 7143 §13).
type Params struct {
	// HeaderDigest and DataDigest are "CRC32C" or "None".
	HeaderDigest string `json:"header_digest"`
	DataDigest   string `json:"data_digest"`
	// MaxConnections is the number of connections the session may have.
	MaxConnections uint32 `json:"max_connections"`
	// InitialR2T: the initiator must wait for an R2T before sending any
	// data beyond immediate data.
	InitialR2T bool `json:"initial_r2t"`
	// ImmediateData: the initiator may send data with the SCSI Command PDU.
	ImmediateData bool `json:"immediate_data"`
	// MaxRecvDataSegmentLength is the largest data segment the target
	// accepts (declared by us).
	MaxRecvDataSegmentLength uint32 `json:"max_recv_data_segment_length"`
	// MaxXmitDataSegmentLength is the largest data segment the initiator
	// accepts (its MaxRecvDataSegmentLength), i.e. what we may send.
	MaxXmitDataSegmentLength uint32 `json:"max_xmit_data_segment_length"`
	// MaxBurstLength bounds one Data-In sequence and one R2T's solicited
	// data.
	MaxBurstLength uint32 `json:"max_burst_length"`
	// FirstBurstLength bounds unsolicited data (immediate plus unsolicited
	// Data-Out) per command.
	FirstBurstLength uint32 `json:"first_burst_length"`
	// DefaultTime2Wait and DefaultTime2Retain are the logout/reconnect
	// timers in seconds.
	DefaultTime2Wait   uint32 `json:"default_time2wait"`
	DefaultTime2Retain uint32 `json:"default_time2retain"`
	// MaxOutstandingR2T is how many R2Ts a task may have unanswered.
	MaxOutstandingR2T uint32 `json:"max_outstanding_r2t"`
	// DataPDUInOrder and DataSequenceInOrder are always true here: data
	// arrives in increasing offset order.
	DataPDUInOrder      bool `json:"data_pdu_in_order"`
	DataSequenceInOrder bool `json:"data_sequence_in_order"`
	// ErrorRecoveryLevel is always 0 (session recovery only).
	ErrorRecoveryLevel uint32 `json:"error_recovery_level"`
}

// defaultParams are the RFC 7143 defaults that apply to keys never
// negotiated.
func defaultParams() Params {
	return Params{
		HeaderDigest:             "None",
		DataDigest:               "None",
		MaxConnections:           1,
		InitialR2T:               true,
		ImmediateData:            true,
		MaxRecvDataSegmentLength: 8192,
		MaxXmitDataSegmentLength: 8192,
		MaxBurstLength:           262144,
		FirstBurstLength:         65536,
		DefaultTime2Wait:         2,
		DefaultTime2Retain:       20,
		MaxOutstandingR2T:        1,
		DataPDUInOrder:           true,
		DataSequenceInOrder:      true,
		ErrorRecoveryLevel:       0,
	}
}

// negKind is a key's negotiation function (RFC 7143 §6.2).
type negKind int

const (
	kindDeclarative negKind = iota // value declared, no answer owed (beyond echo rules)
	kindList                       // first of the offer's values that we support
	kindOr                         // boolean OR
	kindAnd                        // boolean AND
	kindMin                        // numerical minimum
	kindMax                        // numerical maximum
)

// keyDef describes one operational or session key.
type keyDef struct {
	kind     negKind
	min, max uint64
	// lo marks leading-only keys (RFC 7143 §13): they can be negotiated
	// only at login, never in a Text Request.
	lo bool
	// discIrrelevant: the key has no meaning in a Discovery session.
	discIrrelevant bool
}

var keyDefs = map[string]keyDef{
	"HeaderDigest":             {kind: kindList},
	"DataDigest":               {kind: kindList},
	"MaxConnections":           {kind: kindMin, min: 1, max: 65535, lo: true, discIrrelevant: true},
	"InitialR2T":               {kind: kindOr, lo: true, discIrrelevant: true},
	"ImmediateData":            {kind: kindAnd, lo: true, discIrrelevant: true},
	"MaxRecvDataSegmentLength": {kind: kindDeclarative, min: 512, max: 1<<24 - 1},
	"MaxBurstLength":           {kind: kindMin, min: 512, max: 1<<24 - 1, lo: true, discIrrelevant: true},
	"FirstBurstLength":         {kind: kindMin, min: 512, max: 1<<24 - 1, lo: true, discIrrelevant: true},
	"DefaultTime2Wait":         {kind: kindMax, min: 0, max: 3600, lo: true},
	"DefaultTime2Retain":       {kind: kindMin, min: 0, max: 3600, lo: true},
	"MaxOutstandingR2T":        {kind: kindMin, min: 1, max: 65535, lo: true, discIrrelevant: true},
	"DataPDUInOrder":           {kind: kindOr, lo: true, discIrrelevant: true},
	"DataSequenceInOrder":      {kind: kindOr, lo: true, discIrrelevant: true},
	"ErrorRecoveryLevel":       {kind: kindMin, min: 0, max: 2, lo: true},
	"IFMarker":                 {kind: kindAnd, lo: true},
	"OFMarker":                 {kind: kindAnd, lo: true},
	"OFMarkInt":                {kind: kindDeclarative, lo: true},
	"IFMarkInt":                {kind: kindDeclarative, lo: true},
}

// negotiator holds one connection's login negotiation state: what the
// target supports and the values agreed so far.
type negotiator struct {
	// ours are the target's limits and preferences for each key.
	ours Params
	// cur are the values negotiated so far (defaults until a key is agreed).
	cur       Params
	discovery bool
	// crc32c says whether we offer CRC32C digests.
	crc32c bool
	// seen records keys already negotiated in this login, because
	// renegotiating a key in the same login is a protocol error.
	seen map[string]bool
	// declaredMRDSL records that we have declared our
	// MaxRecvDataSegmentLength.
	declaredMRDSL bool
	// rejectedMRDSL is set when the initiator's MaxRecvDataSegmentLength
	// was answered Reject, until the login step that sent that answer is
	// done.
	rejectedMRDSL bool
}

func newNegotiator(ours Params, crc bool) *negotiator {
	cur := defaultParams()
	// Our own receive limit is a declaration, not a negotiation: it
	// applies from the moment we state it (in the final login response at
	// the latest).
	cur.MaxRecvDataSegmentLength = ours.MaxRecvDataSegmentLength
	return &negotiator{ours: ours, cur: cur, crc32c: crc, seen: map[string]bool{}}
}

// errNegotiation is a key exchange the target cannot accept; login fails
// with "initiator error".
type errNegotiation struct{ msg string }

func (e *errNegotiation) Error() string { return "negotiation: " + e.msg }

// negotiate answers one operational key offered by the initiator and
// records the result. It returns the value to send back, or "" when the
// key needs no answer. ok is false for a protocol violation that must fail
// the login.
func (n *negotiator) negotiate(key, val string) (string, error) {
	def, known := keyDefs[key]
	if !known {
		return valNotUnderstood, nil
	}
	if n.seen[key] {
		return "", &errNegotiation{fmt.Sprintf("key %s negotiated twice", key)}
	}
	n.seen[key] = true
	if val == valNotUnderstood || val == valIrrelevant || val == valReject {
		// The initiator is answering a key we offered; we never offer
		// operational keys, so there is nothing to do.
		return "", nil
	}
	if n.discovery && def.discIrrelevant {
		return valIrrelevant, nil
	}
	switch def.kind {
	case kindList:
		return n.negotiateList(key, val), nil
	case kindOr, kindAnd:
		b, ok := parseBool(val)
		if !ok {
			return valReject, nil
		}
		return n.negotiateBool(key, def.kind, b), nil
	case kindMin, kindMax:
		v, ok := parseNumber(val)
		if !ok || v < def.min || v > def.max {
			// Out of the key's range (RFC 7143 §6.2: the value is not
			// admissible): refuse it and keep the default.
			return valReject, nil
		}
		return n.negotiateNum(key, def.kind, uint32(v)), nil
	case kindDeclarative:
		switch key {
		case "MaxRecvDataSegmentLength":
			v, ok := parseNumber(val)
			if !ok || v < def.min || v > def.max {
				// We keep sending at most the default 8192 bytes.
				n.rejectedMRDSL = true
				return valReject, nil
			}
			n.cur.MaxXmitDataSegmentLength = uint32(v)
			return "", nil
		case "OFMarkInt", "IFMarkInt":
			// Markers are always No here, so their intervals are
			// irrelevant (RFC 7143 §13.24 keeps them for compatibility).
			return valIrrelevant, nil
		}
	}
	return valNotUnderstood, nil
}

func (n *negotiator) negotiateList(key, val string) string {
	for _, v := range strings.Split(val, ",") {
		switch v {
		case "None":
			n.setDigest(key, "None")
			return "None"
		case "CRC32C":
			if n.crc32c {
				n.setDigest(key, "CRC32C")
				return "CRC32C"
			}
		}
	}
	return valReject
}

func (n *negotiator) setDigest(key, v string) {
	if key == "HeaderDigest" {
		n.cur.HeaderDigest = v
	} else {
		n.cur.DataDigest = v
	}
}

func (n *negotiator) negotiateBool(key string, kind negKind, offer bool) string {
	var ours bool
	var dst *bool
	switch key {
	case "InitialR2T":
		ours, dst = n.ours.InitialR2T, &n.cur.InitialR2T
	case "ImmediateData":
		ours, dst = n.ours.ImmediateData, &n.cur.ImmediateData
	case "DataPDUInOrder":
		// We need data in order (the target is simpler and not slower for
		// it), so our value is Yes and the OR result is always Yes.
		ours, dst = true, &n.cur.DataPDUInOrder
	case "DataSequenceInOrder":
		ours, dst = true, &n.cur.DataSequenceInOrder
	case "IFMarker", "OFMarker":
		// Markers are not supported: our value No makes the AND No.
		ours = false
	}
	res := ours || offer
	if kind == kindAnd {
		res = ours && offer
	}
	if dst != nil {
		*dst = res
	}
	return boolString(res)
}

func (n *negotiator) negotiateNum(key string, kind negKind, offer uint32) string {
	var ours uint32
	var dst *uint32
	switch key {
	case "MaxConnections":
		ours, dst = n.ours.MaxConnections, &n.cur.MaxConnections
	case "MaxBurstLength":
		ours, dst = n.ours.MaxBurstLength, &n.cur.MaxBurstLength
	case "FirstBurstLength":
		ours, dst = n.ours.FirstBurstLength, &n.cur.FirstBurstLength
	case "DefaultTime2Wait":
		ours, dst = n.ours.DefaultTime2Wait, &n.cur.DefaultTime2Wait
	case "DefaultTime2Retain":
		ours, dst = n.ours.DefaultTime2Retain, &n.cur.DefaultTime2Retain
	case "MaxOutstandingR2T":
		ours, dst = n.ours.MaxOutstandingR2T, &n.cur.MaxOutstandingR2T
	case "ErrorRecoveryLevel":
		ours, dst = n.ours.ErrorRecoveryLevel, &n.cur.ErrorRecoveryLevel
	}
	res := min(ours, offer)
	if kind == kindMax {
		res = max(ours, offer)
	}
	*dst = res
	return strconv.FormatUint(uint64(res), 10)
}

// finish applies the cross-key rules once a login PDU's keys have all been
// answered. It fixes up the answers in resp (a slice of pairs we are about
// to send) where a rule changes them.
func (n *negotiator) finish(resp []kv) []kv {
	// FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14).
	if n.cur.FirstBurstLength > n.cur.MaxBurstLength {
		n.cur.FirstBurstLength = n.cur.MaxBurstLength
		for i := range resp {
			if resp[i].Key == "FirstBurstLength" && resp[i].Value != valIrrelevant {
				resp[i].Value = strconv.FormatUint(uint64(n.cur.FirstBurstLength), 10)
			}
		}
	}
	// With InitialR2T=Yes and ImmediateData=No there is no unsolicited
	// data, so FirstBurstLength is irrelevant (RFC 7143 §13.14).
	if n.cur.InitialR2T && !n.cur.ImmediateData {
		for i := range resp {
			if resp[i].Key == "FirstBurstLength" {
				resp[i].Value = valIrrelevant
			}
		}
	}
	return resp
}

// parseNumber parses a numerical value (RFC 7143 §6.1): a decimal
// constant, or a hex constant with a 0x prefix, less than 2^64. Signs,
// spaces and other bases are refused.
func parseNumber(s string) (uint64, bool) {
	base := 10
	if len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		s, base = s[2:], 16
	}
	if s == "" || s[0] == '+' || s[0] == '-' {
		return 0, false
	}
	v, err := strconv.ParseUint(s, base, 64)
	return v, err == nil
}

func parseBool(s string) (bool, bool) {
	switch s {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func boolString(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}
