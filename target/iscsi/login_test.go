package iscsi

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// A login request full of unknown keys is answered within the 8 KiB login
// limit: the login fails with "initiator error" instead of a reply larger
// than the initiator may receive.
func TestLoginResponseWithinLimit(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	base := []string{"InitiatorName=" + testInitiator, "SessionType=Normal", "TargetName=" + testIQN, "AuthMethod=None"}

	t.Run("unknown keys flood", func(t *testing.T) {
		c := dial(t, ts.addr)
		keys := append([]string(nil), base...)
		var data []byte
		for i := 0; ; i++ {
			k := fmt.Sprintf("X%d=1", i)
			next := keysData(append(keys, k)...)
			if len(next) > maxLoginData {
				break
			}
			keys, data = append(keys, k), next
		}
		p := c.loginPDU(0, 1, true, data)
		if len(p.data) > maxLoginData {
			t.Fatalf("login response of %d bytes exceeds %d", len(p.data), maxLoginData)
		}
		if st := loginStatus(p); st != statusInitiatorError {
			t.Fatalf("status %#04x, want initiator error", st)
		}
		c.expectClosed()
	})
	t.Run("flood across continuations", func(t *testing.T) {
		c := dial(t, ts.addr)
		var all []byte
		for i := 0; len(all) < 65<<10; i++ {
			all = append(all, fmt.Sprintf("X-vendor.key%d=v\x00", i)...)
		}
		all = append(keysData(base...), all...)
		var h bhs
		h[0] = opLoginReq | flagImmed
		copy(h[8:14], c.ISID[:])
		h.setITT(1)
		var p *pdu
		for off := 0; off < len(all); off += 4096 {
			end := min(off+4096, len(all))
			h[1] = 0<<2 | 1
			if end < len(all) {
				h[1] |= flagContinue
			} else {
				h[1] |= flagTransit
			}
			c.send(&h, nil, all[off:end])
			p = c.recv()
			if len(p.data) > maxLoginData {
				t.Fatalf("login response of %d bytes exceeds %d", len(p.data), maxLoginData)
			}
			if loginStatus(p) != 0 {
				break
			}
		}
		if st := loginStatus(p); st != statusInitiatorError {
			t.Fatalf("status %#04x, want initiator error", st)
		}
		c.expectClosed()
	})
	t.Run("oversized login PDU", func(t *testing.T) {
		c := dial(t, ts.addr)
		data := keysData(append(base, "X-big="+strings.Repeat("a", maxLoginData))...)
		p := c.loginPDU(0, 1, true, data)
		if st := loginStatus(p); st != statusInitiatorError {
			t.Fatalf("status %#04x, want initiator error", st)
		}
		c.expectClosed()
	})
	t.Run("some unknown keys are answered", func(t *testing.T) {
		c := dial(t, ts.addr)
		keys := append([]string(nil), base...)
		for i := range 40 {
			keys = append(keys, fmt.Sprintf("X-vendor.k%d=1", i))
		}
		p := c.loginPDU(0, 1, true, keysData(keys...))
		if st := loginStatus(p); st != 0 {
			t.Fatalf("status %#04x", st)
		}
		if m := keyMap(t, p.data); m["X-vendor.k39"] != valNotUnderstood {
			t.Fatalf("keys %v", m)
		}
	})
}

