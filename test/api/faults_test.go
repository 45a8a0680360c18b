package apitest

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// TestFaultInjectionThroughISCSI fails every backing I/O of the demo volume
// and checks what real initiators see: a read of uncached data answers
// CHECK CONDITION / MEDIUM ERROR (never data), qemu-img's flush fails, the
// failed commit freezes the volume read-only (reported by the API), and
// after the faults stop an operator's clear-error returns it to service
// without dropping the writes it had acknowledged.
func TestFaultInjectionThroughISCSI(t *testing.T) {
	harness.NeedTool(t, "qemu-img")
	d := start(t, harness.Options{})
	url := "iscsi://" + d.ISCSI + "/" + harness.DemoIQN + "/0"
	dir := t.TempDir()
	img := func(name string, seed uint64) []byte {
		b := make([]byte, 4<<20)
		r := rand.New(rand.NewPCG(seed, seed))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return b
	}
	put := func(name string) (string, error) {
		// -t writeback: qemu-img convert defaults to cache=unsafe, which never
		// sends SYNCHRONIZE CACHE.
		return run(t, "qemu-img", "convert", "-n", "-t", "writeback", "-f", "raw", "-O", "raw", filepath.Join(dir, name), url)
	}
	get := func() ([]byte, error) {
		out := filepath.Join(dir, "out.img")
		os.Remove(out)
		if _, err := run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, out); err != nil {
			return nil, err
		}
		b, err := os.ReadFile(out)
		return b, err
	}

	first := img("first.img", 1)
	if out, err := put("first.img"); err != nil {
		t.Fatalf("write before faults: %v\n%s", err, out)
	}

	d.must("PUT", "/api/v1/volumes/demo/faults", `{"rate":10000,"seed":7}`, 200, nil)
	d.wantError("PUT", "/api/v1/volumes/demo/faults", `{"rate":10001}`, 400, "rate")

	m, err := dialInitiator(d.ISCSI, "iqn.2026-11.io.anvil:faults-test", harness.DemoIQN)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := 0; i < 5; i++ { // clear the power-on unit attention
		if r, err := m.testUnitReady(); err == nil && r.status == 0 {
			break
		}
	}
	// READ(10) of 8 blocks at 256 MiB: never read, so not in the cache.
	res, err := m.command([]byte{0x28, 0, 0x00, 0x08, 0x00, 0x00, 0, 0, 8, 0}, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if res.status != 0x02 || res.key != 0x03 || res.asc != 0x11 {
		t.Fatalf("read under injected EIO: status %#x sense %x/%x/%x, want CHECK CONDITION MEDIUM ERROR 11/00", res.status, res.key, res.asc, res.ascq)
	}
	if len(res.data) != 0 {
		t.Fatalf("a failed read returned %d bytes of data", len(res.data))
	}

	// The writes land in the cache; the flush at the end must fail. qemu-img
	// reports a failed flush on close but still exits 0, so read its words.
	second := img("second.img", 2)
	out, err := put("second.img")
	if err == nil && !strings.Contains(out, "SYNCHRONIZECACHE10 failed") {
		t.Fatalf("qemu-img wrote and flushed through a backing store that fails every I/O:\n%s", out)
	}
	if err == nil && !strings.Contains(out, "(3)") {
		t.Fatalf("the failed SYNCHRONIZE CACHE did not carry MEDIUM ERROR sense:\n%s", out)
	}
	var vol struct {
		ReadOnly bool   `json:"read_only"`
		Error    string `json:"error"`
	}
	d.must("GET", "/api/v1/volumes/demo", "", 200, &vol)
	if vol.Error == "" {
		t.Fatal("the API does not report the failed commit")
	}
	// A read now may fail, or be served from the cache (the acknowledged
	// second image; unmapped ranges are skipped through GET LBA STATUS),
	// but it must never return anything else.
	if got, err := get(); err == nil && !bytes.Equal(got[:len(second)], second) {
		t.Fatal("qemu-img read wrong data from a volume whose backing store fails")
	}

	// Still failing: clear-error cannot roll back yet.
	d.wantError("POST", "/api/v1/volumes/demo/clear-error", "", 503, "")
	d.must("PUT", "/api/v1/volumes/demo/faults", `{"rate":0}`, 200, nil)
	if out, err := put("first.img"); err == nil {
		t.Fatalf("a volume frozen by a failed commit accepted writes before clear-error:\n%s", out)
	}
	vol.Error = "" // "error" is omitted when empty: don't keep the old value
	d.must("POST", "/api/v1/volumes/demo/clear-error", "", 200, &vol)
	if vol.Error != "" {
		t.Fatalf("error still reported after clear-error: %s", vol.Error)
	}
	// clear-error rolls the failed epoch back on disk but keeps its
	// acknowledged writes in the cache and commits them again, so nothing
	// the initiator was told is written is dropped.
	got, err := get()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(second)], second) {
		if bytes.Equal(got[:len(first)], first) {
			t.Fatal("clear-error dropped acknowledged writes (the LUN holds the earlier image)")
		}
		t.Fatal("after clear-error the LUN holds neither image")
	}
	third := img("third.img", 3)
	if out, err := put("third.img"); err != nil {
		t.Fatalf("write after clear-error: %v\n%s", err, out)
	}
	if got, err = get(); err != nil || !bytes.Equal(got[:len(third)], third) {
		t.Fatalf("read back after clear-error: err=%v or data differs", err)
	}
	d.restart()
	if got, err = get(); err != nil || !bytes.Equal(got[:len(third)], third) {
		t.Fatalf("read back after restart: err=%v or data differs", err)
	}
}
