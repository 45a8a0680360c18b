package peers

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// serveOnce runs `anvil serve` on dir with fresh ports and returns its
// output and error, for a daemon that is expected to refuse to start.
func serveOnce(t *testing.T, dir string) (string, error) {
	t.Helper()
	return harness.Run(context.Background(), 30*time.Second, harness.Binary(t), "serve", "--data-dir", dir,
		"--iscsi-listen", harness.FreePort(t), "--api-listen", harness.FreePort(t))
}

// TestSecondDaemonRefused: a second daemon on a data directory in use
// exits at once with a message naming the directory and the first
// daemon's PID, and the first keeps serving.
func TestSecondDaemonRefused(t *testing.T) {
	harness.NeedTool(t, "iscsi-inq")
	d := harness.Start(t, harness.Options{})
	out, err := serveOnce(t, d.DataDir)
	if err == nil {
		t.Fatalf("a second daemon started on %s:\n%s", d.DataDir, out)
	}
	b, rerr := os.ReadFile(filepath.Join(d.DataDir, "anvil.lock"))
	if rerr != nil {
		t.Fatal(rerr)
	}
	pid := strings.TrimSpace(string(b))
	if _, perr := strconv.Atoi(pid); perr != nil {
		t.Fatalf("lock file holds %q, not a PID", pid)
	}
	for _, want := range []string{d.DataDir, "in use by another Anvil daemon", "process " + pid} {
		if !strings.Contains(out, want) {
			t.Errorf("second daemon's message lacks %q:\n%s", want, out)
		}
	}
	if !d.Running() {
		t.Fatal("the first daemon stopped")
	}
	run(t, d, "iscsi-inq", lunURL(d))
}

// TestGarbledCatalogRefusesStart: a damaged catalog.db stops the daemon
// with an error naming the file, not a Go panic.
func TestGarbledCatalogRefusesStart(t *testing.T) {
	d := harness.Start(t, harness.Options{})
	stopClean(t, d)
	path := filepath.Join(d.DataDir, "catalog.db")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(b); i++ {
		if i >= 2*4096 { // keep the meta pages, garble the rest
			b[i] = byte(i*131 + 7)
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := serveOnce(t, d.DataDir)
	if err == nil {
		t.Fatalf("the daemon started on a garbled catalog:\n%s", out)
	}
	if strings.Contains(out, "panic:") || strings.Contains(out, "goroutine ") {
		t.Fatalf("garbled catalog crashed the daemon with a panic:\n%s", out)
	}
	if !strings.Contains(out, path) || !strings.Contains(out, "corrupt") {
		t.Errorf("the error does not name %s as corrupt:\n%s", path, out)
	}
}
