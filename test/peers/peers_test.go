// Package peers drives a real Anvil daemon with real iSCSI peers: libiscsi's
// command-line tools (iscsi-ls, iscsi-inq, iscsi-readcapacity16) and qemu's
// iSCSI client (qemu-img). Every test starts its own daemon through
// test/harness on a fresh data directory with the 1 GiB thin demo volume.
package peers

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
	"github.com/anvilproject/anvil/test/harness"
)

const (
	demoSize  = 1 << 30
	blockSize = 512
	toolLimit = 2 * time.Minute
)

// lunURL is the libiscsi/qemu URL of the demo LUN.
func lunURL(d *harness.Daemon) string {
	return fmt.Sprintf("iscsi://%s/%s/0", d.ISCSI, harness.DemoIQN)
}

// run runs a peer tool and fails the test, with the daemon's log, if it
// fails.
func run(t *testing.T, d *harness.Daemon, name string, args ...string) string {
	t.Helper()
	out, err := harness.Run(context.Background(), toolLimit, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s\ndaemon log tail:\n%s", name, strings.Join(args, " "), err, out, tail(d.Log(), 30))
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// field returns the value of the first "Key:value" line of iscsi-inq output.
func field(out, key string) (string, bool) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return v, true
		}
	}
	return "", false
}

// stopClean stops the daemon with SIGTERM and requires exit status 0.
func stopClean(t *testing.T, d *harness.Daemon) {
	t.Helper()
	if err := d.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, tail(d.Log(), 30))
	}
	st := d.ExitState()
	if st == nil {
		t.Fatal("daemon exit state unknown after Stop")
	}
	if !st.Success() {
		t.Fatalf("daemon exited with %v after SIGTERM, want status 0; log tail:\n%s", st, tail(d.Log(), 30))
	}
}

// TestISCSILsDiscovery: SendTargets discovery (iscsi-ls) finds the demo
// target, and REPORT LUNS + READ CAPACITY show LUN 0 as a 1 GiB disk.
func TestISCSILsDiscovery(t *testing.T) {
	harness.NeedTool(t, "iscsi-ls")
	d := harness.Start(t, harness.Options{})
	out := run(t, d, "iscsi-ls", "-s", "iscsi://"+d.ISCSI)

	m := regexp.MustCompile(`(?m)^Target:(\S+) Portal:(\S+),(\d+)$`).FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		t.Fatalf("want exactly one target in iscsi-ls output, got %d:\n%s", len(m), out)
	}
	if m[0][1] != harness.DemoIQN {
		t.Errorf("target = %q, want %q", m[0][1], harness.DemoIQN)
	}
	if m[0][2] != d.ISCSI {
		t.Errorf("portal = %q, want the daemon's listen address %q", m[0][2], d.ISCSI)
	}
	luns := regexp.MustCompile(`(?m)^Lun:(\d+)\s+Type:(\S+) \(Size:(\d+)([KMGT])\)$`).FindAllStringSubmatch(out, -1)
	if len(luns) != 1 {
		t.Fatalf("want exactly one LUN in iscsi-ls output, got %d:\n%s", len(luns), out)
	}
	l := luns[0]
	if l[1] != "0" || l[2] != "DIRECT_ACCESS" {
		t.Errorf("LUN line = %q, want LUN 0 of type DIRECT_ACCESS", l[0])
	}
	// iscsi-ls prints (last LBA * block size) rounded down, i.e. one block
	// short of the capacity: a 1 GiB LUN shows as 1023M (tgt's does too).
	n, _ := strconv.Atoi(l[3])
	if !(l[4] == "M" && (n == 1023 || n == 1024)) && !(l[4] == "G" && n == 1) {
		t.Errorf("LUN size = %s%s, want 1 GiB (printed as 1023M by iscsi-ls)", l[3], l[4])
	}
}

