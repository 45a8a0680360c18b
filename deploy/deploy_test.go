// Package deploy holds the container image and systemd unit definitions;
// its tests build the image's final stage with podman from a pre-built
// binary, pulling nothing, and check the systemd unit.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/anvilproject/anvil/test/harness"
)

// finalStage returns the instructions from the "final stage" marker to the
// end, with comments and blank lines dropped.
func finalStage(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "# ---- final stage")
	if !ok {
		t.Fatalf("%s has no final stage marker", file)
	}
	var out []string
	for _, l := range strings.Split(after, "\n")[1:] {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

// TestFinalStagesMatch keeps Dockerfile.prebuilt the same image as
// Dockerfile's final stage except for where the binary comes from.
func TestFinalStagesMatch(t *testing.T) {
	a := finalStage(t, "docker/Dockerfile")
	b := finalStage(t, "docker/Dockerfile.prebuilt")
	if len(a) != len(b) {
		t.Fatalf("final stages differ in length:\n%s\n---\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		if a[i] == "COPY --from=build /out/anvil /usr/local/bin/anvil" && b[i] == "COPY deploy/docker/anvil /usr/local/bin/anvil" {
			continue
		}
		t.Errorf("line %d differs:\n  Dockerfile:          %s\n  Dockerfile.prebuilt: %s", i, a[i], b[i])
	}
	if a[0] != "FROM scratch AS final" {
		t.Errorf("final stage is not FROM scratch: %s", a[0])
	}
}

func run(t *testing.T, dir string, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestPrebuiltImage builds the final stage with podman from a static
// binary and inspects the image: non-root user, data volume, ports,
// health check, entry point, and a binary that runs.
func TestPrebuiltImage(t *testing.T) {
	harness.NeedTool(t, "podman")
	root := harness.RepoRoot()
	ctxDir := t.TempDir()
	// The build context holds only what the Dockerfile copies.
	if err := os.CopyFS(filepath.Join(ctxDir, "deploy", "docker", "rootfs"), os.DirFS(filepath.Join(root, "deploy", "docker", "rootfs"))); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(ctxDir, "deploy", "docker", "anvil")
	run(t, root, 5*time.Minute, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-o", bin, "./cmd/anvil")
	// Static: no program interpreter, so it runs in a scratch image.
	if out, err := exec.Command("file", bin).CombinedOutput(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Errorf("binary is not static: %s", out)
	}
	df, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile.prebuilt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile.prebuilt"), df, 0o644); err != nil {
		t.Fatal(err)
	}

	tag := fmt.Sprintf("localhost/anvil-ci-test:%d", time.Now().UnixNano())
	run(t, ctxDir, 5*time.Minute, nil, "podman", "build", "--pull=never", "--format", "docker", "-f", "Dockerfile.prebuilt", "-t", tag, ".")
	t.Cleanup(func() { exec.Command("podman", "image", "rm", "-f", tag).Run() })

	var inspect []struct {
		Config struct {
			User         string
			ExposedPorts map[string]any
			Volumes      map[string]any
			Entrypoint   []string
			Cmd          []string
			Env          []string
			WorkingDir   string
		}
		// podman reports a docker-format image's health check here.
		Healthcheck *struct{ Test []string }
		Size        int64
	}
	out := run(t, ctxDir, time.Minute, nil, "podman", "image", "inspect", "--format", "json", tag)
	if err := json.Unmarshal([]byte(out), &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	c := inspect[0].Config
	if c.User != "10001:10001" {
		t.Errorf("user %q, want the non-root 10001:10001", c.User)
	}
	for _, p := range []string{"3260/tcp", "4420/tcp", "8009/tcp", "8080/tcp"} {
		if _, ok := c.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed: %v", p, c.ExposedPorts)
		}
	}
	if _, ok := c.Volumes["/var/lib/anvil"]; !ok {
		t.Errorf("no /var/lib/anvil volume: %v", c.Volumes)
	}
	if hc := inspect[0].Healthcheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "/usr/local/bin/anvil health") {
		t.Errorf("health check: %+v", hc)
	}
	if strings.Join(c.Entrypoint, " ") != "/usr/local/bin/anvil" || strings.Join(c.Cmd, " ") != "serve" {
		t.Errorf("entrypoint %v cmd %v", c.Entrypoint, c.Cmd)
	}
	if !strings.Contains(strings.Join(c.Env, " "), "ANVIL_DATA_DIR=/var/lib/anvil") {
		t.Errorf("env: %v", c.Env)
	}

	// The image's file tree: exactly the binary, passwd/group and the
	// data directory owned by the anvil user. podman cannot run
	// containers here, so the tree is read from an exported archive.
	mnt := t.TempDir()
	cid := strings.TrimSpace(run(t, ctxDir, time.Minute, nil, "podman", "create", tag))
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", cid).Run() })
	tarFile := filepath.Join(mnt, "fs.tar")
	run(t, ctxDir, time.Minute, nil, "podman", "export", "-o", tarFile, cid)
	listing := run(t, mnt, time.Minute, nil, "tar", "--numeric-owner", "-tvf", tarFile)
	for _, want := range []string{"usr/local/bin/anvil", "etc/passwd", "etc/group", "var/lib/anvil/"} {
		if !strings.Contains(listing, want) {
			t.Errorf("image lacks %s:\n%s", want, listing)
		}
	}
	for _, l := range strings.Split(listing, "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), "var/lib/anvil/") && !strings.Contains(l, "10001/10001") {
			t.Errorf("data directory not owned by the anvil user: %s", l)
		}
	}
	// The exported binary is the one we built and it runs.
	run(t, mnt, time.Minute, nil, "tar", "-xf", tarFile, "usr/local/bin/anvil", "etc/passwd")
	got := run(t, mnt, time.Minute, nil, filepath.Join(mnt, "usr/local/bin/anvil"), "serve", "--print-config")
	if !strings.Contains(got, "api.listen") {
		t.Errorf("binary from the image does not run:\n%s", got)
	}
	pw, _ := os.ReadFile(filepath.Join(mnt, "etc/passwd"))
	if !strings.Contains(string(pw), "anvil:x:10001:10001:") {
		t.Errorf("passwd: %s", pw)
	}
}

