package apitest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// cli runs the anvil binary as an API client of d. env replaces the
// ANVIL_* variables the test process may carry.
type cli struct {
	t   *testing.T
	bin string
	d   *daemon
}

func (c cli) run(env []string, stdin string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ANVIL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Dir = c.t.TempDir() // no ./anvil-data to stumble on
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		c.t.Fatalf("anvil %v timed out", args)
	}
	return o.String(), e.String(), err
}

// ok runs a subcommand with the usual connection flags and fails the test
// if it does not succeed.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	full := append(args, "--api", c.d.API, "--data-dir", c.d.DataDir)
	out, errOut, err := c.run(nil, "", full...)
	if err != nil {
		c.t.Fatalf("anvil %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// fails runs a subcommand that must fail and returns its stderr.
func (c cli) fails(args ...string) string {
	c.t.Helper()
	full := append(args, "--api", c.d.API, "--data-dir", c.d.DataDir)
	out, errOut, err := c.run(nil, "", full...)
	if err == nil {
		c.t.Fatalf("anvil %s succeeded, want failure:\n%s", strings.Join(args, " "), out)
	}
	return errOut
}

func contains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s: output lacks %q:\n%s", what, sub, s)
		}
	}
}

func TestCLI(t *testing.T) {
	importDir := t.TempDir()
	d := start(t, harness.Options{Args: []string{"--volume-import-dirs", importDir}})
	c := cli{t: t, bin: harness.Binary(t), d: d}

	type vol struct {
		Name       string   `json:"name"`
		SizeBytes  int64    `json:"size_bytes"`
		BlockSize  int      `json:"block_size"`
		WriteCache bool     `json:"write_cache"`
		ReadOnly   bool     `json:"read_only"`
		MappedBy   []string `json:"mapped_by"`
	}
	getVol := func(name string) vol {
		var v vol
		d.must("GET", "/api/v1/volumes/"+name, "", 200, &v)
		return v
	}

	// volume create / list / show
	out := c.ok("volume", "create", "v1", "--size", "64M", "--block-size", "4096")
	contains(t, "volume create", out, "NAME", "v1", "64.0 MiB", "4096")
	if v := getVol("v1"); v.SizeBytes != 64<<20 || v.BlockSize != 4096 {
		t.Errorf("created volume: %+v", v)
	}
	var vols []vol
	if err := json.Unmarshal([]byte(c.ok("volume", "list", "-o", "json")), &vols); err != nil {
		t.Fatalf("volume list -o json: %v", err)
	}
	if len(vols) != 2 || vols[0].Name != "demo" || vols[1].Name != "v1" {
		t.Errorf("volume list: %+v", vols)
	}
	out = c.ok("volume", "list")
	if !regexp.MustCompile(`(?m)^demo\s+1\.0 GiB\s+512\s+on\s+false\s+\d+\s+\d+\s+iqn\.2026-11\.io\.anvil:demo$`).MatchString(out) {
		t.Errorf("volume list table:\n%s", out)
	}
	contains(t, "volume show", c.ok("volume", "show", "v1"), "Name:", "v1", "67108864 bytes", "Reads:")

	// backend choice, fault injection, clear-error
	c.ok("volume", "create", "vm", "--size", "16M", "--backend", "mmap")
	var vm struct {
		Backend string `json:"backend"`
	}
	d.must("GET", "/api/v1/volumes/vm", "", 200, &vm)
	if vm.Backend != "mmap" {
		t.Errorf("volume create --backend mmap made a %q volume", vm.Backend)
	}
	contains(t, "bad backend", c.fails("volume", "create", "vx", "--size", "16M", "--backend", "tape"), "backend", "HTTP 400")
	contains(t, "block without device", c.fails("volume", "create", "vb", "--backend", "block"), "device", "HTTP 400")
	c.ok("volume", "faults", "vm", "--rate", "10", "--seed", "3")
	contains(t, "faults out of range", c.fails("volume", "faults", "vm", "--rate", "10001"), "rate", "HTTP 400")
	c.ok("volume", "faults", "vm", "--rate", "0")
	c.ok("volume", "clear-error", "vm")
	c.fails("volume", "clear-error", "nosuch")
	c.ok("volume", "delete", "vm")

	// resize / set
	contains(t, "volume resize", c.ok("volume", "resize", "v1", "--size", "128M"), "128.0 MiB")
	if v := getVol("v1"); v.SizeBytes != 128<<20 {
		t.Errorf("after resize: %+v", v)
	}
	errOut := c.fails("volume", "resize", "v1", "--size", "1M")
	contains(t, "shrink", errOut, "size_bytes", "HTTP 400")
	c.ok("volume", "set", "v1", "--write-cache", "off", "--read-only", "true")
	if v := getVol("v1"); v.WriteCache || !v.ReadOnly {
		t.Errorf("after set: %+v", v)
	}

	// import with a progress bar, and server-side
	img := filepath.Join(importDir, "disk.img")
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 3<<20/8)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := c.run(nil, "", "volume", "import", "imp", img, "--api", d.API, "--data-dir", d.DataDir)
	if err != nil {
		t.Fatalf("import: %v\n%s\n%s", err, stdout, stderr)
	}
	contains(t, "import progress", stderr, "importing disk.img", "100.0%", "3.0 MiB / 3.0 MiB")
	contains(t, "import", stdout, "imp", "3.0 MiB")
	contains(t, "server-side import", c.ok("volume", "import", "imp2", img, "--server-side", "--block-size", "4096"), "imp2", "3.0 MiB", "4096")
	got, err := os.ReadFile(filepath.Join(d.DataDir, "volumes", "imp.raw"))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("imported data differs (%v)", err)
	}

	// targets
	const iqn = "iqn.2026-11.io.anvil:cli"
	out = c.ok("target", "create", iqn, "--alias", "from the CLI", "--allow", "iqn.2026-11.io.anvil.test:a")
	contains(t, "target create", out, iqn, "from the CLI", "iqn.2026-11.io.anvil.test:a")
	contains(t, "target map", c.ok("target", "map", iqn, "0", "v1"), "0=v1")
	contains(t, "target map 2", c.ok("target", "map", iqn, "5", "imp"), "0=v1 5=imp")
	errOut = c.fails("target", "map", iqn, "5", "imp2")
	contains(t, "map taken LUN", errOut, "HTTP 409")
	errOut = c.fails("volume", "delete", "v1")
	contains(t, "delete mapped", errOut, "mapped", "HTTP 409")
	if v := getVol("v1"); len(v.MappedBy) != 1 {
		t.Errorf("mapped_by: %+v", v)
	}
	contains(t, "target unmap", c.ok("target", "unmap", iqn, "5"), "unmapped LUN 5")
	contains(t, "target acl", c.ok("target", "acl", iqn, "iqn.2026-11.io.anvil.test:b", "iqn.2026-11.io.anvil.test:c"), "iqn.2026-11.io.anvil.test:b,iqn.2026-11.io.anvil.test:c")
	contains(t, "target acl --open", c.ok("target", "acl", iqn, "--open"), "open")
	errOut = c.fails("target", "acl", iqn, "bogus")
	contains(t, "target acl bogus", errOut, "initiators[0]", "HTTP 400")

	// CHAP: the secret comes from the environment or stdin, never argv.
	stdout, stderr, err = c.run([]string{"ANVIL_CHAP_SECRET=twelve-chars-secret"}, "", "target", "chap", iqn, "--user", "alice", "--api", d.API, "--data-dir", d.DataDir)
	if err != nil {
		t.Fatalf("chap: %v %s %s", err, stdout, stderr)
	}
	contains(t, "chap", stdout, "user alice")
	stdout, stderr, err = c.run(nil, "secret-number-one\nsecret-number-two\n", "target", "chap", iqn, "--user", "bob", "--mutual-user", "tgt", "--secret-stdin", "--api", d.API, "--data-dir", d.DataDir)
	if err != nil {
		t.Fatalf("chap stdin: %v %s %s", err, stdout, stderr)
	}
	contains(t, "mutual chap", stdout, "user bob, mutual tgt")
	var tjson []map[string]any
	raw := c.ok("target", "list", "-o", "json")
	if strings.Contains(raw, "secret-number") {
		t.Errorf("target list leaks a CHAP secret:\n%s", raw)
	}
	if err := json.Unmarshal([]byte(raw), &tjson); err != nil || len(tjson) != 2 {
		t.Fatalf("target list -o json: %v %s", err, raw)
	}
	contains(t, "chap disable", c.ok("target", "chap", iqn, "--disable"), "CHAP disabled")
	contains(t, "target list", c.ok("target", "list"), "IQN", harness.DemoIQN, iqn, "0=v1")

	// sessions
	ini, err := dialInitiator(d.ISCSI, "iqn.2026-11.io.anvil.test:cli-session", harness.DemoIQN)
	if err != nil {
		t.Fatal(err)
	}
	defer ini.Close()
	out = c.ok("session", "list")
	contains(t, "session list", out, "TSIH", "iqn.2026-11.io.anvil.test:cli-session", harness.DemoIQN)
	var sessions []struct {
		TSIH int `json:"tsih"`
	}
	if err := json.Unmarshal([]byte(c.ok("session", "list", "-o", "json")), &sessions); err != nil || len(sessions) != 1 {
		t.Fatalf("session list -o json: %v %+v", err, sessions)
	}
	contains(t, "session logout", c.ok("session", "logout", strconv.Itoa(sessions[0].TSIH)), "logout requested")
	if h, _, err := ini.recv(); err != nil || h[0]&0x3f != 0x32 {
		t.Errorf("no async logout request after session logout: %v", err)
	}
	contains(t, "logout unknown", c.fails("session", "logout", "999"), "HTTP 404")

	// delete
	contains(t, "force delete", c.ok("volume", "delete", "v1", "--force"), "deleted volume v1")
	contains(t, "target delete", c.ok("target", "delete", iqn), "deleted target")
	contains(t, "delete missing", c.fails("volume", "delete", "v1"), "HTTP 404")

	// Connection settings from the environment; bad token fails with 401.
	stdout, stderr, err = c.run([]string{"ANVIL_API=http://" + d.API, "ANVIL_API_TOKEN=" + d.token}, "", "volume", "list", "-o", "json")
	if err != nil || !strings.Contains(stdout, `"imp2"`) {
		t.Errorf("env connection: %v %s %s", err, stdout, stderr)
	}
	_, stderr, err = c.run([]string{"ANVIL_API_LISTEN=0.0.0.0:" + strings.Split(d.API, ":")[1], "ANVIL_API_TOKEN=wrong"}, "", "volume", "list")
	if err == nil || !strings.Contains(stderr, "HTTP 401") {
		t.Errorf("wrong token: %v %s", err, stderr)
	}
	_, stderr, err = c.run(nil, "", "volume", "list", "--api", d.API)
	if err == nil || !strings.Contains(stderr, "no API token") {
		t.Errorf("no token anywhere: %v %s", err, stderr)
	}
}

