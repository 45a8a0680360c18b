package e2e

import (
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// demoNQN is the demo subsystem a fresh data directory exports the demo
// volume through, as namespace 1.
const demoNQN = "nqn.2026-11.io.anvil:demo"

// TestNVMeTCPGuest attaches the demo namespace with the Linux kernel's
// nvme-tcp host (through /dev/nvme-fabrics, as nvme-cli does): the kernel
// connects the admin and I/O queues, checks Identify, and the guest writes
// a raw pattern and an ext4 tree, fstrims it (Dataset Management
// deallocate) and checks it all. Then the daemon is killed with SIGKILL,
// restarted, and a second boot must find every byte the first one
// flushed.
func TestNVMeTCPGuest(t *testing.T) {
	harness.NeedTool(t, "qemu-system-x86_64")
	d := harness.Start(t, harness.Options{})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log (%s), last lines:\n%s", d.LogPath, tailLines(d.Log(), 150))
		}
	})
	g := GuestConfig{Portal: d.NVMePort, IQN: demoNQN, Seed: Seed(t)}
	w := g
	w.Phase, w.Name, w.WantTrim = PhaseNVMeWrite, "nvme-write", true
	b1 := RunPhase(t, w)
	d.Kill()
	d.Restart()
	v := g
	v.Phase, v.Name = PhaseNVMeVerify, "nvme-verify"
	b2 := RunPhase(t, v)
	t.Logf("boot times: write %s, verify %s", b1.Elapsed.Round(100e6), b2.Elapsed.Round(100e6))
	CheckDaemonLog(t, d)
}

// TestNVMeTCPGuestPowerCut cuts the power under the kernel's nvme-tcp host
// while it overwrites flushed data (four O_DIRECT writers, an NVMe Flush
// after each generation): after a restart every block holds the last
// flushed generation or the one in flight, never older data.
func TestNVMeTCPGuestPowerCut(t *testing.T) {
	harness.NeedTool(t, "qemu-system-x86_64")
	PowerCut(t, harness.Options{}, demoNQN, 2)
}
