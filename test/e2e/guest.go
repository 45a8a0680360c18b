// Package e2e boots a Linux guest under qemu whose kernel initiator
// (open-iscsi's iscsistart + iscsi_tcp, or nvme-tcp) attaches a volume over
// the network and checks it with raw I/O, mkfs.ext4, files and e2fsck.
//
// The guest is Debian 12's cloud kernel with a small initramfs that
// build-guest.sh assembles from Debian packages into a cache outside git.
// Each boot runs one phase (see init.sh) and reports on the serial console
// with lines that start with "ANVIL-E2E: "; BootGuest streams the console to
// a log file and RunPhase checks the markers against what the host computes
// independently from package guestdata.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/e2e/guestdata"
	"github.com/anvilproject/anvil/test/harness"
)

// MarkerPrefix starts every line the guest's init reports to the host.
const MarkerPrefix = "ANVIL-E2E: "

// DefaultBootTimeout bounds one boot, from qemu start to power-off. A boot
// takes well under a minute under TCG on a loaded two-core machine.
const DefaultBootTimeout = 5 * time.Minute

// Phases understood by the guest's init.
const (
	PhaseWrite      = "write"       // raw pattern, mkfs.ext4, files, fsck, remount
	PhaseVerify     = "verify"      // raw pattern, fsck, files of an earlier write
	PhaseNVMeWrite  = "nvme-write"  // PhaseWrite over nvme-tcp
	PhaseNVMeVerify = "nvme-verify" // PhaseVerify over nvme-tcp

	// PhaseLogin only logs in and waits for the disk.
	PhaseLogin = "login"
	// PhaseRevoke logs in, reports "reading" and reads the disk until a
	// read fails (Params["cutoff"] seconds at most), reporting "cut-off":
	// the host revokes the initiator's access meanwhile.
	PhaseRevoke = "revoke"
	// PhaseMultipath expects two sessions to the target (iscsiadm with
	// node.session.nr_sessions=2) and checks both paths see one LU.
	PhaseMultipath = "multipath"
	// PhaseLiveWrite writes Params["gens"] generations of a raw region
	// while the host restarts the target, then checks the last one; it
	// needs Params["login"]="iscsiadm" so iscsid recovers the session.
	PhaseLiveWrite = "live-write"
	// PhasePowerCutWrite overwrites a raw region with generation after
	// generation, flushing after each; the host cuts power meanwhile.
	PhasePowerCutWrite = "power-cut-write"
	// PhasePowerCutVerify checks every block holds a generation in
	// [Params["lo"], Params["hi"]].
	PhasePowerCutVerify = "power-cut-verify"
)

// GuestConfig says what one boot of the guest does.
type GuestConfig struct {
	// Portal is the target's address as the host sees it. It must be on
	// the host's loopback: qemu's user-mode network shows the host's
	// 127.0.0.1 to the guest as 10.0.2.2.
	Portal string
	// IQN is the iSCSI target name (or the NVMe subsystem NQN).
	IQN string
	// Phase is one of the Phase* constants.
	Phase string
	// Seed selects the deterministic data; a verify phase must use the
	// seed of the write phase it checks.
	Seed uint64
	// TPGT is the target portal group tag iscsistart asks for (default 1).
	TPGT int
	// ISCSIParams are open-iscsi node settings NAME=VALUE, e.g.
	// "node.conn[0].iscsi.HeaderDigest=CRC32C": iscsistart -P, or
	// iscsiadm -o update when Params["login"] is "iscsiadm".
	ISCSIParams []string
	// WantNegotiated are login results the boot must show (keys of
	// Boot.Negotiated), checked by CheckPhase.
	WantNegotiated map[string]string
	// Params are extra anvil.<key>=<value> kernel parameters (see init.sh).
	Params map[string]string
	// OnMarker, when set, sees each marker as it arrives; returning true
	// powers the guest off at once (qemu is killed), as a power cut.
	OnMarker func(marker string) (cut bool)
	// WantTrim makes CheckPhase require that fstrim worked in a write
	// phase (the target supports UNMAP); tgt's default LUN does not.
	WantTrim bool
	// Timeout bounds the boot (default DefaultBootTimeout).
	Timeout time.Duration
	// MemoryMiB is the guest's RAM (default 512).
	MemoryMiB int
	// Name labels the console log file (default the phase).
	Name string
}

