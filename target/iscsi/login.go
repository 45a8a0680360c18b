package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"time"
)

// Login status classes and details (RFC 7143 §11.13.5).
const (
	statusSuccess             = 0x0000
	statusInitiatorError      = 0x0200
	statusAuthFailure         = 0x0201
	statusForbidden           = 0x0202
	statusNotFound            = 0x0203
	statusTargetRemoved       = 0x0204
	statusUnsupportedVersion  = 0x0205
	statusTooManyConnections  = 0x0206
	statusMissingParameter    = 0x0207
	statusCantIncludeInSess   = 0x0208
	statusSessionTypeUnsupp   = 0x0209
	statusSessionDoesNotExist = 0x020a
	statusInvalidDuringLogin  = 0x020b
	statusTargetError         = 0x0300
	statusServiceUnavailable  = 0x0301
	statusOutOfResources      = 0x0302
)

// Login stages (CSG/NSG values).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// maxLoginData is the data segment length every login PDU is held to: the
// MaxRecvDataSegmentLength of both sides is 8192 until login ends (RFC 7143
// §13.12). Our login responses never exceed it: a request whose answers
// would not fit (only a flood of unknown keys does that) fails the login.
const maxLoginData = 8192

// Bounds on the initiator's mutual-CHAP challenge. RFC 7143 §12.1.3 lets
// the target refuse a challenge it deems too short; below 16 bytes the
// challenge is too easy to replay.
const (
	minCHAPChallenge = 16
	maxCHAPChallenge = 1024
)

// chapAlg is one CHAP digest algorithm, named by its CHAP_A number from the
// IANA PPP authentication algorithms registry.
type chapAlg struct {
	id   string
	name string
	new  func() hash.Hash
}

// chapAlgs are the algorithms we accept. The challenge we send is as long
// as the digest.
var chapAlgs = map[string]chapAlg{
	"5": {"5", "MD5", md5.New},
	"7": {"7", "SHA-256", sha256.New},
	"8": {"8", "SHA3-256", func() hash.Hash { return sha3.New256() }},
}

// loginError is a login failure answered with a status code.
type loginError struct {
	status uint16
	msg    string
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login status %#04x: %s", e.status, e.msg)
}

func loginFail(status uint16, format string, args ...any) error {
	return &loginError{status: status, msg: fmt.Sprintf(format, args...)}
}

// loginState is one connection's progress through the login phase.
type loginState struct {
	started bool
	isid    [6]byte
	tsih    uint16
	cid     uint16
	cmdSN   uint32
	stage   int
	text    []byte

	initiatorName  string
	initiatorAlias string
	targetName     string
	discovery      bool
	target         Target

	neg *negotiator

	// Authentication.
	authMethod string // "", "None", "CHAP"
	authDone   bool
	creds      CHAPCredentials
	chapID     byte
	chapChal   []byte
	chapState  int // 0: want CHAP_A, 1: want CHAP_N/CHAP_R, 2: done
	chapAlg    chapAlg
	mutual     bool
	// resolved: the target (or, for discovery, the credentials) has been
	// looked up.
	resolved bool

	declaredMRDSL bool
	sentFirst     bool
}

// login runs the login phase on c. On success c.sess is set and the
// connection is in full feature phase.
func (c *conn) login() error {
	cfg := &c.srv.cfg
	deadline := time.Now().Add(cfg.LoginTimeout)
	c.nc.SetReadDeadline(deadline)
	c.nc.SetWriteDeadline(deadline)
	defer c.nc.SetWriteDeadline(time.Time{})
	ls := &loginState{neg: newNegotiator(cfg.ourParams(), !cfg.DisableDigests)}
	c.rd.loginOnly = true
	defer func() { c.rd.loginOnly = false }()
	for {
		if err := c.rd.readHeader(); err != nil {
			return err
		}
		h := c.rd.hdr
		if h.opcode() != opLoginReq {
			return fmt.Errorf("%w: opcode %#x during login", errPDU, h.opcode())
		}
		if c.rd.ahsLen != 0 {
			return fmt.Errorf("%w: AHS in login request", errPDU)
		}
		if n := h.dataLen(); n > maxLoginData {
			// Both sides' MaxRecvDataSegmentLength is 8192 during login
			// (RFC 7143 §13.12); the data is not even read.
			c.writeLoginReject(ls, &h, statusInitiatorError)
			c.pw.flush()
			return fmt.Errorf("%w: login request data segment of %d bytes exceeds %d", errPDU, n, maxLoginData)
		}
		data, err := c.readSmallData()
		if err != nil {
			return err
		}
		done, err := c.loginStep(ls, &h, data)
		if err != nil {
			var le *loginError
			if errors.As(err, &le) {
				c.writeLoginReject(ls, &h, le.status)
				c.pw.flush()
			}
			return err
		}
		if done {
			return nil
		}
	}
}

