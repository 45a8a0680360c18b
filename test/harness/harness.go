// Package harness starts a real Anvil daemon for end-to-end tests: it builds
// cmd/anvil once per test binary, runs `anvil serve` on free loopback ports
// over a temporary data directory, and stops or kills it on demand.
//
// Tests drive the daemon with real peers (libiscsi, qemu-img, the Linux
// initiators in a qemu guest), never only with Anvil's own client code.
package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DemoIQN is the target the daemon creates on an empty data directory.
const DemoIQN = "iqn.2026-11.io.anvil:demo"

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// RepoRoot returns the repository root (the folder holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Binary builds cmd/anvil once and returns the path of the binary.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "anvil-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "anvil")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/anvil")
		cmd.Dir = RepoRoot()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/anvil: %v\n%s", err, out.String())
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// FreePort returns a loopback address with a port nobody listens on now.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Daemon is one running `anvil serve`.
type Daemon struct {
	t       testing.TB
	DataDir string
	ISCSI   string // host:port of the iSCSI portal
	API     string // host:port of the REST API
	// NVMePort and NVMeDiscoveryPort are the host:port of the NVMe/TCP
	// I/O and discovery listeners.
	NVMePort, NVMeDiscoveryPort string
	Args                        []string
	Env                         []string
	Prefix                      []string
	cmd                         *exec.Cmd
	log                         *os.File
	LogPath                     string
	exited                      chan struct{}
	// last is the exit status of the most recent process that ended.
	last *os.ProcessState
}

// Options tune Start.
type Options struct {
	DataDir string   // reuse a data directory (restart); empty means a new temp dir
	Args    []string // extra arguments after `serve`
	Env     []string // extra environment
	ISCSI   string   // fixed iSCSI address (restart on the same port); empty means free port
	API     string
	// NVMePort and NVMeDiscoveryPort fix the NVMe/TCP addresses (restart
	// on the same ports); empty means free ports.
	NVMePort, NVMeDiscoveryPort string
	// Prefix is a command the daemon runs under, e.g. {"prlimit",
	// "--nofile=256:256"}; it must exec the daemon (same process).
	Prefix []string
}

// Start runs the daemon and waits until its iSCSI portal accepts
// connections. The daemon is killed when the test ends.
func Start(t testing.TB, o Options) *Daemon {
	t.Helper()
	d := &Daemon{t: t, DataDir: o.DataDir, ISCSI: o.ISCSI, API: o.API, NVMePort: o.NVMePort, NVMeDiscoveryPort: o.NVMeDiscoveryPort, Args: o.Args, Env: o.Env, Prefix: o.Prefix}
	if d.DataDir == "" {
		d.DataDir = t.TempDir()
	}
	if d.ISCSI == "" {
		d.ISCSI = FreePort(t)
	}
	if d.API == "" {
		d.API = FreePort(t)
	}
	// Never the default 4420/8009: tests run in parallel, and a host's
	// own nvmet may hold those.
	if d.NVMePort == "" {
		d.NVMePort = FreePort(t)
	}
	if d.NVMeDiscoveryPort == "" {
		d.NVMeDiscoveryPort = FreePort(t)
	}
	d.start()
	t.Cleanup(func() { d.Kill() })
	return d
}

func (d *Daemon) start() {
	t := d.t
	t.Helper()
	bin := Binary(t)
	args := append([]string{"serve", "--data-dir", d.DataDir, "--iscsi-listen", d.ISCSI, "--api-listen", d.API,
		"--nvme-listen", d.NVMePort, "--nvme-discovery-listen", d.NVMeDiscoveryPort}, d.Args...)
	logf, err := os.CreateTemp("", "anvil-daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	d.log, d.LogPath = logf, logf.Name()
	cmd := exec.Command(bin, args...)
	if len(d.Prefix) > 0 {
		cmd = exec.Command(d.Prefix[0], append(append(slices.Clone(d.Prefix[1:]), bin), args...)...)
	}
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start anvil: %v", err)
	}
	d.cmd = cmd
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		d.last = cmd.ProcessState // published to readers by close(exited)
		close(exited)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("anvil exited during start-up:\n%s", d.Log())
		default:
		}
		c, err := net.DialTimeout("tcp", d.ISCSI, 200*time.Millisecond)
		if err == nil {
			c.Close()
			d.exited = exited
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("anvil did not listen on %s within 60s:\n%s", d.ISCSI, d.Log())
}

// PID returns the daemon's process ID, or 0 when it is not running.
func (d *Daemon) PID() int {
	if !d.Running() {
		return 0
	}
	return d.cmd.Process.Pid
}

// Log returns what the daemon has written so far.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(d.LogPath)
	return string(b)
}

// Stop sends SIGTERM and waits for a clean exit.
func (d *Daemon) Stop() error {
	if d.cmd == nil || d.exited == nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("anvil did not stop within 60s of SIGTERM")
	}
	d.cmd, d.exited = nil, nil
	if d.log != nil {
		d.log.Close()
	}
	return nil
}

// Kill sends SIGKILL (a crash) and waits for the process to go.
func (d *Daemon) Kill() {
	if d.cmd == nil || d.exited == nil {
		return
	}
	d.cmd.Process.Kill()
	<-d.exited
	d.cmd, d.exited = nil, nil
	if d.log != nil {
		d.log.Close()
	}
}

// ExitState returns how the last daemon process that Stop or Kill waited
// for ended (nil before any has ended), so a test can check that SIGTERM
// gives exit status 0.
func (d *Daemon) ExitState() *os.ProcessState { return d.last }

// Restart starts the daemon again on the same data directory and ports.
func (d *Daemon) Restart() {
	d.t.Helper()
	d.start()
}

// Running reports whether the daemon process is alive.
func (d *Daemon) Running() bool {
	if d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// Run executes a command with a timeout and returns its combined output.
func Run(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", name, timeout, ctx.Err())
	}
	return out.String(), err
}

// NeedTool fails the test in CI when a peer tool is missing, and skips it
// loudly elsewhere: in CI every test must run.
func NeedTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; scripts/test.sh installs it (CI must run every test)", n)
			}
			t.Skipf("SKIPPED LOUDLY: %s is not installed; run scripts/test.sh to install test dependencies", n)
		}
	}
}
