package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func load(t *testing.T, args ...string) (*Config, *pflag.FlagSet, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, _, err := Load(fs)
	return c, fs, err
}

func TestDefaults(t *testing.T) {
	t.Chdir(t.TempDir()) // no anvil.yaml here
	c, _, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "./anvil-data" || c.ISCSI.Listen != "0.0.0.0:3260" || !c.Demo || c.ISCSI.NopInterval != 30*time.Second {
		t.Fatalf("defaults = %+v", c)
	}
}

func TestPrecedenceFlagOverEnvOverFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	yaml := "data_dir: /from/file\niscsi:\n  listen: 127.0.0.1:1111\napi:\n  listen: 127.0.0.1:2222\nlog:\n  level: debug\n"
	if err := os.WriteFile(filepath.Join(dir, "anvil.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ANVIL_ISCSI_LISTEN", "127.0.0.1:3333")
	t.Setenv("ANVIL_API_LISTEN", "127.0.0.1:4444")
	c, fs, err := load(t, "--api-listen", "127.0.0.1:5555")
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/from/file" {
		t.Errorf("data_dir = %q, want the file's value", c.DataDir)
	}
	if c.ISCSI.Listen != "127.0.0.1:3333" {
		t.Errorf("iscsi.listen = %q, want env over file", c.ISCSI.Listen)
	}
	if c.API.Listen != "127.0.0.1:5555" {
		t.Errorf("api.listen = %q, want flag over env", c.API.Listen)
	}
	if c.Log.Level != "debug" {
		t.Errorf("log.level = %q, want the file's value", c.Log.Level)
	}
	_, v, _ := Load(fs)
	for key, want := range map[string]string{"data_dir": "file", "iscsi.listen": "env", "api.listen": "flag", "log.format": "default"} {
		if got := Source(v, fs, key); got != want {
			t.Errorf("Source(%s) = %s, want %s", key, got, want)
		}
	}
}

func TestNoDemoFlag(t *testing.T) {
	t.Chdir(t.TempDir())
	c, _, err := load(t, "--no-demo")
	if err != nil {
		t.Fatal(err)
	}
	if c.Demo {
		t.Fatal("--no-demo left the demo on")
	}
	t.Setenv("ANVIL_DEMO", "false")
	c, _, err = load(t)
	if err != nil || c.Demo {
		t.Fatalf("ANVIL_DEMO=false: demo=%v err=%v", c != nil && c.Demo, err)
	}
}

func TestValidationNamesTheKey(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"--log-level", "loud"},
		{"--iscsi-first-burst-length", "99999999"},
		{"--iscsi-max-recv-data-segment-length", "100"},
	} {
		_, _, err := load(t, args...)
		if err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if _, err := os.Stat("anvil-data"); err == nil {
		t.Error("loading config created the data dir")
	}
	t.Setenv("ANVIL_CONFIG_BOGUS", "x") // unknown env is ignored, not fatal
	if _, _, err := load(t); err != nil {
		t.Errorf("unrelated ANVIL_ variable broke loading: %v", err)
	}
}

func TestExplicitMissingConfigFileFails(t *testing.T) {
	t.Chdir(t.TempDir())
	if _, _, err := load(t, "--config", "/nonexistent/anvil.yaml"); err == nil {
		t.Fatal("missing --config file accepted")
	}
}

func TestISCSIResourceLimits(t *testing.T) {
	t.Chdir(t.TempDir())
	c, _, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if i := c.ISCSI; i.MaxConnections != 1024 || i.MaxConnectionsPerAddress != 64 || i.DataOutBudget != 0 || i.DataOutTimeout != 30*time.Second {
		t.Fatalf("iSCSI resource defaults = %+v", i)
	}
	t.Setenv("ANVIL_ISCSI_DATA_OUT_BUDGET", "67108864")
	c, _, err = load(t, "--iscsi-max-connections", "10", "--iscsi-max-connections-per-address", "3", "--iscsi-data-out-timeout", "2s")
	if err != nil {
		t.Fatal(err)
	}
	if i := c.ISCSI; i.MaxConnections != 10 || i.MaxConnectionsPerAddress != 3 || i.DataOutBudget != 64<<20 || i.DataOutTimeout != 2*time.Second {
		t.Fatalf("iSCSI resource settings = %+v", i)
	}
	for _, args := range [][]string{
		{"--iscsi-max-connections", "0"},
		{"--iscsi-max-connections", "10", "--iscsi-max-connections-per-address", "11"},
		{"--iscsi-data-out-budget", "1048576"},
		{"--iscsi-data-out-timeout", "0s"},
	} {
		if _, _, err := load(t, args...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestNVMeSettings(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	c, _, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	want := NVMe{Enabled: true, Listen: "0.0.0.0:4420", DiscoveryListen: "0.0.0.0:8009", InCapsuleData: 8192, MaxIOQueues: 8, MaxQueueEntries: 128, MaxConnections: 1024, MaxConnectionsPerAddress: 128}
	if c.NVMe != want {
		t.Fatalf("NVMe defaults = %+v, want %+v", c.NVMe, want)
	}
	yaml := "nvme:\n  listen: 127.0.0.1:1420\n  discovery_listen: \"\"\n  max_io_queues: 4\n"
	if err := os.WriteFile(filepath.Join(dir, "anvil.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ANVIL_NVME_IN_CAPSULE_DATA", "4096")
	c, _, err = load(t, "--nvme-max-queue-entries", "64")
	if err != nil {
		t.Fatal(err)
	}
	n := c.NVMe
	if n.Listen != "127.0.0.1:1420" || n.DiscoveryListen != "" || n.MaxIOQueues != 4 || n.InCapsuleData != 4096 || n.MaxQueueEntries != 64 || !n.Enabled {
		t.Fatalf("NVMe from file, env and flag = %+v", n)
	}
	c, _, err = load(t, "--nvme=false")
	if err != nil || c.NVMe.Enabled {
		t.Fatalf("--nvme=false: enabled=%v err=%v", c != nil && c.NVMe.Enabled, err)
	}
	for args, key := range map[string]string{
		"--nvme-in-capsule-data=100":              "nvme.in_capsule_data",
		"--nvme-max-io-queues=0":                  "nvme.max_io_queues",
		"--nvme-max-queue-entries=1":              "nvme.max_queue_entries",
		"--nvme-max-queue-entries=70000":          "nvme.max_queue_entries",
		"--nvme-max-connections=0":                "nvme.max_connections",
		"--nvme-max-connections-per-address=2000": "nvme.max_connections_per_address",
		"--nvme-listen=":                          "nvme.listen",
		"--nvme-discovery-listen=127.0.0.1:1420":  "nvme.discovery_listen",
	} {
		_, _, err := load(t, args)
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: err = %v, want one naming %s", args, err, key)
		}
	}
}