// loginStep handles one Login Request PDU and writes its response. It
// returns true once the connection entered full feature phase.
func (c *conn) loginStep(ls *loginState, h *bhs, data []byte) (bool, error) {
	transit := h[1]&flagTransit != 0
	cont := h[1]&flagContinue != 0
	csg := int(h[1]>>2) & 3
	nsg := int(h[1]) & 3
	var isid [6]byte
	copy(isid[:], h[8:14])
	tsih := binary.BigEndian.Uint16(h[14:16])
	cid := binary.BigEndian.Uint16(h[20:22])

	if !ls.started {
		ls.started = true
		ls.isid, ls.tsih, ls.cid = isid, tsih, cid
		ls.cmdSN = h.u32(24)
		c.statSN = h.u32(28)
		ls.stage = csg
		c.cid = cid
		// VersionMin above our only version (0x00) cannot work.
		if h[3] > 0 {
			return false, loginFail(statusUnsupportedVersion, "version-min %d", h[3])
		}
	} else if isid != ls.isid || tsih != ls.tsih || cid != ls.cid {
		return false, loginFail(statusInitiatorError, "ISID/TSIH/CID changed during login")
	}
	if transit && cont {
		return false, loginFail(statusInitiatorError, "both T and C bits set")
	}
	if csg != ls.stage || csg == 2 || csg == stageFullFeature {
		return false, loginFail(statusInitiatorError, "bad current stage %d (expected %d)", csg, ls.stage)
	}
	if transit && (nsg <= csg || nsg == 2) {
		return false, loginFail(statusInitiatorError, "bad next stage %d from %d", nsg, csg)
	}
	if len(ls.text)+len(data) > maxTextLen {
		return false, loginFail(statusInitiatorError, "login text too long")
	}
	ls.text = append(ls.text, data...)
	if cont {
		// More text follows: acknowledge with an empty response.
		c.writeLoginResp(ls, h, csg, nsg, false, nil, statusSuccess)
		return false, c.pw.flush()
	}
	pairs, err := parseKeys(ls.text)
	ls.text = ls.text[:0]
	if err != nil {
		return false, loginFail(statusInitiatorError, "%v", err)
	}
	ls.neg.rejectedMRDSL = false
	resp, err := c.loginKeys(ls, csg, pairs)
	if err != nil {
		return false, err
	}

	// Decide on the stage transition.
	if transit && csg == stageSecurity && !ls.authDone {
		if ls.authMethod == "CHAP" {
			// CHAP still in progress: stay in the security stage.
			transit = false
		} else if ls.creds.Required || ls.authMethod == valReject {
			return false, loginFail(statusAuthFailure, "authentication required")
		} else {
			ls.authDone = true
		}
	}
	if csg == stageOperational && !ls.authDone {
		if ls.creds.Required {
			return false, loginFail(statusAuthFailure, "authentication required")
		}
		ls.authDone = true
	}
	if csg == stageOperational && ls.neg.rejectedMRDSL {
		// Our own MaxRecvDataSegmentLength declaration would repeat the key
		// we just answered Reject; declare it in the next response instead
		// and stay in this stage so that there is one.
		ls.neg.rejectedMRDSL = false
		transit = false
	} else if csg == stageOperational && !ls.declaredMRDSL {
		ls.declaredMRDSL = true
		resp = append(resp, kv{"MaxRecvDataSegmentLength", strconv.FormatUint(uint64(ls.neg.ours.MaxRecvDataSegmentLength), 10)})
	}
	resp = ls.neg.finish(resp)
	if n := textSize(resp); n > maxLoginData {
		return false, loginFail(statusInitiatorError, "login response of %d bytes exceeds the %d-byte login limit", n, maxLoginData)
	}
	if !transit {
		c.writeLoginResp(ls, h, csg, nsg, false, resp, statusSuccess)
		return false, c.pw.flush()
	}
	ls.stage = nsg
	if nsg != stageFullFeature {
		c.writeLoginResp(ls, h, csg, nsg, true, resp, statusSuccess)
		return false, c.pw.flush()
	}
	if err := c.startSession(ls); err != nil {
		return false, err
	}
	c.writeLoginResp(ls, h, csg, nsg, true, resp, statusSuccess)
	if err := c.pw.flush(); err != nil {
		return false, err
	}
	// Digests apply from the first full-feature PDU on.
	c.hdrDigest = c.params.HeaderDigest == "CRC32C"
	c.dataDigest = c.params.DataDigest == "CRC32C"
	c.rd.headerDigest, c.rd.dataDigest = c.hdrDigest, c.dataDigest
	c.log.Info("iscsi: login", "initiator", ls.initiatorName, "isid", hex.EncodeToString(ls.isid[:]),
		"tsih", c.sess.tsih, "target", ls.targetName, "discovery", ls.discovery,
		"auth", c.sess.authMethod, "chap_alg", ls.chapAlg.name, "mutual_chap", ls.mutual)
	return true, nil
}

