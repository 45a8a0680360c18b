package e2e

import (
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// Restart says how WriteRestartVerify takes the daemon down between boots.
type Restart int

const (
	// Graceful stops the daemon with SIGTERM.
	Graceful Restart = iota
	// Crash kills it with SIGKILL. The write boot ends only after the guest
	// has flushed (fsync of the raw device and of every file, umount), so
	// a crash may not lose a byte of it.
	Crash
)

// WriteRestartVerify is the open-iscsi end-to-end scenario against a real
// Anvil daemon: start the daemon with opts, boot the guest to write and
// check data on target iqn (LUN 0 of the demo volume when iqn is
// harness.DemoIQN), stop or kill the daemon, start it again on the same
// data directory and port, and boot the guest again to check that every
// byte survived. Later variants (another engine backend, digests) call it
// with other daemon arguments or guest parameters.
func WriteRestartVerify(t *testing.T, opts harness.Options, iqn string, guest GuestConfig, how Restart) {
	t.Helper()
	d := harness.Start(t, opts)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s), last lines:\n%s", d.LogPath, tailLines(d.Log(), 150))
		}
	})
	guest.Portal = d.ISCSI
	guest.IQN = iqn
	if guest.Seed == 0 {
		guest.Seed = Seed(t)
	}

	w := guest
	w.Phase, w.Name = PhaseWrite, "write"
	b1 := RunPhase(t, w)

	switch how {
	case Crash:
		d.Kill()
	default:
		if err := d.Stop(); err != nil {
			t.Fatalf("stop daemon: %v", err)
		}
	}
	d.Restart()

	v := guest
	v.Phase, v.Name = PhaseVerify, "verify"
	b2 := RunPhase(t, v)
	t.Logf("boot times: write %s, verify %s", b1.Elapsed.Round(100e6), b2.Elapsed.Round(100e6))
	CheckDaemonLog(t, d)
}

// CheckDaemonLog fails the test if the daemon's log shows a recovered
// panic: the guest may have passed, but a connection died on the way.
func CheckDaemonLog(t testing.TB, d *harness.Daemon) {
	t.Helper()
	for _, line := range strings.Split(d.Log(), "\n") {
		if strings.Contains(strings.ToLower(line), "panic") {
			t.Errorf("daemon log shows a panic: %s", line)
		}
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
