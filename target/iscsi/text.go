package iscsi

import (
	"net"
	"strconv"
	"strings"
)

// textState tracks a Text Request/Response exchange that spans PDUs.
type textState struct {
	itt    uint32
	ttt    uint32
	active bool
	req    []byte // request text gathered across C-bit PDUs
	resp   []byte // response text not yet sent
}

// handleText processes a Text Request (RFC 7143 §11.10).
func (c *conn) handleText() error {
	h := c.rd.hdr
	data, err := c.readSmallData()
	if err != nil {
		return err
	}
	s := c.sess
	return s.sequence(h.u32(24), h.immediate(), func() error {
		if !h.immediate() {
			s.advance(false)
		}
		c.textStep(&h, data)
		return nil
	})
}

func (c *conn) textStep(h *bhs, data []byte) {
	ts := &c.text
	itt, ttt := h.itt(), h.u32(20)
	cont := h[1]&flagContinue != 0
	if ttt != tagNone {
		if !ts.active || ttt != ts.ttt || itt != ts.itt {
			*ts = textState{}
			c.sendReject(h, rejectInvalidPDUField)
			return
		}
		if len(ts.resp) > 0 {
			// The initiator asks for the next part of our response.
			c.sendTextChunk(h)
			return
		}
	} else if ts.active && (itt != ts.itt || len(ts.resp) > 0) {
		// A new exchange resets any unfinished one (RFC 7143 §11.10.4).
		*ts = textState{}
	}
	ts.active = true
	ts.itt = itt
	if len(ts.req)+len(data) > maxTextLen {
		*ts = textState{}
		c.sendReject(h, rejectProtocolError)
		return
	}
	ts.req = append(ts.req, data...)
	if cont {
		// More request text follows; answer with an empty response that
		// invites it.
		ts.ttt = c.tags.next()
		p := newOut(opTextResp, 0)
		p.hdr.setITT(itt)
		p.hdr.setU32(20, ts.ttt)
		p.stat = statAdvance
		c.send(p)
		return
	}
	pairs, err := parseKeys(ts.req)
	ts.req = nil
	if err != nil {
		*ts = textState{}
		c.sendReject(h, rejectProtocolError)
		return
	}
	ts.resp = c.textKeys(pairs)
	c.sendTextChunk(h)
}

// sendTextChunk sends as much of the pending response as the initiator
// accepts in one PDU, with the C bit and a TTT if more remains.
func (c *conn) sendTextChunk(h *bhs) {
	ts := &c.text
	n := min(len(ts.resp), int(c.maxXmit.Load()))
	chunk := ts.resp[:n]
	ts.resp = ts.resp[n:]
	p := newOut(opTextResp, 0)
	p.hdr.setITT(ts.itt)
	copy(p.hdr[8:16], h[8:16])
	if len(ts.resp) > 0 {
		p.hdr[1] = flagContinue
		ts.ttt = c.tags.next()
		p.hdr.setU32(20, ts.ttt)
	} else {
		p.hdr[1] = flagFinal
		p.hdr.setU32(20, tagNone)
		*ts = textState{}
	}
	p.data = chunk
	p.stat = statAdvance
	c.send(p)
}

// textKeys answers full-feature-phase text keys.
func (c *conn) textKeys(pairs []kv) []byte {
	var out []byte
	for _, p := range pairs {
		switch {
		case p.Key == "SendTargets":
			out = c.sendTargets(out, p.Value)
		case p.Key == "MaxRecvDataSegmentLength":
			v, err := strconv.ParseUint(p.Value, 10, 32)
			if err != nil || v < 512 || v > 1<<24-1 {
				out = appendKey(out, p.Key, valReject)
				continue
			}
			c.maxXmit.Store(uint32(v))
		default:
			if _, known := keyDefs[p.Key]; known {
				// Leading-only and login-time keys cannot change now.
				out = appendKey(out, p.Key, valReject)
			} else {
				out = appendKey(out, p.Key, valNotUnderstood)
			}
		}
	}
	return out
}

// sendTargets appends the SendTargets answer: TargetName and TargetAddress
// for each target the initiator may see.
func (c *conn) sendTargets(out []byte, val string) []byte {
	s := c.sess
	var names []string
	switch {
	case !s.discovery:
		// In a normal session only the session's own target is reported.
		if val == "" || val == "All" || strings.EqualFold(val, s.targetName) {
			names = []string{s.targetName}
		}
	case val == "All":
		names = c.srv.reg.Targets(s.initiatorName)
	case val != "":
		if t, ok := c.srv.reg.Target(val); ok && t.Allow(s.initiatorName) {
			names = []string{t.Name()}
		}
	}
	addrs := c.portalAddrs()
	for _, n := range names {
		out = appendKey(out, "TargetName", n)
		for _, a := range addrs {
			out = appendKey(out, "TargetAddress", a)
		}
	}
	return out
}

// portalAddrs returns the TargetAddress values (ip:port,tpgt) to advertise.
// An unspecified host is replaced by this connection's local address, which
// is the address the initiator demonstrably reaches us on.
func (c *conn) portalAddrs() []string {
	tpgt := strconv.Itoa(int(c.srv.cfg.PortalGroupTag))
	local := c.nc.LocalAddr().String()
	localHost, localPort, _ := net.SplitHostPort(local)
	portals := c.srv.cfg.Portals
	if len(portals) == 0 {
		portals = []string{local}
	}
	out := make([]string, 0, len(portals))
	for _, p := range portals {
		host, port, err := net.SplitHostPort(p)
		if err != nil {
			host, port = p, localPort
		}
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = localHost
		}
		if port == "" {
			port = localPort
		}
		out = append(out, net.JoinHostPort(host, port)+","+tpgt)
	}
	return out
}
