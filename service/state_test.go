package service

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// writeVolume writes p at offset 0 of a volume and flushes it.
func writeVolume(t *testing.T, s *Service, name string, p []byte) {
	t.Helper()
	ev, err := s.EngineVolume(name)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ev.WriteAt(ctx, p, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := ev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCopiedDataDirUsesItsOwnFiles: a data directory copied with cp -a
// while its daemon is stopped is a separate appliance: a daemon started on
// the copy writes the copy's image and undo FIFO and leaves the original's
// files byte for byte as they were.
func TestCopiedDataDirUsesItsOwnFiles(t *testing.T) {
	orig := filepath.Join(t.TempDir(), "orig")
	s := open(t, orig, false)
	if _, err := s.CreateVolume(context.Background(), VolumeSpec{Name: "v", SizeBytes: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, "v", bytes.Repeat([]byte{1}, 1<<20))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	origFiles := map[string][]byte{}
	for _, f := range []string{"volumes/v.raw", "volumes/v.undo"} {
		b, err := os.ReadFile(filepath.Join(orig, f))
		if err != nil {
			t.Fatal(err)
		}
		origFiles[f] = b
	}

	cp := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", orig, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	s = open(t, cp, false)
	rec, err := s.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rec.Path, cp+string(filepath.Separator)) {
		t.Errorf("the copy's volume uses %s, outside the copy %s", rec.Path, cp)
	}
	writeVolume(t, s, "v", bytes.Repeat([]byte{2}, 1<<20))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for f, want := range origFiles {
		got, err := os.ReadFile(filepath.Join(orig, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("the daemon on the copy changed the original's %s", f)
		}
	}
	got, err := os.ReadFile(filepath.Join(cp, "volumes", "v.raw"))
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 2 {
		t.Error("the write on the copy did not reach the copy's image")
	}
}

// TestSecondDaemonOnOneDataDirRefused: while one service holds a data
// directory, a second Open on it fails at once, naming the directory and
// the holder's PID; after Close the directory is free again.
func TestSecondDaemonOnOneDataDirRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	_, err := Open(Options{DataDir: dir})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open on a data directory in use = %v, want ErrLocked", err)
	}
	for _, want := range []string{dir, "process " + strconv.Itoa(os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, false)
	s.Close()
}