// Out-of-range numerical values are answered Reject on the wire, once, and
// not applied; hex constants are numbers too.
func TestLoginOutOfRangeValues(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	for _, v := range []string{"0", "-5", "16777216", "511", "0x", "18446744073709551616"} {
		t.Run("MaxRecvDataSegmentLength="+v, func(t *testing.T) {
			c := dial(t, ts.addr)
			p := c.loginPDU(0, 1, true, keysData("InitiatorName="+testInitiator, "SessionType=Normal", "TargetName="+testIQN, "AuthMethod=None"))
			if loginStatus(p) != 0 {
				t.Fatalf("security stage status %#x", loginStatus(p))
			}
			p = c.loginPDU(1, 3, true, keysData("MaxRecvDataSegmentLength="+v, "MaxBurstLength=0x40000"))
			if loginStatus(p) != 0 {
				t.Fatalf("status %#x", loginStatus(p))
			}
			kvs, err := parseKeys(p.data)
			if err != nil {
				t.Fatal(err)
			}
			var mrdsl []string
			m := map[string]string{}
			for _, kv := range kvs {
				m[kv.Key] = kv.Value
				if kv.Key == "MaxRecvDataSegmentLength" {
					mrdsl = append(mrdsl, kv.Value)
				}
			}
			if len(mrdsl) != 1 || mrdsl[0] != valReject {
				t.Fatalf("MaxRecvDataSegmentLength answered %q, want one Reject", mrdsl)
			}
			if m["MaxBurstLength"] != "262144" {
				t.Fatalf("MaxBurstLength=0x40000 answered %q", m["MaxBurstLength"])
			}
			if p.hdr[1]&flagTransit != 0 {
				t.Fatal("target went to full feature phase without declaring its MaxRecvDataSegmentLength")
			}
			// The next response declares ours and completes the login.
			p = c.loginPDU(1, 3, true, nil)
			if loginStatus(p) != 0 || p.hdr[1]&flagTransit == 0 {
				t.Fatalf("status %#x flags %#x", loginStatus(p), p.hdr[1])
			}
			if got := keyMap(t, p.data)["MaxRecvDataSegmentLength"]; got != "262144" {
				t.Fatalf("declared MaxRecvDataSegmentLength %q", got)
			}
			tsih := binary.BigEndian.Uint16(p.hdr[14:16])
			for _, si := range ts.srv.Sessions() {
				if si.TSIH == tsih && si.Params.MaxXmitDataSegmentLength != 8192 {
					t.Fatalf("rejected value applied: MaxXmitDataSegmentLength %d", si.Params.MaxXmitDataSegmentLength)
				}
			}
		})
	}
	t.Run("discovery irrelevant", func(t *testing.T) {
		c := dial(t, ts.addr)
		p := c.loginPDU(0, 1, true, keysData("InitiatorName="+testInitiator, "SessionType=Discovery", "AuthMethod=None"))
		if loginStatus(p) != 0 {
			t.Fatalf("status %#x", loginStatus(p))
		}
		p = c.loginPDU(1, 3, true, keysData("MaxBurstLength=0", "DefaultTime2Wait=3601"))
		m := keyMap(t, p.data)
		if m["MaxBurstLength"] != valIrrelevant || m["DefaultTime2Wait"] != valReject {
			t.Fatalf("keys %v", m)
		}
	})
}

// chapSecurity runs a CHAP security stage with SHA-256 as initiator and
// returns the response to the CHAP_N/CHAP_R request.
func chapSecurity(t *testing.T, c *client, first []string, user, secret string) *pdu {
	t.Helper()
	p := c.loginPDU(0, 1, false, keysData(append(first, "AuthMethod=CHAP,None")...))
	if m := keyMap(t, p.data); m["AuthMethod"] != "CHAP" {
		t.Fatalf("AuthMethod %v status %#x", m, loginStatus(p))
	}
	m := keyMap(t, c.loginPDU(0, 1, false, keysData("CHAP_A=7")).data)
	var id uint8
	for _, ch := range m["CHAP_I"] {
		id = id*10 + uint8(ch-'0')
	}
	chal, err := hex.DecodeString(strings.TrimPrefix(m["CHAP_C"], "0x"))
	if err != nil || m["CHAP_A"] != "7" {
		t.Fatalf("challenge %v", m)
	}
	r := chapResponse(chapAlgs["7"], id, secret, chal)
	return c.loginPDU(0, 1, true, keysData("CHAP_N="+user, "CHAP_R=0x"+hex.EncodeToString(r)))
}

