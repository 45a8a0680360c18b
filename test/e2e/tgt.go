package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// TgtIQN is the target name StartTgt exports.
const TgtIQN = "iqn.2026-11.io.anvil:tgt-peer"

// Tgt is Debian's userspace iSCSI target (tgtd) serving one sparse file. It
// is the reference peer: the guest passing against tgt proves the guest and
// the checks are right, so a failure against Anvil is Anvil's.
type Tgt struct {
	Portal  string // 127.0.0.1:port
	IQN     string
	LogPath string
	control string // tgtd's control port number, which names its socket
	cmd     *exec.Cmd
	exited  chan struct{}
}

// StartTgt runs tgtd on a free loopback port with one target holding a LUN
// of size bytes backed by a sparse file, and stops it when the test ends.
// tgtd needs root.
func StartTgt(t testing.TB, size int64) *Tgt {
	t.Helper()
	harness.NeedTool(t, "tgtd", "tgtadm")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("tgtd needs root; CI must run every test")
		}
		t.Skip("SKIPPED LOUDLY: tgtd needs root")
	}
	dir := t.TempDir()
	backing := filepath.Join(dir, "lun.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	portal := harness.FreePort(t)
	_, port, _ := net.SplitHostPort(portal)
	pn, _ := strconv.Atoi(port)
	control := strconv.Itoa(1000 + pn%30000)
	g := &Tgt{Portal: portal, IQN: TgtIQN, LogPath: filepath.Join(dir, "tgtd.log"), control: control, exited: make(chan struct{})}
	logf, err := os.Create(g.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	// The control port only names tgtd's management socket
	// (/var/run/tgtd/socket.N, N below 32768); deriving it from the free
	// iSCSI port keeps it apart from other tgtd instances.
	g.cmd = exec.Command("tgtd", "-f", "-C", g.control, "--iscsi", "portal="+portal)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start tgtd: %v", err)
	}
	go func() { g.cmd.Wait(); logf.Close(); close(g.exited) }()
	t.Cleanup(g.stop)

	steps := [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", g.IQN},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", backing},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	}
	// tgtd creates its control socket shortly after start; retry the
	// first step until it answers.
	deadline := time.Now().Add(15 * time.Second)
	for i, s := range steps {
		for {
			err := g.adm(s...)
			if err == nil {
				break
			}
			if i > 0 || time.Now().After(deadline) {
				t.Fatalf("tgtadm %s: %v\ntgtd log:\n%s", strings.Join(s, " "), err, g.Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return g
}

func (g *Tgt) adm(args ...string) error {
	out, err := harness.Run(context.Background(), 10*time.Second, "tgtadm",
		append([]string{"-C", g.control, "--lld", "iscsi"}, args...)...)
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// Log returns what tgtd has written so far.
func (g *Tgt) Log() string {
	b, _ := os.ReadFile(g.LogPath)
	return string(b)
}

// stop shuts tgtd down. tgtd ignores SIGTERM while it has targets; the
// management "delete system" request is its clean shutdown.
func (g *Tgt) stop() {
	select {
	case <-g.exited:
		return
	default:
	}
	g.adm("--mode", "system", "--op", "delete", "--force")
	select {
	case <-g.exited:
	case <-time.After(5 * time.Second):
		g.cmd.Process.Kill()
		<-g.exited
	}
}
