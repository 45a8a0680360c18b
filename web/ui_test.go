package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// TestUIInChromium drives the embedded UI in headless Chromium against a
// real daemon: log in, create, resize, map, see it on the dashboard, take
// a screenshot, delete. It then checks through the API that the UI's
// actions really happened.
func TestUIInChromium(t *testing.T) {
	harness.NeedTool(t, "node", "npm", "chromium", "iscsi-perf")
	uitest := filepath.Join(harness.RepoRoot(), "web", "uitest")
	if _, err := os.Stat(filepath.Join(uitest, "node_modules", "playwright-core")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = uitest
		if out, err := cmd.CombinedOutput(); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("npm ci in %s: %v\n%s", uitest, err, out)
			}
			t.Skipf("SKIPPED LOUDLY: npm ci in %s failed (no registry access?): %v\n%s", uitest, err, out)
		}
	}

	d := harness.Start(t, harness.Options{Args: []string{"--no-demo"}})
	base := "http://" + d.API
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/api/v1/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("API not up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))

	dir := os.Getenv("ANVIL_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "anvil-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "ui-dashboard.png")
	os.Remove(shot)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Once the UI has mapped the volume, read from it with libiscsi so
	// the dashboard has live throughput to show.
	ioCtx, stopIO := context.WithCancel(ctx)
	ioDone := make(chan struct{})
	go func() {
		defer close(ioDone)
		driveIO(ioCtx, t, base, token, "iscsi://"+d.ISCSI+"/iqn.2026-11.io.anvil:ui/0")
	}()
	// Stop the load and wait for it before the test ends: driveIO logs.
	defer func() { stopIO(); <-ioDone }()
	cmd := exec.CommandContext(ctx, "node", "ui.mjs", base, token, shot)
	cmd.Dir = uitest
	cmd.Env = append(os.Environ(), "UI_EXPECT_IO=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("UI script failed: %v\n%s\ndaemon log:\n%s", err, out, d.Log())
	}
	var res struct {
		OK    bool
		Steps []string
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || !res.OK || len(res.Steps) != 15 {
		t.Fatalf("UI script result: %v\n%s", err, out)
	}
	st, err := os.Stat(shot)
	if err != nil || st.Size() < 10000 {
		t.Fatalf("screenshot %s missing or empty: %v", shot, err)
	}
	fmt.Printf("UI screenshot artifact: %s\n", shot)
	t.Logf("UI screenshot artifact: %s (%d bytes)", shot, st.Size())

	// The UI's actions are real: the target it created maps nothing now
	// (the volume was deleted with force) and the volume is gone.
	req, _ := http.NewRequest("GET", base+"/api/v1/targets/iqn.2026-11.io.anvil:ui", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tg targetView
	if err := json.NewDecoder(resp.Body).Decode(&tg); err != nil || resp.StatusCode != 200 || !tg.ACL.Open || len(tg.LUNs) != 0 {
		t.Errorf("target after the UI run: %d %+v %v", resp.StatusCode, tg, err)
	}
	// The subsystem it created admits the one host it was given and
	// exports nothing (the namespace was removed in the UI).
	req, _ = http.NewRequest("GET", base+"/api/v1/subsystems/nqn.2026-11.io.anvil:ui", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	sresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sresp.Body.Close()
	var sub struct {
		AllowAnyHost bool              `json:"allow_any_host"`
		Hosts        []string          `json:"hosts"`
		Namespaces   []json.RawMessage `json:"namespaces"`
	}
	if err := json.NewDecoder(sresp.Body).Decode(&sub); err != nil || sresp.StatusCode != 200 || sub.AllowAnyHost || len(sub.Hosts) != 1 || len(sub.Namespaces) != 0 {
		t.Errorf("subsystem after the UI run: %d %+v %v", sresp.StatusCode, sub, err)
	}
}

// targetView is the part of the REST API's target JSON the test reads.
type targetView struct {
	ACL struct {
		Open bool `json:"open"`
	} `json:"acl"`
	LUNs []struct {
		LUN    uint64 `json:"lun"`
		Volume string `json:"volume"`
	} `json:"luns"`
}

// driveIO waits until the UI's target maps LUN 0, then runs iscsi-perf
// against it for a while.
func driveIO(ctx context.Context, t *testing.T, base, token, lunURL string) {
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/v1/targets/iqn.2026-11.io.anvil:ui", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var tg targetView
			json.NewDecoder(resp.Body).Decode(&tg)
			resp.Body.Close()
			if len(tg.LUNs) > 0 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return
	}
	out, err := exec.CommandContext(ctx, "iscsi-perf", "-t", "40", "-m", "4", "-b", "64", "-n", lunURL).CombinedOutput()
	if len(out) > 600 {
		out = out[:600]
	}
	t.Logf("iscsi-perf (drives the dashboard; errors after the UI deletes the volume are expected): %v\n%s", err, out)
}