func TestDiscoveryCHAP(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	ts.reg.mu.Lock()
	ts.reg.disc = &CHAPCredentials{Required: true, User: "disco", Secret: "discovery-secret"}
	ts.reg.mu.Unlock()
	first := []string{"InitiatorName=" + testInitiator, "SessionType=Discovery"}

	t.Run("none refused", func(t *testing.T) {
		c := dial(t, ts.addr)
		p := c.loginPDU(0, 1, true, keysData(append(first, "AuthMethod=None")...))
		if st := loginStatus(p); st != statusAuthFailure {
			t.Fatalf("status %#x, want auth failure", st)
		}
	})
	t.Run("skip security refused", func(t *testing.T) {
		c := dial(t, ts.addr)
		p := c.loginPDU(1, 3, true, keysData(first...))
		if st := loginStatus(p); st != statusAuthFailure {
			t.Fatalf("status %#x, want auth failure", st)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		c := dial(t, ts.addr)
		if st := loginStatus(chapSecurity(t, c, first, "disco", "wrong-secret")); st != statusAuthFailure {
			t.Fatalf("status %#x, want auth failure", st)
		}
	})
	t.Run("good", func(t *testing.T) {
		c := dial(t, ts.addr)
		if st := loginStatus(chapSecurity(t, c, first, "disco", "discovery-secret")); st != 0 {
			t.Fatalf("status %#x", st)
		}
		p := c.loginPDU(1, 3, true, nil)
		if loginStatus(p) != 0 || p.hdr[1]&flagTransit == 0 {
			t.Fatalf("op stage status %#x", loginStatus(p))
		}
	})
	t.Run("normal sessions unaffected", func(t *testing.T) {
		dial(t, ts.addr).login(testIQN)
	})
}

// revocable is a target whose ACL and CHAP credentials a test changes
// while sessions are logged in.
type revocable struct {
	*fakeTarget
	mu     sync.Mutex
	denied bool
	creds  CHAPCredentials
}

func (r *revocable) Allow(ini string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.denied
}

func (r *revocable) Credentials(string) CHAPCredentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.creds
}

func TestRevalidateDropsRevokedSessions(t *testing.T) {
	rt := &revocable{fakeTarget: newFakeTarget(testIQN)}
	ts := startServer(t, Config{NopInterval: -1}, rt)
	login := func() *client {
		c := dial(t, ts.addr)
		c.login(testIQN)
		return c
	}
	check := func(t *testing.T, c *client, change func()) {
		t.Helper()
		if n := ts.srv.Revalidate(); n != 0 {
			t.Fatalf("Revalidate dropped %d sessions before any change", n)
		}
		c.ping()
		change()
		if n := ts.srv.Revalidate(); n != 1 {
			t.Fatalf("Revalidate dropped %d sessions, want 1", n)
		}
		c.expectClosed()
	}
	t.Run("acl", func(t *testing.T) {
		c := login()
		check(t, c, func() { rt.mu.Lock(); rt.denied = true; rt.mu.Unlock() })
		rt.mu.Lock()
		rt.denied = false
		rt.mu.Unlock()
	})
	t.Run("chap", func(t *testing.T) {
		c := login()
		check(t, c, func() {
			rt.mu.Lock()
			rt.creds = CHAPCredentials{Required: true, User: "u", Secret: "a-new-secret"}
			rt.mu.Unlock()
		})
		rt.mu.Lock()
		rt.creds = CHAPCredentials{}
		rt.mu.Unlock()
	})
	t.Run("target removed", func(t *testing.T) {
		c := login()
		check(t, c, func() {
			ts.reg.mu.Lock()
			delete(ts.reg.targets, strings.ToLower(testIQN))
			ts.reg.mu.Unlock()
		})
	})
	t.Run("discovery chap", func(t *testing.T) {
		c := dial(t, ts.addr)
		c.login("")
		check(t, c, func() {
			ts.reg.mu.Lock()
			ts.reg.disc = &CHAPCredentials{Required: true, User: "d", Secret: "discovery-secret"}
			ts.reg.mu.Unlock()
		})
	})
}

// A discovery session cannot start as a normal one (whose target and
// credentials were looked up) and switch later, nor the reverse.
func TestLoginSessionTypeChange(t *testing.T) {
	ts := startServer(t, Config{NopInterval: -1})
	for _, tc := range []struct{ first, later string }{
		{"SessionType=Normal", "SessionType=Discovery"},
		{"SessionType=Discovery", "SessionType=Normal"},
	} {
		c := dial(t, ts.addr)
		p := c.loginPDU(0, 1, false, keysData("InitiatorName="+testInitiator, "TargetName="+testIQN, tc.first, "AuthMethod=None"))
		if st := loginStatus(p); st != 0 {
			t.Fatalf("%s: status %#x", tc.first, st)
		}
		p = c.loginPDU(0, 1, true, keysData(tc.later))
		if st := loginStatus(p); st != statusInitiatorError {
			t.Fatalf("%s then %s: status %#x, want initiator error", tc.first, tc.later, st)
		}
		c.expectClosed()
	}
}