// loginKeys processes one login request's keys and returns the answers.
func (c *conn) loginKeys(ls *loginState, csg int, pairs []kv) ([]kv, error) {
	var resp []kv
	first := !ls.sentFirst
	var chapKeys map[string]string
	size, counted := 0, 0
	for _, p := range pairs {
		// Stop as soon as the answers cannot fit one login PDU, before
		// building any more of them.
		size += textSize(resp[counted:])
		counted = len(resp)
		if size > maxLoginData {
			return nil, loginFail(statusInitiatorError, "too many keys: answers exceed the %d-byte login limit", maxLoginData)
		}
		switch p.Key {
		case "InitiatorName":
			if ls.initiatorName != "" && ls.initiatorName != p.Value {
				return nil, loginFail(statusInitiatorError, "InitiatorName changed")
			}
			ls.initiatorName = p.Value
		case "InitiatorAlias":
			ls.initiatorAlias = p.Value
		case "TargetName":
			if ls.targetName != "" && !strings.EqualFold(ls.targetName, p.Value) {
				return nil, loginFail(statusInitiatorError, "TargetName changed")
			}
			ls.targetName = p.Value
		case "SessionType":
			if ls.sentFirst && (p.Value == "Discovery") != ls.discovery {
				// The target and credentials were chosen for the type
				// the first request named.
				return nil, loginFail(statusInitiatorError, "SessionType changed")
			}
			switch p.Value {
			case "Discovery":
				ls.discovery = true
				ls.neg.discovery = true
			case "Normal":
			default:
				return nil, loginFail(statusSessionTypeUnsupp, "SessionType %q", p.Value)
			}
		case "AuthMethod":
			if csg != stageSecurity {
				return nil, loginFail(statusInitiatorError, "AuthMethod outside security stage")
			}
			// Resolve the target first: the answer depends on its secrets.
			if err := c.resolveTarget(ls, pairs); err != nil {
				return nil, err
			}
			resp = append(resp, kv{p.Key, c.chooseAuth(ls, p.Value)})
		case "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R":
			if chapKeys == nil {
				chapKeys = map[string]string{}
			}
			chapKeys[p.Key] = p.Value
		case "TargetAlias", "TargetAddress", "TargetPortalGroupTag", "SendTargets":
			// Only a target may declare these; SendTargets belongs to
			// full feature phase.
			resp = append(resp, kv{p.Key, valReject})
		default:
			v, err := ls.neg.negotiate(p.Key, p.Value)
			if err != nil {
				return nil, loginFail(statusInitiatorError, "%v", err)
			}
			if v != "" {
				resp = append(resp, kv{p.Key, v})
			}
		}
	}
	if first {
		if ls.initiatorName == "" {
			return nil, loginFail(statusMissingParameter, "InitiatorName missing")
		}
		if err := c.resolveTarget(ls, nil); err != nil {
			return nil, err
		}
		ls.sentFirst = true
		if !ls.discovery {
			resp = append(resp, kv{"TargetPortalGroupTag", strconv.Itoa(int(c.srv.cfg.PortalGroupTag))})
			if a := ls.target.Alias(); a != "" {
				resp = append(resp, kv{"TargetAlias", a})
			}
		}
	}
	if chapKeys != nil {
		more, err := c.chapStep(ls, chapKeys)
		if err != nil {
			return nil, err
		}
		resp = append(resp, more...)
	}
	return resp, nil
}

