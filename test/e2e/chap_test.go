package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// setCHAP requires CHAP on a target through the daemon's REST API.
func setCHAP(t *testing.T, d *harness.Daemon, iqn string, body map[string]string) {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
	if err != nil {
		t.Fatalf("API token: %v", err)
	}
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPut, "http://"+d.API+"/api/v1/targets/"+url.PathEscape(iqn)+"/chap", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT chap: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT chap: %s", resp.Status)
	}
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