// TestSystemdUnit checks the unit with systemd-analyze against a real
// binary path.
func TestSystemdUnit(t *testing.T) {
	harness.NeedTool(t, "systemd-analyze")
	unit, err := os.ReadFile("anvil.service")
	if err != nil {
		t.Fatal(err)
	}
	bin := harness.Binary(t)
	dir := t.TempDir()
	u := strings.ReplaceAll(string(unit), "/usr/local/bin/anvil", bin)
	path := filepath.Join(dir, "anvil.service")
	if err := os.WriteFile(path, []byte(u), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	// Without a running systemd (containers), verify can only complain
	// about the manager; any line naming our unit is a real problem.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "anvil.service") {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
	if err != nil && strings.Contains(string(out), "anvil.service") {
		t.Errorf("systemd-analyze verify failed: %v\n%s", err, out)
	}
	for _, want := range []string{"ExecStart=" + bin + " serve --data-dir /var/lib/anvil", "User=anvil", "KillSignal=SIGTERM", "StateDirectory=anvil"} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %s", want)
		}
	}
}

// TestCompose checks compose.yaml parses and points at the Dockerfile, the
// three ports and the data volume.
func TestCompose(t *testing.T) {
	b, err := os.ReadFile("docker/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build struct {
				Context    string `yaml:"context"`
				Dockerfile string `yaml:"dockerfile"`
			} `yaml:"build"`
			Ports   []string `yaml:"ports"`
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	s, ok := c.Services["anvil"]
	if !ok {
		t.Fatalf("no anvil service: %+v", c.Services)
	}
	if _, err := os.Stat(filepath.Join("docker", s.Build.Context, s.Build.Dockerfile)); err != nil {
		t.Errorf("build context/dockerfile %s/%s: %v", s.Build.Context, s.Build.Dockerfile, err)
	}
	ports := strings.Join(s.Ports, " ")
	for _, p := range []string{"3260:3260", "4420:4420", "8009:8009", "8080:8080"} {
		if !strings.Contains(ports, p) {
			t.Errorf("port %s not published: %v", p, s.Ports)
		}
	}
	if len(s.Volumes) != 1 || !strings.HasSuffix(s.Volumes[0], ":/var/lib/anvil") {
		t.Errorf("volumes: %v", s.Volumes)
	}
	if _, ok := c.Volumes["anvil-data"]; !ok {
		t.Errorf("named volume anvil-data not declared")
	}
}
