package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// setCHAP requires CHAP on a target through the daemon's REST API.
func setCHAP(t *testing.T, d *harness.Daemon, iqn string, body map[string]string) {
	t.Helper()
	apiDo(t, d, http.MethodPut, "/api/v1/targets/"+url.PathEscape(iqn)+"/chap", body, nil)
}

// apiDo sends one request to the daemon's REST API and fails the test
// unless it answers 2xx; out, when not nil, receives the JSON answer.
func apiDo(t *testing.T, d *harness.Daemon, method, path string, body, out any) {
	t.Helper()
	if err := apiCall(d, method, path, body, out); err != nil {
		t.Fatal(err)
	}
}

// apiCall is apiDo returning its error, for goroutines other than the
// test's.
func apiCall(d *harness.Daemon, method, path string, body, out any) error {
	token, err := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
	if err != nil {
		return fmt.Errorf("API token: %w", err)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+d.API+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode %s: %w", method, path, raw, err)
		}
	}
	return nil
}

// TestOpenISCSIGuestCHAP logs the kernel initiator in with mutual CHAP set
// through the REST API (open-iscsi computes the responses in userspace), and
// checks that a wrong initiator secret and a target that cannot prove the
// mutual secret are both refused, as is an initiator without credentials.
func TestOpenISCSIGuestCHAP(t *testing.T) {
	harness.NeedTool(t, "qemu-system-x86_64")
	d := harness.Start(t, harness.Options{})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s), last lines:\n%s", d.LogPath, tailLines(d.Log(), 80))
		}
	})
	setCHAP(t, d, harness.DemoIQN, map[string]string{
		"user": "e2e-initiator", "secret": "initiator-secret-16",
		"mutual_user": "e2e-target", "mutual_secret": "target-secret-1234",
	})
	good := map[string]string{
		"chapuser": "e2e-initiator", "chapsecret": "initiator-secret-16",
		"chapuserin": "e2e-target", "chapsecretin": "target-secret-1234",
	}
	base := GuestConfig{Portal: d.ISCSI, IQN: harness.DemoIQN, Phase: PhaseLogin, Seed: 1}

	ok := base
	ok.Name, ok.Params = "chap-ok", good
	RunPhase(t, ok)

	for _, c := range []struct{ name, key, value string }{
		{"chap-wrong-secret", "chapsecret", "not-the-secret-16"},
		{"chap-wrong-target-secret", "chapsecretin", "not-the-target-sec"},
		{"chap-none", "", ""},
	} {
		p := map[string]string{}
		if c.key != "" {
			for k, v := range good {
				p[k] = v
			}
			p[c.key] = c.value
		}
		bad := base
		bad.Name, bad.Params = c.name, p
		b := BootGuest(t, bad)
		if _, ok := b.Marker("disk "); ok {
			t.Errorf("%s: the guest got the disk", c.name)
		}
		if f, _ := b.Marker("FAIL "); !strings.Contains(f, "login failed") {
			t.Errorf("%s: want a refused login, guest said %q\nconsole tail:\n%s", c.name, f, b.Tail(40))
		}
	}
	CheckDaemonLog(t, d)
}

// guestInitiator is the initiator name init.sh gives the guest.
const guestInitiator = "iqn.2026-11.io.anvil:e2e-guest"