// resolveTarget looks up and authorises the target once the first PDU's
// keys are known; for a discovery session it fetches the discovery
// credentials.
func (c *conn) resolveTarget(ls *loginState, pairs []kv) error {
	if ls.resolved {
		return nil
	}
	// AuthMethod may precede SessionType/TargetName in the same PDU.
	for _, p := range pairs {
		switch p.Key {
		case "SessionType":
			if p.Value == "Discovery" {
				ls.discovery = true
				ls.neg.discovery = true
			}
		case "TargetName":
			ls.targetName = p.Value
		case "InitiatorName":
			ls.initiatorName = p.Value
		}
	}
	if ls.discovery {
		ls.resolved = true
		if dc, ok := c.srv.reg.(DiscoveryCHAP); ok {
			ls.creds = dc.DiscoveryCredentials(ls.initiatorName)
		}
		return nil
	}
	if ls.targetName == "" {
		return loginFail(statusMissingParameter, "TargetName missing")
	}
	t, ok := c.srv.reg.Target(ls.targetName)
	if !ok {
		return loginFail(statusNotFound, "target %q not found", ls.targetName)
	}
	if !t.Allow(ls.initiatorName) {
		return loginFail(statusForbidden, "initiator %q not allowed on %q", ls.initiatorName, ls.targetName)
	}
	ls.target = t
	ls.targetName = t.Name()
	ls.resolved = true
	if ct, ok := t.(CHAPTarget); ok {
		ls.creds = ct.Credentials(ls.initiatorName)
	}
	return nil
}

// chooseAuth answers an AuthMethod offer.
func (c *conn) chooseAuth(ls *loginState, offer string) string {
	methods := strings.Split(offer, ",")
	canCHAP := ls.creds.Secret != ""
	for _, m := range methods {
		switch {
		case m == "None" && !ls.creds.Required:
			ls.authMethod = "None"
			return "None"
		case m == "CHAP" && canCHAP:
			ls.authMethod = "CHAP"
			return "CHAP"
		}
	}
	ls.authMethod = valReject
	return valReject
}

