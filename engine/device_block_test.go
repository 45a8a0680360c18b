package engine

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// TestBlockDeviceBackend runs a volume on a loop device: size from
// BLKGETSIZE64, writes, discard, and the raw image behind the loop device
// matching the model afterwards.
func TestBlockDeviceBackend(t *testing.T) {
	harness.NeedTool(t, "losetup")
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: attaching a loop device needs root")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "backing.img")
	const size = 32 << 20
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("SKIPPED LOUDLY: losetup cannot attach a loop device here: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })

	ctx := context.Background()
	v, err := Open(dev, Options{Backend: BackendBlock, UndoPath: filepath.Join(dir, "vol.undo"), UndoSize: 4 << 20, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	if v.Size() != size {
		t.Fatalf("size %d, want %d", v.Size(), size)
	}
	model := make([]byte, size)
	for i := range 64 {
		p := pattern(64<<10, i)
		off := (i * 317 * 4096) % (size - len(p))
		if err := v.WriteAt(ctx, p, int64(off), false); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Unmap(ctx, 1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(model[1<<20 : 2<<20])
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, model) {
		t.Fatal("image behind the loop device differs from the model")
	}
	if _, err := Open(dev, Options{Backend: BackendBlock, Logger: quietLog}); err == nil {
		t.Fatal("block backend opened without an undo path")
	}
}