// Boot is what one guest boot reported.
type Boot struct {
	Console string        // the whole serial console
	LogPath string        // where the console was streamed
	Elapsed time.Duration // qemu start to exit
	Markers []string      // the ANVIL-E2E lines, prefix stripped, in order
	Cut     bool          // OnMarker cut the power
}

// Marker returns the rest of the last marker that starts with prefix.
func (b *Boot) Marker(prefix string) (string, bool) {
	for i := len(b.Markers) - 1; i >= 0; i-- {
		if rest, ok := strings.CutPrefix(b.Markers[i], prefix); ok {
			return rest, true
		}
	}
	return "", false
}

// MarkerAll returns the rest of every marker that starts with prefix.
func (b *Boot) MarkerAll(prefix string) []string {
	var out []string
	for _, m := range b.Markers {
		if rest, ok := strings.CutPrefix(m, prefix); ok {
			out = append(out, rest)
		}
	}
	return out
}

// Negotiated returns the iSCSI parameters the guest's kernel initiator
// holds after login (from sysfs: initial_r2t, immediate_data,
// first_burst_len, max_burst_len, max_outstanding_r2t, erl, tpgt,
// header_digest, data_digest, max_recv_dlength, max_xmit_dlength).
func (b *Boot) Negotiated() map[string]string {
	rest, ok := b.Marker("negotiated")
	if !ok {
		return nil
	}
	m := make(map[string]string)
	for _, kv := range strings.Fields(rest) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Tail returns the last n lines of the console, for failure messages.
func (b *Boot) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(b.Console, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// guestTools are what building and booting the guest needs.
var guestTools = []string{"qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb", "cpio", "gzip", "go"}

// guestBuildTimeout bounds build-guest.sh: a first run downloads ~30 MB of
// packages; later runs hit the cache.
const guestBuildTimeout = 15 * time.Minute

var (
	guestOnce                sync.Once
	guestKernel, guestInitrd string
	guestBuildErr            error
	guestBuildElapsed        time.Duration
)

// Guest builds (or finds in the cache) the guest's kernel and initramfs
// once per test binary and returns their paths.
func Guest(t testing.TB) (kernel, initrd string) {
	t.Helper()
	harness.NeedTool(t, guestTools...)
	guestOnce.Do(func() {
		start := time.Now()
		out, err := harness.Run(context.Background(), guestBuildTimeout, "bash",
			filepath.Join(harness.RepoRoot(), "test", "e2e", "build-guest.sh"))
		guestBuildElapsed = time.Since(start)
		if err != nil {
			guestBuildErr = fmt.Errorf("build-guest.sh: %w\n%s", err, out)
			return
		}
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "KERNEL="); ok {
				guestKernel = v
			}
			if v, ok := strings.CutPrefix(line, "INITRD="); ok {
				guestInitrd = v
			}
		}
		if guestKernel == "" || guestInitrd == "" {
			guestBuildErr = fmt.Errorf("build-guest.sh printed no KERNEL=/INITRD= lines:\n%s", out)
		}
	})
	if guestBuildErr != nil {
		t.Fatal(guestBuildErr)
	}
	t.Logf("guest kernel %s, initrd %s (ready in %s)", guestKernel, guestInitrd, guestBuildElapsed.Round(time.Millisecond))
	return guestKernel, guestInitrd
}