// chapStep runs the CHAP exchange (RFC 1994, RFC 7143 §12.1.3) with MD5,
// SHA-256 or SHA3-256.
func (c *conn) chapStep(ls *loginState, keys map[string]string) ([]kv, error) {
	if ls.authMethod != "CHAP" {
		return nil, loginFail(statusInitiatorError, "CHAP keys without AuthMethod=CHAP")
	}
	switch ls.chapState {
	case 0:
		algs, ok := keys["CHAP_A"]
		if !ok {
			return nil, loginFail(statusAuthFailure, "CHAP_A expected")
		}
		// List negotiation: the first value of the initiator's list that
		// we support (RFC 7143 §6.2.1). Initiators list their strongest
		// algorithm first.
		var alg chapAlg
		for _, a := range strings.Split(algs, ",") {
			if found, ok := chapAlgs[a]; ok {
				alg = found
				break
			}
		}
		if alg.id == "" {
			return []kv{{"CHAP_A", valReject}}, loginFail(statusAuthFailure, "no supported CHAP algorithm in %q", algs)
		}
		var id [1]byte
		chal := make([]byte, alg.new().Size())
		if _, err := rand.Read(id[:]); err != nil {
			return nil, loginFail(statusTargetError, "random: %v", err)
		}
		if _, err := rand.Read(chal); err != nil {
			return nil, loginFail(statusTargetError, "random: %v", err)
		}
		ls.chapID, ls.chapChal, ls.chapAlg = id[0], chal, alg
		ls.chapState = 1
		return []kv{
			{"CHAP_A", alg.id},
			{"CHAP_I", strconv.Itoa(int(id[0]))},
			{"CHAP_C", "0x" + hex.EncodeToString(chal)},
		}, nil
	case 1:
		name, r := keys["CHAP_N"], keys["CHAP_R"]
		if name == "" || r == "" {
			return nil, loginFail(statusAuthFailure, "CHAP_N/CHAP_R expected")
		}
		got, err := decodeBinary(r)
		if err != nil {
			return nil, loginFail(statusAuthFailure, "CHAP_R: %v", err)
		}
		want := chapResponse(ls.chapAlg, ls.chapID, ls.creds.Secret, ls.chapChal)
		if name != ls.creds.User || subtle.ConstantTimeCompare(got, want) != 1 {
			return nil, loginFail(statusAuthFailure, "CHAP authentication failed for %q", name)
		}
		ls.chapState = 2
		ls.authDone = true
		idS, chalS := keys["CHAP_I"], keys["CHAP_C"]
		if idS == "" && chalS == "" {
			return nil, nil
		}
		// Mutual CHAP: the initiator authenticates us.
		if ls.creds.MutualSecret == "" {
			return nil, loginFail(statusAuthFailure, "mutual CHAP not configured")
		}
		id, err := strconv.ParseUint(idS, 0, 8)
		if err != nil {
			return nil, loginFail(statusAuthFailure, "CHAP_I %q", idS)
		}
		ichal, err := decodeBinary(chalS)
		if err != nil {
			return nil, loginFail(statusAuthFailure, "CHAP_C: %v", err)
		}
		if len(ichal) < minCHAPChallenge || len(ichal) > maxCHAPChallenge {
			return nil, loginFail(statusAuthFailure, "CHAP_C of %d bytes (want %d to %d)", len(ichal), minCHAPChallenge, maxCHAPChallenge)
		}
		// A reflected challenge would let an attacker use us as an oracle.
		if subtle.ConstantTimeCompare(ichal, ls.chapChal) == 1 {
			return nil, loginFail(statusAuthFailure, "CHAP challenge reflected")
		}
		resp := chapResponse(ls.chapAlg, byte(id), ls.creds.MutualSecret, ichal)
		ls.mutual = true
		return []kv{
			{"CHAP_N", ls.creds.MutualUser},
			{"CHAP_R", "0x" + hex.EncodeToString(resp)},
		}, nil
	default:
		return nil, loginFail(statusInitiatorError, "unexpected CHAP keys")
	}
}

// chapResponse computes H(id || secret || challenge) (RFC 1994 §4.1) with
// the negotiated algorithm's hash H.
func chapResponse(alg chapAlg, id byte, secret string, chal []byte) []byte {
	h := alg.new()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(chal)
	return h.Sum(nil)
}

// decodeBinary decodes an RFC 7143 §6.1 binary value: 0x-prefixed hex or
// 0b-prefixed base64.
func decodeBinary(s string) ([]byte, error) {
	switch {
	case len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X"):
		return hex.DecodeString(s[2:])
	case len(s) > 2 && (s[:2] == "0b" || s[:2] == "0B"):
		return base64.StdEncoding.DecodeString(s[2:])
	}
	return nil, fmt.Errorf("binary value %q lacks 0x/0b prefix", s)
}

