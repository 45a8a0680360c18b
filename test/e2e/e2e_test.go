package e2e

import (
	"os"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// TestOpenISCSIGuest attaches Anvil's demo volume with the Linux kernel
// initiator in a qemu guest, writes a raw pattern and an ext4 tree, restarts
// the daemon, and checks everything again from a second boot.
func TestOpenISCSIGuest(t *testing.T) {
	harness.NeedTool(t, "qemu-system-x86_64")
	WriteRestartVerify(t, harness.Options{}, harness.DemoIQN, GuestConfig{})
}

// TestOpenISCSIGuestTgt runs the same two boots against Debian's tgtd. It
// checks the harness rather than Anvil, so it runs only on request:
// ANVIL_E2E_PEER=tgt go test ./test/e2e -run Tgt
func TestOpenISCSIGuestTgt(t *testing.T) {
	if !strings.Contains(os.Getenv("ANVIL_E2E_PEER"), "tgt") {
		t.Skip("set ANVIL_E2E_PEER=tgt to check the guest harness against Debian's tgtd")
	}
	harness.NeedTool(t, "qemu-system-x86_64")
	g := StartTgt(t, 1<<30)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tgtd log:\n%s", g.Log())
		}
	})
	cfg := GuestConfig{Portal: g.Portal, IQN: g.IQN, Seed: Seed(t)}
	w := cfg
	w.Phase = PhaseWrite
	RunPhase(t, w)
	v := cfg
	v.Phase = PhaseVerify
	RunPhase(t, v)
}
