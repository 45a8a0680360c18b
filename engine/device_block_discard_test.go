package engine

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
	"golang.org/x/sys/unix"

	"github.com/anvilproject/anvil/engine/internal/fileio"
)

// TestBlockDeviceDeallocation runs a loop device as it comes (discard and
// write-zeroes offload, as a thin device) and with sysfs saying it has no
// discard (as a disk that cannot deallocate): Discard must read back zeroes
// either way and release the blocks behind the loop device when it can,
// and only the first may make its volume offer unmapping, which the SCSI
// layer turns into LBPME, the LBP VPD bits and UNMAP.
func TestBlockDeviceDeallocation(t *testing.T) {
	harness.NeedTool(t, "losetup")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("attaching a loop device needs root")
		}
		t.Skip("SKIPPED LOUDLY: attaching a loop device needs root")
	}
	const size = 16 << 20
	for _, discard := range []bool{true, false} {
		name := map[bool]string{true: "discard", false: "no discard"}[discard]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "backing.img")
			if err := os.WriteFile(img, bytes.Repeat([]byte{0x5a}, size), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
			if err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("losetup: %v: %s", err, out)
				}
				t.Skipf("SKIPPED LOUDLY: losetup cannot attach a loop device here: %v: %s", err, out)
			}
			dev := strings.TrimSpace(string(out))
			t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
			if !discard {
				// Lowering the loop device's own discard_max_bytes
				// cannot be undone on this kernel, so the device's
				// sysfs queue is played by a copy that says no.
				fake := t.TempDir()
				var st unix.Stat_t
				if err := unix.Stat(dev, &st); err != nil {
					t.Fatal(err)
				}
				q := filepath.Join(fake, fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), "queue")
				if err := os.MkdirAll(q, 0o755); err != nil {
					t.Fatal(err)
				}
				for name, v := range map[string]string{"discard_max_bytes": "0\n", "write_zeroes_max_bytes": "4294966784\n"} {
					if err := os.WriteFile(filepath.Join(q, name), []byte(v), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				old := sysDevBlock
				sysDevBlock = fake
				t.Cleanup(func() { sysDevBlock = old })
			}

			bd, err := OpenBlockDevice(dev)
			if err != nil {
				t.Fatal(err)
			}
			if got := bd.Deallocates(); got != discard {
				t.Fatalf("Deallocates() = %v on a loop device with %s", got, name)
			}
			const off, n = 4 << 20, 1 << 20
			if err := bd.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			if err := bd.Sync(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, n+8192)
			if _, err := bd.ReadAt(got, off-4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:4096], bytes.Repeat([]byte{0x5a}, 4096)) || !bytes.Equal(got[4096+n:], bytes.Repeat([]byte{0x5a}, 4096)) {
				t.Fatal("Discard touched data outside its range")
			}
			if !isZeroes(got[4096 : 4096+n]) {
				t.Fatal("discarded range does not read as zeroes")
			}
			if discard {
				f, err := os.Open(img)
				if err != nil {
					t.Fatal(err)
				}
				mapped, _, err := fileio.Mapped(int(f.Fd()), off, n)
				f.Close()
				if err != nil || mapped {
					t.Fatalf("the image behind the loop device still holds the discarded range (mapped %v, err %v)", mapped, err)
				}
			}
			if err := bd.Close(); err != nil {
				t.Fatal(err)
			}

			v, err := Open(dev, Options{Backend: BackendBlock, UndoPath: filepath.Join(dir, "vol.undo"), UndoSize: 4 << 20, Logger: quietLog})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if got := v.Limits().MaxUnmap > 0; got != discard {
				t.Fatalf("volume offers unmapping: %v, on a loop device with %s", got, name)
			}
			if discard {
				// Through the volume, an unmap reaches the device.
				ctx := context.Background()
				if err := v.WriteAt(ctx, bytes.Repeat([]byte{1}, n), off, false); err != nil {
					t.Fatal(err)
				}
				if err := v.Unmap(ctx, off, n); err != nil {
					t.Fatal(err)
				}
				if err := v.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				if err := v.ReadAt(ctx, got[:n], off); err != nil || !isZeroes(got[:n]) {
					t.Fatalf("unmapped range reads back non-zero (err %v)", err)
				}
			}
		})
	}
}

func isZeroes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
