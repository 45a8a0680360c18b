package api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/service"
)

// TestFullFileSystem fills a real 16 MiB tmpfs holding the data directory:
// the create warns about the over-commit, the write that finds no space
// fails with ErrNoSpace, clear-error answers 409 naming the full file
// system while it is full and 200 once space is freed, and the
// acknowledged data then commits.
func TestFullFileSystem(t *testing.T) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=16m"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a 16 MiB tmpfs: %v", err)
		}
		t.Skipf("SKIPPING: cannot mount a 16 MiB tmpfs (%v); run as root", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, bytes.Repeat([]byte{1}, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	svc, err := service.Open(service.Options{DataDir: filepath.Join(mnt, "data"), Logger: quiet,
		Engine: service.EngineOptions{UndoSize: 2 << 20, Cache: engine.NewCache(engine.CacheOptions{Size: 32 << 20})}})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: filepath.Join(mnt, "data"), svc: svc, sess: &fakeSessions{}}
	e.srv = httptest.NewServer(New(Options{Service: svc, Sessions: e.sess, Token: testToken}))
	t.Cleanup(func() { e.srv.Close(); e.svc.Close() })

	var v Volume
	e.must("POST", "/api/v1/volumes", map[string]any{"name": "v", "size_bytes": 64 << 20}, http.StatusCreated, &v)
	if len(v.Warnings) == 0 || !strings.Contains(v.Warnings[0], "more than") {
		t.Errorf("creating a 64 MiB thin volume on a 16 MiB file system gave no over-commit warning: %v", v.Warnings)
	}
	ev, err := svc.EngineVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var werr error
	var written int64
	for off := int64(0); off < 64<<20; off += 1 << 20 {
		if werr = ev.WriteAt(ctx, bytes.Repeat([]byte{byte(off>>20) + 1}, 1<<20), off, true); werr != nil {
			break
		}
		written = off + 1<<20
	}
	if !errors.Is(werr, engine.ErrNoSpace) {
		t.Fatalf("writing past the file system's end: %v, want ErrNoSpace", werr)
	}
	code, body := e.do("POST", "/api/v1/volumes/v/clear-error", nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "still full") {
		t.Fatalf("clear-error on a full file system: %d %s, want 409 saying it is still full", code, body)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	e.must("POST", "/api/v1/volumes/v/clear-error", nil, http.StatusOK, &v)
	if v.Error != "" {
		t.Fatalf("volume error after clear-error: %s", v.Error)
	}
	if err := ev.Flush(ctx); err != nil {
		t.Fatalf("flush after freeing space: %v", err)
	}
	got := make([]byte, 1<<20)
	if err := ev.ReadAt(ctx, got, written-1<<20); err != nil || got[0] != byte((written-1)>>20)+1 {
		t.Fatalf("last acknowledged write reads back %d (%v)", got[0], err)
	}
}

// TestSoftThresholdMetrics: a data directory's file system past
// volume.space_warn_percent shows in /metrics as the reached gauge, one
// crossing and the used ratio, and leaving it clears the gauge.
func TestSoftThresholdMetrics(t *testing.T) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=16m"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a 16 MiB tmpfs: %v", err)
		}
		t.Skipf("SKIPPING: cannot mount a 16 MiB tmpfs (%v); run as root", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	svc, err := service.Open(service.Options{DataDir: filepath.Join(mnt, "data"), Logger: quiet, SpaceWarnPercent: 50,
		Engine: service.EngineOptions{UndoSize: 1 << 20, Cache: engine.NewCache(engine.CacheOptions{Size: 8 << 20})}})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: filepath.Join(mnt, "data"), svc: svc, sess: &fakeSessions{}}
	e.srv = httptest.NewServer(New(Options{Service: svc, Sessions: e.sess, Token: testToken}))
	t.Cleanup(func() { e.srv.Close(); e.svc.Close() })

	metric := func(name string) string {
		t.Helper()
		code, body := e.do("GET", "/metrics", nil)
		if code != 200 {
			t.Fatalf("metrics: %d", code)
		}
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		t.Fatalf("no %s in /metrics", name)
		return ""
	}
	svc.CheckSpace()
	if got := metric("anvil_space_soft_threshold_reached"); got != "0" {
		t.Fatalf("soft threshold reached %s on an empty file system, want 0", got)
	}
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, bytes.Repeat([]byte{1}, 12<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	svc.CheckSpace()
	if got := metric("anvil_space_soft_threshold_reached"); got != "1" {
		t.Errorf("soft threshold reached %s at 75%% used with a 50%% threshold, want 1", got)
	}
	if got := metric("anvil_space_soft_threshold_crossings_total"); got != "1" {
		t.Errorf("soft threshold crossings %s, want 1", got)
	}
	if got, err := strconv.ParseFloat(metric("anvil_datadir_used_ratio"), 64); err != nil || got < 0.7 || got > 0.9 {
		t.Errorf("data directory used ratio %v (%v), want about 0.75", got, err)
	}
	os.Remove(filler)
	svc.CheckSpace()
	if got := metric("anvil_space_soft_threshold_reached"); got != "0" {
		t.Errorf("soft threshold reached %s after the space was freed, want 0", got)
	}
}