// TestOpenISCSIGuestCHAPSHA256Revoke logs the guest in through iscsid with
// CHAP discovery, then mutual CHAP with SHA-256 offered before MD5 (the
// target must pick SHA-256, as its session list shows), and once the guest
// reads its disk removes the guest from the target's ACL through the REST
// API: the target must drop the live session and refuse the guest's
// reconnects, so the guest's reads fail.
func TestOpenISCSIGuestCHAPSHA256Revoke(t *testing.T) {
	harness.NeedTool(t, "qemu-system-x86_64")
	d := harness.Start(t, harness.Options{})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s), last lines:\n%s", d.LogPath, tailLines(d.Log(), 120))
		}
	})
	tp := "/api/v1/targets/" + url.PathEscape(harness.DemoIQN)
	apiDo(t, d, http.MethodPut, tp+"/acl", map[string]any{"initiators": []string{guestInitiator}}, nil)
	// The guest has credentials of its own on the target; the target-wide
	// ones would not work.
	apiDo(t, d, http.MethodPut, tp+"/chap", map[string]string{"user": "someone-else", "secret": "not-the-guests-secret"}, nil)
	apiDo(t, d, http.MethodPut, tp+"/initiators/"+url.PathEscape(guestInitiator)+"/chap", map[string]string{
		"user": "e2e-initiator", "secret": "initiator-secret-16",
		"mutual_user": "e2e-target", "mutual_secret": "target-secret-1234",
	}, nil)
	apiDo(t, d, http.MethodPut, "/api/v1/discovery/chap", map[string]string{"user": "e2e-discovery", "secret": "discovery-secret-16"}, nil)

	type session struct {
		InitiatorName string `json:"initiator_name"`
		Target        string `json:"target"`
		Discovery     bool   `json:"discovery"`
		AuthMethod    string `json:"auth_method"`
		CHAPAlgorithm string `json:"chap_algorithm"`
		MutualCHAP    bool   `json:"mutual_chap"`
	}
	var (
		mu      sync.Mutex
		before  []session
		revoked = make(chan struct{})
		once    sync.Once
	)
	cfg := GuestConfig{
		Portal: d.ISCSI, IQN: harness.DemoIQN, Phase: PhaseRevoke, Seed: 1, Name: "chap-sha256-revoke",
		Params: map[string]string{"login": "iscsiadm", "cutoff": "60",
			"discuser": "e2e-discovery", "discsecret": "discovery-secret-16"},
		ISCSIParams: []string{
			"node.session.auth.authmethod=CHAP",
			"node.session.auth.chap_algs=SHA256,MD5",
			"node.session.auth.username=e2e-initiator",
			"node.session.auth.password=initiator-secret-16",
			"node.session.auth.username_in=e2e-target",
			"node.session.auth.password_in=target-secret-1234",
			// Fail queued I/O soon after the session is lost, instead
			// of the default two minutes.
			"node.session.timeo.replacement_timeout=5",
		},
		OnMarker: func(m string) bool {
			if m != "reading" {
				return false
			}
			once.Do(func() {
				// Off the console reader, so the guest's output keeps
				// flowing.
				go func() {
					defer close(revoked)
					var list []session
					if err := apiCall(d, http.MethodGet, "/api/v1/sessions", nil, &list); err != nil {
						t.Errorf("list sessions: %v", err)
					}
					mu.Lock()
					before = list
					mu.Unlock()
					t.Logf("sessions before the ACL change: %+v", list)
					if err := apiCall(d, http.MethodPut, tp+"/acl", map[string]any{"initiators": []string{"iqn.2026-11.io.anvil:someone-else"}}, nil); err != nil {
						t.Errorf("change the ACL: %v", err)
					}
					t.Logf("removed the guest from the ACL")
				}()
			})
			return false
		},
	}
	b := RunPhase(t, cfg)
	select {
	case <-revoked:
	default:
		t.Fatal("the guest never reported reading, so its access was never revoked")
	}
	cut, _ := b.Marker("cut-off ")
	t.Logf("guest: cut-off %s", cut)

	mu.Lock()
	var normal *session
	for i, s := range before {
		if s.InitiatorName == guestInitiator && !s.Discovery {
			normal = &before[i]
		}
	}
	mu.Unlock()
	if normal == nil || normal.AuthMethod != "CHAP" || normal.CHAPAlgorithm != "SHA-256" || !normal.MutualCHAP {
		t.Fatalf("the guest's session was not mutual CHAP with SHA-256: %+v (all: %+v)", normal, before)
	}
	log := d.Log()
	if !strings.Contains(log, "dropping session") || !strings.Contains(log, "initiator no longer in the target's ACL") {
		t.Errorf("the daemon log shows no session dropped for the ACL change")
	}
	if !strings.Contains(log, "discovery=true auth=CHAP") {
		t.Errorf("the daemon log shows no CHAP-authenticated discovery session")
	}
	var after []session
	apiDo(t, d, http.MethodGet, "/api/v1/sessions", nil, &after)
	for _, s := range after {
		if s.InitiatorName == guestInitiator && !s.Discovery {
			t.Errorf("the guest still has a session after its ACL entry was removed: %+v", s)
		}
	}
	CheckDaemonLog(t, d)
}