// startSession creates the session (reinstating an old one with the same
// initiator port) when login reaches full feature phase.
func (c *conn) startSession(ls *loginState) error {
	srv := c.srv
	if ls.tsih != 0 {
		// Adding a connection to a session: we allow one connection per
		// session, and at ERL 0 a failed connection ends its session.
		srv.mu.Lock()
		_, exists := srv.sessions[ls.tsih]
		srv.mu.Unlock()
		if !exists {
			return loginFail(statusSessionDoesNotExist, "TSIH %d", ls.tsih)
		}
		return loginFail(statusTooManyConnections, "session %d already has its connection", ls.tsih)
	}
	if !ls.discovery {
		if old := srv.findSession(ls.initiatorName, ls.isid, ls.targetName); old != nil {
			c.log.Info("iscsi: reinstating session", "tsih", old.tsih, "initiator", ls.initiatorName)
			if oc := old.conn; oc != nil {
				oc.close(errors.New("session reinstated"))
			}
			old.end("reinstated")
		}
	}
	params := ls.neg.cur
	if !ls.declaredMRDSL {
		// Never declared: the RFC default applies to what we receive.
		params.MaxRecvDataSegmentLength = 8192
	}
	s := newSession(srv, c, ls.cmdSN)
	s.isid = ls.isid
	s.initiatorName = ls.initiatorName
	s.initiatorAlias = ls.initiatorAlias
	s.discovery = ls.discovery
	s.params = params
	s.creds = ls.creds
	s.authMethod = "None"
	if ls.authMethod == "CHAP" {
		s.authMethod = "CHAP"
		s.chapAlg = ls.chapAlg.name
		s.mutualCHAP = ls.mutual
	}
	if !ls.discovery {
		s.target = ls.target
		s.tm = ls.target.Tasks()
		s.targetName = ls.target.Name()
		s.nexus = srv.nexusFor(ls.initiatorName, ls.isid, s.targetName)
	}
	srv.mu.Lock()
	if srv.closing {
		srv.mu.Unlock()
		return loginFail(statusServiceUnavailable, "server shutting down")
	}
	s.tsih = srv.allocTSIH()
	srv.sessions[s.tsih] = s
	srv.mu.Unlock()
	// The catalog may have changed since the target was resolved; a
	// change made before the session was registered is not seen by
	// Revalidate, so look again now that it is.
	if reason := s.stale(); reason != "" {
		srv.removeSession(s)
		return loginFail(statusForbidden, "access changed during login: %s", reason)
	}
	c.sess = s
	c.params = params
	c.maxXmit.Store(params.MaxXmitDataSegmentLength)
	c.rd.maxData = int(params.MaxRecvDataSegmentLength)
	return nil
}

// writeLoginResp writes (without flushing) a Login Response.
func (c *conn) writeLoginResp(ls *loginState, req *bhs, csg, nsg int, transit bool, keys []kv, status uint16) {
	var h bhs
	h[0] = opLoginResp
	flags := byte(csg&3) << 2
	if transit {
		flags |= flagTransit | byte(nsg&3)
	}
	h[1] = flags
	h[2] = 0 // VersionMax
	h[3] = 0 // VersionActive
	copy(h[8:14], ls.isid[:])
	if transit && nsg == stageFullFeature && c.sess != nil {
		h.setU16(14, c.sess.tsih)
	} else {
		h.setU16(14, ls.tsih)
	}
	h.setITT(req.itt())
	h.setU32(24, c.statSN)
	c.statSN++
	h.setU32(28, ls.cmdSN)
	h.setU32(32, ls.cmdSN+c.srv.cfg.MaxQueuedCommands-1)
	h[36] = byte(status >> 8)
	h[37] = byte(status)
	var data []byte
	for _, k := range keys {
		data = appendKey(data, k.Key, k.Value)
	}
	c.pw.write(&h, data, false, false)
}

// textSize is the encoded length of keys as key=value pairs with their NUL
// terminators.
func textSize(keys []kv) int {
	n := 0
	for _, k := range keys {
		n += len(k.Key) + len(k.Value) + 2
	}
	return n
}

// writeLoginReject answers a failed login; the caller closes the
// connection.
func (c *conn) writeLoginReject(ls *loginState, req *bhs, status uint16) {
	if !ls.started {
		copy(ls.isid[:], req[8:14])
		ls.tsih = binary.BigEndian.Uint16(req[14:16])
		ls.cmdSN = req.u32(24)
		c.statSN = req.u32(28)
	}
	c.writeLoginResp(ls, req, 0, 0, false, nil, status)
}
