package config

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestListSettings checks that the allow-lists can be set as a
// comma-separated flag, a comma-separated environment variable and a YAML
// list, and that they default to empty.
func TestListSettings(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	c, _, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Volume.ImportDirs) != 0 || len(c.Volume.BlockDevices) != 0 {
		t.Fatalf("allow-lists not empty by default: %+v", c.Volume)
	}
	c, _, err = load(t, "--volume-import-dirs", "/a,/b", "--volume-block-devices", "/dev/loop*")
	if err != nil || !slices.Equal(c.Volume.ImportDirs, []string{"/a", "/b"}) || !slices.Equal(c.Volume.BlockDevices, []string{"/dev/loop*"}) {
		t.Fatalf("flags: %+v %v", c, err)
	}
	t.Setenv("ANVIL_VOLUME_IMPORT_DIRS", "/x,/y")
	c, _, err = load(t)
	if err != nil || !slices.Equal(c.Volume.ImportDirs, []string{"/x", "/y"}) {
		t.Fatalf("env: %+v %v", c, err)
	}
	os.Unsetenv("ANVIL_VOLUME_IMPORT_DIRS")
	yaml := "volume:\n  block_devices: [\"/dev/sdb\", \"/dev/disk/by-id/wwn-*\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "anvil.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _, err = load(t)
	if err != nil || !slices.Equal(c.Volume.BlockDevices, []string{"/dev/sdb", "/dev/disk/by-id/wwn-*"}) {
		t.Fatalf("file: %+v %v", c, err)
	}
	if _, _, err := load(t, "--volume-import-dirs", "relative/dir"); err == nil {
		t.Errorf("relative import dir accepted")
	}
}

// TestAPITLSSetting checks api.tls's values: auto by default, YAML booleans
// accepted, anything else refused.
func TestAPITLSSetting(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	c, _, err := load(t)
	if err != nil || c.API.TLS != "auto" {
		t.Fatalf("default api.tls = %q, %v", c.API.TLS, err)
	}
	for arg, want := range map[string]string{"on": "on", "off": "off", "false": "off", "true": "on"} {
		c, _, err := load(t, "--api-tls", arg)
		if err != nil || c.API.TLS != want {
			t.Errorf("--api-tls %s: %q %v", arg, c.API.TLS, err)
		}
	}
	if _, _, err := load(t, "--api-tls", "maybe"); err == nil {
		t.Errorf("--api-tls maybe accepted")
	}
	if err := os.WriteFile(filepath.Join(dir, "anvil.yaml"), []byte("api:\n  tls: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, _, err := load(t); err != nil || c.API.TLS != "off" {
		t.Errorf("yaml tls: false: %+v %v", c, err)
	}
}
