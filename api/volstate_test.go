package api

import (
	"bytes"
	"context"
	"encoding/binary"
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

// TestDegradedVolumeInAPI: a volume whose newest undo header slot was
// garbled after a flush opens degraded: served read-only with its data,
// state "degraded" and the reason in the volume JSON and the metrics, and
// clear-error refuses with 409 instead of pretending to fix it.
func TestDegradedVolumeInAPI(t *testing.T) {
	e := newEnv(t)
	e.must("POST", "/api/v1/volumes", map[string]any{"name": "v", "size_bytes": 8 << 20}, http.StatusCreated, nil)
	ev, err := e.svc.EngineVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := bytes.Repeat([]byte{0x6b}, 4<<20)
	if err := ev.WriteAt(ctx, want, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := ev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	e.svc.Close()
	undoPath := filepath.Join(e.dir, "volumes", "v.undo")
	b, err := os.ReadFile(undoPath)
	if err != nil {
		t.Fatal(err)
	}
	newest := int64(0)
	if binary.LittleEndian.Uint64(b[4096+16:]) > binary.LittleEndian.Uint64(b[16:]) {
		newest = 4096
	}
	f, err := os.OpenFile(undoPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xee}, 512), newest)
	f.Close()
	e.reopen()

	var v Volume
	e.must("GET", "/api/v1/volumes/v", nil, http.StatusOK, &v)
	if v.State != "degraded" || v.Reason == "" {
		t.Fatalf("state %q reason %q, want degraded with a reason", v.State, v.Reason)
	}
	ev, _ = e.svc.EngineVolume("v")
	got := make([]byte, len(want))
	if err := ev.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("degraded volume does not serve the flushed data (%v)", err)
	}
	_, metrics := e.do("GET", "/metrics", nil)
	if !strings.Contains(string(metrics), `anvil_volume_state{state="degraded",volume="v"} 1`) {
		t.Error("metrics do not report the degraded volume")
	}
	if code, body := e.do("POST", "/api/v1/volumes/v/clear-error", nil); code != http.StatusConflict {
		t.Errorf("clear-error on a degraded volume: %d %s, want 409", code, body)
	}
}
