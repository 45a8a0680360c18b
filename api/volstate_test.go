package api

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/service"
)

// reopen restarts the environment's service (and API server) on the same
// data directory, after the test has changed files behind its back.
func (e *env) reopen() {
	e.t.Helper()
	e.srv.Close()
	if err := e.svc.Close(); err != nil {
		e.t.Fatal(err)
	}
	svc, err := service.Open(service.Options{DataDir: e.dir, Logger: quiet})
	if err != nil {
		e.t.Fatal(err)
	}
	e.svc = svc
	e.srv = httptest.NewServer(New(Options{Service: svc, Sessions: e.sess, Token: testToken}))
}

// TestOfflineVolumeInAPI: a volume whose data file was truncated is listed
// with state "offline" and a reason naming the file, the metric says so,
// recheck answers 409 while the file is short and 200 once it is restored.
func TestOfflineVolumeInAPI(t *testing.T) {
	e := newEnv(t)
	e.must("POST", "/api/v1/volumes", map[string]any{"name": "v", "size_bytes": 1 << 20}, http.StatusCreated, nil)
	e.must("POST", "/api/v1/volumes", map[string]any{"name": "ok", "size_bytes": 1 << 20}, http.StatusCreated, nil)
	raw := filepath.Join(e.dir, "volumes", "v.raw")
	e.svc.Close()
	if err := os.Truncate(raw, 512); err != nil {
		t.Fatal(err)
	}
	e.reopen()

	var list []Volume
	e.must("GET", "/api/v1/volumes", nil, http.StatusOK, &list)
	states := map[string]Volume{}
	for _, v := range list {
		states[v.Name] = v
	}
	if v := states["v"]; v.State != "offline" || !strings.Contains(v.Reason, raw) {
		t.Errorf("truncated volume: state %q reason %q, want offline naming %s", v.State, v.Reason, raw)
	}
	if v := states["ok"]; v.State != "online" || v.Reason != "" {
		t.Errorf("healthy volume: state %q reason %q", v.State, v.Reason)
	}
	_, metrics := e.do("GET", "/metrics", nil)
	if !strings.Contains(string(metrics), `anvil_volume_state{state="offline",volume="v"} 1`) {
		t.Error("metrics do not report the offline volume")
	}
	code, body := e.do("POST", "/api/v1/volumes/v/recheck", nil)
	if code != http.StatusConflict || !strings.Contains(string(body), raw) {
		t.Errorf("recheck of a still-short file: %d %s, want 409 naming the file", code, body)
	}
	if err := os.Truncate(raw, 1<<20); err != nil {
		t.Fatal(err)
	}
	var v Volume
	e.must("POST", "/api/v1/volumes/v/recheck", nil, http.StatusOK, &v)
	if v.State != "online" {
		t.Errorf("after recheck: state %q", v.State)
	}
}
