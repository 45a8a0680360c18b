package e2e

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
	// Anvil's volumes are thin: the guest's fstrim must reach UNMAP.
	w.WantTrim = true
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

// PowerCut cuts the power under a writing initiator: the guest overwrites
// a raw region generation after generation with a flush after each, and
// once it has reported cutAfter flushed generations the host kills the
// daemon (SIGKILL) and then qemu. After a restart a second boot checks that
// every block holds the last flushed generation or the one in flight, never
// an older one: the engine's promise that a completed flush is durable and
// the only writes a crash may drop are the unflushed ones.
//
// The guest attaches over iSCSI, or over NVMe/TCP when iqn is an NQN (a
// subsystem of the daemon's).
func PowerCut(t *testing.T, opts harness.Options, iqn string, cutAfter int) {
	t.Helper()
	d := harness.Start(t, opts)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s), last lines:\n%s", d.LogPath, tailLines(d.Log(), 150))
		}
	})
	var (
		mu      sync.Mutex
		flushed int
		seed    = Seed(t)
	)
	portal, transport := d.ISCSI, "iscsi"
	if strings.HasPrefix(iqn, "nqn.") {
		portal, transport = d.NVMePort, "nvme"
	}
	cfg := GuestConfig{
		Portal: portal, IQN: iqn, Phase: PhasePowerCutWrite, Seed: seed, Name: "power-cut-write",
		Params: map[string]string{"rawsize": strconv.Itoa(16 << 20), "transport": transport},
		OnMarker: func(m string) bool {
			g, ok := strings.CutPrefix(m, "flushed gen=")
			if !ok {
				return false
			}
			n, err := strconv.Atoi(g)
			if err != nil {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			flushed = n
			if n < cutAfter {
				return false
			}
			// The daemon first: the guest is already writing the next
			// generation, so the crash lands on writes in flight, at a
			// seed-chosen point up to half a second into it.
			time.Sleep(time.Duration(seed%500) * time.Millisecond)
			d.Kill()
			return true
		},
	}
	b := BootGuest(t, cfg)
	if f := b.MarkerAll("FAIL "); len(f) > 0 {
		t.Fatalf("guest failed before the power cut: %s\nconsole tail:\n%s", strings.Join(f, "; "), b.Tail(80))
	}
	if !b.Cut {
		t.Fatalf("guest powered off on its own before %d flushed generations\nconsole tail:\n%s", cutAfter, b.Tail(80))
	}
	mu.Lock()
	last := flushed
	mu.Unlock()
	t.Logf("power cut after generation %d was flushed", last)

	d.Restart()
	v := cfg
	v.Phase, v.Name, v.OnMarker = PhasePowerCutVerify, "power-cut-verify", nil
	v.Params = map[string]string{"rawsize": strconv.Itoa(16 << 20), "transport": transport, "lo": strconv.Itoa(last), "hi": strconv.Itoa(last + 1)}
	vb := RunPhase(t, v)
	gens, _ := vb.Marker("gens-ok")
	t.Logf("blocks per generation after the cut:%s", strings.TrimPrefix(gens, " gens"))
	CheckDaemonLog(t, d)
}

// LiveRestart restarts the daemon (SIGTERM, start again on the same port)
// under a mounted-and-writing initiator logged in through iscsid: the
// guest's session must recover on its own and the writes must finish. It
// also exercises SendTargets discovery, since the guest discovers the
// target with iscsiadm before logging in.
func LiveRestart(t *testing.T, opts harness.Options, iqn string) {
	t.Helper()
	d := harness.Start(t, opts)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s), last lines:\n%s", d.LogPath, tailLines(d.Log(), 150))
		}
	})
	const gens = 6
	var (
		once      sync.Once
		restarted sync.WaitGroup
		stopErr   error
	)
	cfg := GuestConfig{
		Portal: d.ISCSI, IQN: iqn, Phase: PhaseLiveWrite, Seed: Seed(t), Name: "live-write",
		Params: map[string]string{"login": "iscsiadm", "gens": strconv.Itoa(gens), "rawsize": strconv.Itoa(16 << 20)},
		OnMarker: func(m string) bool {
			if m == "flushed gen=2" {
				once.Do(func() {
					restarted.Add(1)
					// Off the console reader, so the guest's output keeps
					// flowing while the daemon is down.
					go func() {
						defer restarted.Done()
						t.Logf("restarting the daemon under the live session")
						stopErr = d.Stop()
						d.Restart()
						t.Logf("daemon is back")
					}()
				})
			}
			return false
		},
	}
	b := BootGuest(t, cfg)
	restarted.Wait()
	if stopErr != nil {
		t.Fatalf("stop daemon: %v", stopErr)
	}
	if err := CheckPhase(b, cfg); err != nil {
		t.Fatalf("guest[%s]: %v\nconsole tail:\n%s", cfg.Name, err, b.Tail(120))
	}
	if _, ok := b.Marker("discovered"); !ok {
		t.Fatalf("guest did not report SendTargets discovery")
	}
	// The kernel logs the drop ("connection1:0: detected conn error");
	// without it the restart missed the session and proved nothing.
	if n, _ := b.Marker("conn-errors="); n == "" || n == "0" {
		t.Fatalf("the guest never saw its connection drop (conn-errors=%q): the restart did not hit the live session", n)
	}
	logins := strings.Count(d.Log(), "iscsi: login")
	if logins < 1 {
		t.Fatalf("the restarted daemon saw no login: the session did not recover through it")
	}
	t.Logf("restarted daemon saw %d login(s)", logins)
	CheckDaemonLog(t, d)
}