// TestISCSIInq checks standard INQUIRY and the serial-number and device-
// identification VPD pages with iscsi-inq, and that the LU's identity (NAA
// designator and serial) is the same after a restart: initiators key
// multipath devices and /dev/disk/by-id on it.
func TestISCSIInq(t *testing.T) {
	harness.NeedTool(t, "iscsi-inq")
	d := harness.Start(t, harness.Options{})
	url := lunURL(d)

	std := run(t, d, "iscsi-inq", url)
	want := map[string]string{
		"Peripheral Qualifier":   "CONNECTED",
		"Peripheral Device Type": "DIRECT_ACCESS",
		"Removable":              "0",
		"CmdQue":                 "1",
	}
	for k, v := range want {
		if got, ok := field(std, k); !ok || got != v {
			t.Errorf("standard INQUIRY %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	vendor, ok := field(std, "Vendor")
	if !ok || len(vendor) != 8 || strings.TrimRight(vendor, " ") != "ANVIL" {
		t.Errorf("Vendor = %q, want \"ANVIL\" space-padded to 8 bytes", vendor)
	}
	product, ok := field(std, "Product")
	if !ok || len(product) != 16 || strings.TrimSpace(product) == "" {
		t.Errorf("Product = %q, want a non-blank 16-byte field", product)
	}
	if rev, ok := field(std, "Revision"); !ok || len(rev) != 4 {
		t.Errorf("Revision = %q, want 4 bytes", rev)
	}
	if v, ok := field(std, "Version"); !ok || !strings.HasPrefix(v, "5 ") && !strings.HasPrefix(v, "6 ") {
		t.Errorf("Version = %q, want SPC-3 (5) or SPC-4 (6)", v)
	}

	// iscsi-inq parses -c with popt's integer type: decimal only
	// (0x80 would silently become 0).
	sup := run(t, d, "iscsi-inq", "-e", "1", "-c", "0", url)
	for _, p := range []string{"0x00", "0x80", "0x83"} {
		if !strings.Contains(sup, "Page:"+p+" ") {
			t.Errorf("supported VPD pages lack %s:\n%s", p, sup)
		}
	}
	serialOut := run(t, d, "iscsi-inq", "-e", "1", "-c", "128", url)
	sm := regexp.MustCompile(`Unit Serial Number:\[(.*)\]`).FindStringSubmatch(serialOut)
	if sm == nil || strings.TrimSpace(sm[1]) == "" {
		t.Fatalf("no unit serial number in VPD 0x80:\n%s", serialOut)
	}
	serial := strings.TrimSpace(sm[1])

	idOut := run(t, d, "iscsi-inq", "-e", "1", "-c", "131", url)
	if !strings.Contains(idOut, "Page Code:(0x83) DEVICE_IDENTIFICATION") {
		t.Fatalf("VPD 0x83 not returned:\n%s", idOut)
	}
	if !regexp.MustCompile(`Association:\(0\) LOGICAL_UNIT\nDesignator Type:\(3\) NAA`).MatchString(idOut) {
		t.Errorf("VPD 0x83 has no NAA designator for the logical unit:\n%s", idOut)
	}
	// iscsi-inq prints binary designators as C strings, which cuts them
	// at the first zero byte; read the exact bytes with the raw client.
	naa := readNAA(t, d)
	if len(naa) == 0 {
		t.Fatal("empty NAA designator")
	}
	if n := naa[0] >> 4; !(n == 3 && len(naa) == 8 || n == 5 && len(naa) == 8 || n == 6 && len(naa) == 16) {
		t.Errorf("NAA designator %x: want NAA 3 or 5 (8 bytes) or NAA 6 (16 bytes)", naa)
	}
	t.Logf("serial %q, NAA %x", serial, naa)

	stopClean(t, d)
	d.Restart()

	if got := readNAA(t, d); !bytes.Equal(got, naa) {
		t.Errorf("NAA designator changed across restart: %x, then %x", naa, got)
	}
	if again := run(t, d, "iscsi-inq", "-e", "1", "-c", "131", url); again != idOut {
		t.Errorf("VPD 0x83 changed across restart:\nbefore:\n%s\nafter:\n%s", idOut, again)
	}
	if again := run(t, d, "iscsi-inq", "-e", "1", "-c", "128", url); again != serialOut {
		t.Errorf("unit serial number changed across restart:\nbefore:\n%s\nafter:\n%s", serialOut, again)
	}
}

// readNAA logs in with the raw client and returns the LU's NAA designator.
func readNAA(t *testing.T, d *harness.Daemon) []byte {
	t.Helper()
	rc, err := iscsitest.Dial(d.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := rawLogin(rc, "iqn.2026-11.io.anvil.test:peers", harness.DemoIQN); err != nil {
		t.Fatalf("raw login: %v", err)
	}
	page, err := inquiryVPD(rc, 0x83)
	if err != nil {
		t.Fatal(err)
	}
	naa, err := naaDesignator(page)
	if err != nil {
		t.Fatalf("VPD 0x83 %s: %v", hex.EncodeToString(page), err)
	}
	return naa
}

// TestISCSIReadCapacity16: READ CAPACITY (16) reports 1 GiB of 512-byte
// blocks and a thin (LBPME=1) unit.
func TestISCSIReadCapacity16(t *testing.T) {
	harness.NeedTool(t, "iscsi-readcapacity16")
	d := harness.Start(t, harness.Options{})
	out := run(t, d, "iscsi-readcapacity16", lunURL(d))
	checks := map[string]string{
		"RETURNED LOGICAL BLOCK ADDRESS": strconv.Itoa(demoSize/blockSize - 1),
		"LOGICAL BLOCK LENGTH IN BYTES":  strconv.Itoa(blockSize),
		"Total size":                     strconv.Itoa(demoSize),
	}
	for k, v := range checks {
		if got, ok := field(out, k); !ok || got != v {
			t.Errorf("%s = %q (present %v), want %q\n%s", k, got, ok, v, out)
		}
	}
	if !regexp.MustCompile(`(?m)^LBPME:1 `).MatchString(out) {
		t.Errorf("demo volume is thin but READ CAPACITY (16) does not set LBPME:\n%s", out)
	}
}

// TestQemuImgRoundTrip copies 64 MiB of seeded random data into the LUN
// with qemu's iSCSI client, reads it back, checks that the rest of the
// volume is still zero, and that the data survives a clean restart; then
// overwrites it with a second image and checks that survives SIGKILL.
func TestQemuImgRoundTrip(t *testing.T) {
	harness.NeedTool(t, "qemu-img")
	d := harness.Start(t, harness.Options{})
	url := lunURL(d)
	dir := t.TempDir()

	first := writeRandomImage(t, filepath.Join(dir, "first.img"), 1)
	run(t, d, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", filepath.Join(dir, "first.img"), url)
	checkLUN(t, d, dir, first, "after write")

	stopClean(t, d)
	d.Restart()
	checkLUN(t, d, dir, first, "after SIGTERM and restart")

	// qemu-img convert's destination cache mode defaults to "unsafe",
	// which never flushes; with -t writeback it ends with SYNCHRONIZE
	// CACHE, so once it returns the second image is durable and must
	// survive a crash.
	second := writeRandomImage(t, filepath.Join(dir, "second.img"), 2)
	flushesBefore := flushCount(t, d)
	run(t, d, "qemu-img", "convert", "-t", "writeback", "-n", "-f", "raw", "-O", "raw", filepath.Join(dir, "second.img"), url)
	// The premise of the crash check: the daemon saw the flush.
	if n := flushCount(t, d); n <= flushesBefore {
		t.Fatalf("qemu-img convert -t writeback sent no SYNCHRONIZE CACHE (volume flush count %d, then %d)", flushesBefore, n)
	}
	d.Kill()
	d.Restart()
	checkLUN(t, d, dir, second, "after overwrite, SIGKILL and restart")
}

// flushCount returns the demo volume's flush counter from the CLI (REST
// API) statistics.
func flushCount(t *testing.T, d *harness.Daemon) int64 {
	t.Helper()
	out := run(t, d, harness.Binary(t), "volume", "show", "demo", "-o", "json", "--api", d.API, "--data-dir", d.DataDir)
	var v struct {
		Stats struct {
			Flush struct {
				Ops *int64 `json:"ops"`
			} `json:"flush"`
		} `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Stats.Flush.Ops == nil {
		t.Fatalf("volume show: no stats.flush.ops (%v) in:\n%s", err, out)
	}
	return *v.Stats.Flush.Ops
}

// imgSize is what TestQemuImgRoundTrip writes: 64 MiB.
const imgSize = 64 << 20

// writeRandomImage writes imgSize bytes from a PCG seeded with seed to
// path and returns them.
func writeRandomImage(t *testing.T, path string, seed uint64) []byte {
	t.Helper()
	b := make([]byte, imgSize)
	rng := rand.New(rand.NewPCG(2026, seed))
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLUN reads the first 64 MiB of the LUN back with qemu-img dd and
// compares them with want, then compares the whole 1 GiB LUN with want
// padded with zeroes (qemu-img compare), since nothing else was written.
func checkLUN(t *testing.T, d *harness.Daemon, dir string, want []byte, when string) {
	t.Helper()
	url := lunURL(d)
	out := filepath.Join(dir, "out.img")
	os.Remove(out)
	// qemu-img dd stops after count blocks: only the 64 MiB written.
	run(t, d, "qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=1M", fmt.Sprintf("count=%d", len(want)>>20), "if="+url, "of="+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: read back %d bytes, want %d", when, len(got), len(want))
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: data differs from what was written at byte %d (block %d)", when, i, i/blockSize)
	}
	full := filepath.Join(dir, "full.img")
	if err := os.WriteFile(full, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(full, demoSize); err != nil {
		t.Fatal(err)
	}
	cmp, err := harness.Run(context.Background(), toolLimit, "qemu-img", "compare", "-f", "raw", "-F", "raw", full, url)
	if err != nil {
		t.Fatalf("%s: qemu-img compare of the whole 1 GiB LUN with the zero-padded image: %v\n%s", when, err, cmp)
	}
	if !strings.Contains(cmp, "Images are identical") {
		t.Fatalf("%s: qemu-img compare: %s", when, cmp)
	}
	// qemu-img compare skips ranges that GET LBA STATUS reports as
	// deallocated (LBPRZ=1 reads them as zero), so also read every byte.
	whole := filepath.Join(dir, "whole.img")
	os.Remove(whole)
	run(t, d, "qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=1M", fmt.Sprintf("count=%d", demoSize>>20), "if="+url, "of="+whole)
	if err := checkZeroPadded(whole, want, demoSize); err != nil {
		t.Fatalf("%s: full read of the LUN: %v", when, err)
	}
	os.Remove(whole)
}

// checkZeroPadded checks that the file at path is want followed by zeroes
// up to size bytes.
func checkZeroPadded(path string, want []byte, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	zero := make([]byte, len(buf))
	var off int64
	for {
		n, err := io.ReadFull(f, buf)
		exp := zero[:n]
		if off < int64(len(want)) {
			exp = append(append([]byte{}, want[off:min(off+int64(n), int64(len(want)))]...), zero[:max(0, int(off)+n-len(want))]...)
		}
		if i := firstDiff(buf[:n], exp); i >= 0 {
			return fmt.Errorf("byte %d = %#x, want %#x", off+int64(i), buf[i], exp[i])
		}
		off += int64(n)
		if err != nil {
			break
		}
	}
	if off != size {
		return fmt.Errorf("read %d bytes, want %d", off, size)
	}
	return nil
}

func TestCheckZeroPadded(t *testing.T) {
	want := []byte("0123456789")
	path := filepath.Join(t.TempDir(), "f")
	const size = 3<<20 + 5 // several buffers and a short last read
	content := make([]byte, size)
	copy(content, want)
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkZeroPadded(path, want, size); err != nil {
		t.Fatalf("good file: %v", err)
	}
	for _, at := range []int{3, 2<<20 + 7, size - 1} {
		bad := append([]byte{}, content...)
		bad[at] ^= 0x40
		if err := os.WriteFile(path, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := checkZeroPadded(path, want, size); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("byte %d ", at)) {
			t.Errorf("corruption at %d: err = %v", at, err)
		}
	}
	if err := checkZeroPadded(path, want, size+1); err == nil {
		t.Error("short file accepted")
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i += 4096 {
		end := min(i+4096, len(a), len(b))
		if !bytes.Equal(a[i:end], b[i:end]) {
			for j := i; j < end; j++ {
				if a[j] != b[j] {
					return j
				}
			}
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// TestRestartServesSameVolume: SIGTERM ends the daemon with status 0, and
// a daemon restarted on the same data directory serves the same target,
// LUN and volume (not a second, freshly created demo volume).
func TestRestartServesSameVolume(t *testing.T) {
	harness.NeedTool(t, "iscsi-ls", "iscsi-readcapacity16", "iscsi-inq", "qemu-img")
	d := harness.Start(t, harness.Options{})
	url := lunURL(d)

	// Mark the volume with a pattern at a known offset.
	run(t, d, "qemu-img", "bench", "-f", "raw", "-w", "--pattern=90", "-c", "8", "-s", "4096", "-o", "1048576", url)
	serial := run(t, d, "iscsi-inq", "-e", "1", "-c", "128", url)

	stopClean(t, d)
	if d.Running() {
		t.Fatal("daemon still running after Stop")
	}
	d.Restart()

	ls := run(t, d, "iscsi-ls", "-s", "iscsi://"+d.ISCSI)
	if strings.Count(ls, "Target:") != 1 || !strings.Contains(ls, "Target:"+harness.DemoIQN+" ") {
		t.Errorf("after restart iscsi-ls shows:\n%s\nwant only %s", ls, harness.DemoIQN)
	}
	if again := run(t, d, "iscsi-inq", "-e", "1", "-c", "128", url); again != serial {
		t.Errorf("serial changed across restart (a new volume?):\n%s\nthen\n%s", serial, again)
	}
	cap16 := run(t, d, "iscsi-readcapacity16", url)
	if v, _ := field(cap16, "Total size"); v != strconv.Itoa(demoSize) {
		t.Errorf("capacity after restart = %q, want %d", v, demoSize)
	}
	out := filepath.Join(t.TempDir(), "mark.img")
	run(t, d, "qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=1M", "count=2", "if="+url, "of="+out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		want := byte(0)
		if i >= 1<<20 && i < 1<<20+8*4096 {
			want = 90
		}
		if b != want {
			t.Fatalf("after restart byte %d = %d, want %d", i, b, want)
		}
	}
}

// TestMalformedPDUs: garbage on the iSCSI port, before or after login,
// costs only that connection: an already logged-in session keeps working
// and new sessions are still accepted.
func TestMalformedPDUs(t *testing.T) {
	harness.NeedTool(t, "iscsi-inq")
	d := harness.Start(t, harness.Options{})
	url := lunURL(d)

	// A bystander session logged in before any garbage arrives.
	by, err := iscsitest.Dial(d.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	defer by.Close()
	if err := rawLogin(by, "iqn.2026-11.io.anvil.test:bystander", harness.DemoIQN); err != nil {
		t.Fatalf("bystander login: %v", err)
	}

	rng := rand.New(rand.NewPCG(7, 13))
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	send := func(t *testing.T, rc *iscsitest.Conn, b []byte) {
		t.Helper()
		// A write error is fine: the target may already have closed.
		rc.SendRaw(b)
	}

	cases := []struct {
		name  string
		login bool
		bytes func() []byte
	}{
		{"random bytes before login", false, func() []byte {
			b := garbage(4096)
			b[0] = 0x0b // not a login request (nor any defined opcode)
			return b
		}},
		{"invalid opcode before login", false, func() []byte {
			b := make([]byte, iscsitest.BHSLen)
			b[0] = iscsitest.OpReject // Reject: a target-only opcode
			return b
		}},
		{"short header then close", false, func() []byte { return garbage(20) }},
		{"garbage BHS after login", true, func() []byte {
			b := garbage(iscsitest.BHSLen)
			b[0] = 0x0b // undefined initiator opcode
			b[4] = 0    // no AHS
			return b
		}},
		{"data segment beyond MaxRecvDataSegmentLength after login", true, func() []byte {
			b := make([]byte, iscsitest.BHSLen)
			b[0] = iscsitest.OpSCSICmd
			b[1] = 0x80 | 0x20 | 0x01 // Final, Write, SIMPLE
			b[5], b[6], b[7] = 0xff, 0xff, 0xfc
			return append(b, garbage(1024)...)
		}},
		{"login request with an absurd data segment", false, func() []byte {
			b := make([]byte, iscsitest.BHSLen)
			b[0] = iscsitest.FlagImmediate | iscsitest.OpLoginReq
			b[1] = 0x80 | 1<<2 | 3
			b[5], b[6], b[7] = 0xff, 0xff, 0xf0
			return append(b, garbage(512)...)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := iscsitest.Dial(d.ISCSI)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if tc.login {
				if err := rawLogin(rc, "iqn.2026-11.io.anvil.test:garbage", harness.DemoIQN); err != nil {
					t.Fatalf("login: %v", err)
				}
			}
			send(t, rc, tc.bytes())
			if tc.name == "short header then close" {
				rc.Close()
			} else {
				how, err := rc.ExpectRejectOrClose(15 * time.Second)
				if err != nil {
					t.Errorf("after the malformed PDU: %v", err)
				} else {
					t.Logf("target %s the connection", how)
				}
			}
			if !d.Running() {
				t.Fatalf("daemon died on %s; log tail:\n%s", tc.name, tail(d.Log(), 40))
			}
			// A panic recovered at the connection boundary keeps the
			// daemon up but is still a bug: bad input must be rejected.
			for _, l := range strings.Split(d.Log(), "\n") {
				if strings.Contains(l, "level=ERROR") && strings.Contains(l, "panic") {
					t.Fatalf("daemon recovered from a panic on %s:\n%s", tc.name, l)
				}
			}
			// New sessions still work.
			out := run(t, d, "iscsi-inq", url)
			if v, _ := field(out, "Vendor"); strings.TrimSpace(v) == "" {
				t.Errorf("iscsi-inq after garbage: no vendor in\n%s", out)
			}
			// The bystander session is untouched.
			if _, err := inquiryVPD(by, 0x80); err != nil {
				t.Errorf("bystander session broken by another connection's garbage: %v", err)
			}
		})
	}
}