// TestPrintConfig checks --print-config names each value's source.
func TestPrintConfig(t *testing.T) {
	bin := harness.Binary(t)
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "anvil.yaml")
	if err := os.WriteFile(cfgFile, []byte("log:\n  level: debug\niscsi:\n  max_burst_length: 524288\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--print-config", "--config", cfgFile, "--iscsi-listen", "127.0.0.1:9999")
	cmd.Env = append(os.Environ(), "ANVIL_API_LISTEN=127.0.0.1:7777", "ANVIL_API_TOKEN=hidden-token-value")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s := string(out)
	for _, re := range []string{
		`(?m)^iscsi\.listen\s+127\.0\.0\.1:9999\s+flag\s`,
		`(?m)^api\.listen\s+127\.0\.0\.1:7777\s+env\s`,
		`(?m)^log\.level\s+debug\s+file\s`,
		`(?m)^iscsi\.max_burst_length\s+524288\s+file\s`,
		`(?m)^log\.format\s+text\s+default\s`,
		`(?m)^api\.token\s+\(set\)\s+env\s`,
		`# configuration file: ` + regexp.QuoteMeta(cfgFile),
	} {
		if !regexp.MustCompile(re).MatchString(s) {
			t.Errorf("print-config lacks %s:\n%s", re, s)
		}
	}
	if strings.Contains(s, "hidden-token-value") {
		t.Errorf("print-config shows the API token")
	}
}