// BootGuest boots the guest once with cfg and returns what its console
// showed. It fails the test only when the guest cannot be run at all or
// does not power off within the timeout; judging the markers is the
// caller's (or RunPhase's) job.
func BootGuest(t testing.TB, cfg GuestConfig) *Boot {
	t.Helper()
	kernel, initrd := Guest(t)
	host, port, err := net.SplitHostPort(cfg.Portal)
	if err != nil {
		t.Fatalf("guest portal %q: %v", cfg.Portal, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("guest portal %q: the guest reaches only the host's loopback (as 10.0.2.2)", cfg.Portal)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultBootTimeout
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 512
	}
	if cfg.TPGT == 0 {
		cfg.TPGT = 1
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Phase
	}
	for _, s := range append([]string{cfg.IQN, cfg.Phase}, cfg.ISCSIParams...) {
		if s == "" || strings.ContainsAny(s, " \t\n\"") {
			t.Fatalf("guest parameter %q is empty or has blanks or quotes; the kernel command line cannot carry it", s)
		}
	}
	appendArgs := []string{
		"console=ttyS0", "loglevel=4", "panic=-1", "edd=off",
		"anvil.phase=" + cfg.Phase,
		"anvil.iqn=" + cfg.IQN,
		"anvil.addr=10.0.2.2",
		"anvil.port=" + port,
		"anvil.tpgt=" + strconv.Itoa(cfg.TPGT),
		"anvil.seed=" + strconv.FormatUint(cfg.Seed, 10),
	}
	for _, p := range cfg.ISCSIParams {
		appendArgs = append(appendArgs, "anvil.iparam="+p)
	}
	for k, v := range cfg.Params {
		if k == "" || v == "" || strings.ContainsAny(k+v, " \t\n\"=") {
			t.Fatalf("guest parameter %q=%q is empty or has blanks, quotes or '='", k, v)
		}
		appendArgs = append(appendArgs, "anvil."+k+"="+v)
	}
	args := []string{
		// TCG, not KVM: KVM guests hang on these machines, and TCG is what
		// every CI runner has.
		"-accel", "tcg",
		// "max" lets Go's crypto in the helper use the SSE/AVX paths TCG
		// emulates, which is faster than qemu64's baseline.
		"-cpu", "max",
		"-m", strconv.Itoa(cfg.MemoryMiB) + "M",
		"-smp", "1",
		"-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", strings.Join(appendArgs, " "),
		"-netdev", "user,id=n0",
		"-device", "virtio-net-pci,netdev=n0",
	}

	logPath := filepath.Join(t.TempDir(), "console-"+cfg.Name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("console log: %v", err)
	}
	defer logf.Close()

	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	t.Logf("booting guest: phase=%s target=%s portal=10.0.2.2:%s seed=%d", cfg.Phase, cfg.IQN, port, cfg.Seed)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	var (
		console  strings.Builder
		markers  []string
		cut      bool
		readDone = make(chan struct{})
	)
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			console.WriteString(line + "\n")
			fmt.Fprintln(logf, line)
			// Escape sequences from the firmware can precede a marker on
			// its line, so look for the prefix anywhere.
			if i := strings.Index(line, MarkerPrefix); i >= 0 {
				m := line[i+len(MarkerPrefix):]
				markers = append(markers, m)
				if !strings.HasPrefix(m, "file ") {
					t.Logf("guest[%s] %.1fs: %s", cfg.Name, time.Since(start).Seconds(), m)
				}
				if !cut && cfg.OnMarker != nil && cfg.OnMarker(m) {
					cut = true
					cmd.Process.Kill()
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	waitErr := cmd.Wait()
	pw.Close()
	<-readDone
	b := &Boot{Console: console.String(), LogPath: logPath, Elapsed: time.Since(start), Markers: markers, Cut: cut}
	t.Logf("guest[%s] exited after %s (console log %s)", cfg.Name, b.Elapsed.Round(100*time.Millisecond), logPath)
	if cut {
		return b
	}
	if ctx.Err() != nil {
		t.Fatalf("guest[%s] did not power off within %s; console tail:\n%s", cfg.Name, cfg.Timeout, b.Tail(80))
	}
	if waitErr != nil {
		t.Fatalf("qemu failed: %v; console tail:\n%s", waitErr, b.Tail(80))
	}
	return b
}

// RunPhase boots the guest for one phase and fails the test unless the
// guest reported every check of that phase as passed, with raw data and
// file checksums equal to what package guestdata says they must be.
func RunPhase(t testing.TB, cfg GuestConfig) *Boot {
	t.Helper()
	b := BootGuest(t, cfg)
	if err := CheckPhase(b, cfg); err != nil {
		t.Fatalf("guest[%s]: %v\nconsole tail:\n%s", cfg.Name, err, b.Tail(120))
	}
	return b
}

// CheckPhase judges the markers of one boot of phase cfg.Phase.
func CheckPhase(b *Boot, cfg GuestConfig) error {
	if f := b.MarkerAll("FAIL "); len(f) > 0 {
		return fmt.Errorf("guest reported failure: %s", strings.Join(f, "; "))
	}
	if _, ok := b.Marker("DONE"); !ok {
		return fmt.Errorf("guest never reported DONE")
	}
	var want []string
	switch cfg.Phase {
	case PhaseWrite, PhaseNVMeWrite:
		want = []string{"raw-ok", "raw-after-fs", "fsck-ok first", "fsck-ok after-trim"}
	case PhaseVerify, PhaseNVMeVerify:
		want = []string{"raw-ok", "fsck-ok verify"}
	case PhaseLogin:
		if _, ok := b.Marker("disk "); !ok {
			return fmt.Errorf("guest never reported its disk")
		}
		return nil
	case PhaseRevoke:
		if _, ok := b.Marker("cut-off "); !ok {
			return fmt.Errorf("guest never reported cut-off")
		}
		return nil
	case PhaseMultipath:
		if _, ok := b.Marker("paths-ok"); !ok {
			return fmt.Errorf("guest never reported paths-ok")
		}
		return nil
	case PhasePowerCutVerify, PhaseLiveWrite:
		if _, ok := b.Marker("gens-ok"); !ok {
			return fmt.Errorf("guest never reported gens-ok")
		}
		return nil
	default:
		return fmt.Errorf("unknown phase %q", cfg.Phase)
	}
	if len(cfg.WantNegotiated) > 0 {
		got := b.Negotiated()
		for k, v := range cfg.WantNegotiated {
			if got[k] != v {
				return fmt.Errorf("login negotiated %s=%q, want %q (all: %v)", k, got[k], v, got)
			}
		}
	}
	if cfg.WantTrim && (cfg.Phase == PhaseWrite || cfg.Phase == PhaseNVMeWrite) {
		if _, ok := b.Marker("fstrim-ok"); !ok {
			u, _ := b.Marker("fstrim-unsupported")
			return fmt.Errorf("fstrim did not work:%s", u)
		}
	}
	rawWant := "raw-sha256=" + guestdata.PatternSHA256(cfg.Seed, 0, RawPatternBytes)
	for _, w := range want {
		got, ok := b.Marker(w)
		if !ok {
			return fmt.Errorf("guest never reported %q", w)
		}
		if strings.HasPrefix(w, "raw-") && strings.TrimSpace(got) != rawWant {
			return fmt.Errorf("%s: guest read %q, the pattern is %q", w, strings.TrimSpace(got), rawWant)
		}
	}
	sums := b.MarkerAll("checksums=")
	if len(sums) == 0 {
		return fmt.Errorf("guest never reported file checksums")
	}
	wantSum := guestdata.ManifestSHA256(cfg.Seed)
	for i, s := range sums {
		if s != wantSum {
			return fmt.Errorf("file checksums #%d: guest %s, expected %s; guest manifest:\n%s\nexpected manifest:\n%s",
				i+1, s, wantSum, strings.Join(b.MarkerAll("file "), "\n"), guestdata.Manifest(cfg.Seed))
		}
	}
	return nil
}

// RawPatternBytes is the size of the raw pattern region at the end of the
// LUN (init.sh's RAW).
const RawPatternBytes = 64 << 20

// Seed returns the data seed of a test run: ANVIL_E2E_SEED when set (to
// replay a failure), otherwise a fresh one, logged either way.
func Seed(t testing.TB) uint64 {
	t.Helper()
	if s := os.Getenv("ANVIL_E2E_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("ANVIL_E2E_SEED=%q: %v", s, err)
		}
		t.Logf("seed %d (from ANVIL_E2E_SEED)", v)
		return v
	}
	v := uint64(time.Now().UnixNano()) & (1<<63 - 1)
	t.Logf("seed %d (replay with ANVIL_E2E_SEED=%d)", v, v)
	return v
}
