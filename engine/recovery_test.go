package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// newestHeaderSlot returns the file offset of the undo FIFO's header slot
// with the highest generation (the layout of engine/undo: two slots 4096
// bytes apart, generation at byte 16).
func newestHeaderSlot(t *testing.T, undoPath string) int64 {
	t.Helper()
	b, err := os.ReadFile(undoPath)
	if err != nil {
		t.Fatal(err)
	}
	g0, g1 := binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[4096+16:])
	if g1 > g0 {
		return 4096
	}
	return 0
}

// TestGarbledNewerHeaderKeepsFlushedData: 4 MiB are written and flushed (an
// acknowledged epoch), the volume is closed, and the newest undo header slot
// is then garbled. Recovery at the next open must not roll the flushed
// epoch back (which would turn the 4 MiB into zeroes and call the volume
// healthy); it cannot tell which slot was newer, so the volume opens
// degraded and read-only with the data as it was.
func TestGarbledNewerHeaderKeepsFlushedData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vol.img")
	v := openTest(t, path, Options{Size: 16 << 20})
	want := pattern(4<<20, 5)
	if err := v.WriteAt(ctx, want, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	undoPath := path + ".undo"
	f, err := os.OpenFile(undoPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 512), newestHeaderSlot(t, undoPath)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	v = openTest(t, path, Options{})
	defer v.Close()
	got := make([]byte, len(want))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("recovery rolled back the flushed epoch")
	}
	if v.Degraded() == "" || !v.ReadOnly() {
		t.Fatalf("volume is healthy (degraded %q, read-only %v) after an uncertain recovery", v.Degraded(), v.ReadOnly())
	}
	if err := v.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a degraded volume: %v, want ErrReadOnly", err)
	}
	if err := v.ClearError(); !errors.Is(err, ErrDegraded) {
		t.Fatalf("ClearError on a degraded volume: %v, want ErrDegraded", err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[:len(want)], want) {
		t.Fatal("closing the degraded volume changed its data file")
	}
}

// TestNoSpaceFreezesWithErrNoSpace: backing writes failing with ENOSPC (a
// full file system) make the flush fail with ErrNoSpace, not ErrMedium,
// and so every write until the error is cleared; once space is back,
// ClearError commits the acknowledged data.
func TestNoSpaceFreezesWithErrNoSpace(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "full.img")
	v := openTest(t, path, Options{Size: 4 << 20, FlushInterval: time.Hour, FaultInjection: true})
	defer v.Close()
	want := pattern(1<<20, 9)
	if err := v.WriteAt(ctx, want, 0, false); err != nil {
		t.Fatal(err)
	}
	v.SetFaultNoSpace(true)
	v.SetFaultRate(10000, 1)
	err := v.Flush(ctx)
	if !errors.Is(err, ErrNoSpace) || errors.Is(err, ErrMedium) {
		t.Fatalf("flush on a full file system: %v, want ErrNoSpace (not ErrMedium)", err)
	}
	if err := v.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write after running out of space: %v, want ErrNoSpace", err)
	}
	if err := v.Flush(ctx); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("second flush: %v, want ErrNoSpace", err)
	}
	v.SetFaultRate(0, 0)
	if err := v.ClearError(); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("acknowledged data after ClearError: %v", err)
	}
}

// TestFaultInjectionOnlyWhenAsked: a volume reaches its data device
// directly unless Options.FaultInjection asks for the FaultDevice wrapper,
// and SetFaultRate on a volume without it fails nothing.
func TestFaultInjectionOnlyWhenAsked(t *testing.T) {
	ctx := context.Background()
	plain := openTest(t, filepath.Join(t.TempDir(), "plain.img"), Options{Size: 1 << 20})
	defer plain.Close()
	if _, ok := plain.data.(*FaultDevice); ok || plain.faults != nil {
		t.Fatal("data device wrapped for fault injection nobody asked for")
	}
	plain.SetFaultRate(10000, 1)
	if err := plain.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read with injection off: %v", err)
	}
	faulty := openTest(t, filepath.Join(t.TempDir(), "faulty.img"), Options{Size: 1 << 20, FaultInjection: true})
	defer faulty.Close()
	if _, ok := faulty.data.(*FaultDevice); !ok {
		t.Fatal("FaultInjection did not wrap the data device")
	}
	faulty.SetFaultRate(10000, 1)
	if err := faulty.ReadAt(ctx, make([]byte, 4096), 0); err == nil {
		t.Fatal("read succeeded with every I/O failing")
	}
	faulty.SetFaultRate(0, 0)
}

// noDeallocDevice is a data device that says it cannot deallocate, as a
// disk without discard does.
type noDeallocDevice struct{ Device }

func (noDeallocDevice) Deallocates() bool { return false }

// TestFaultInjectionKeepsCapabilities: the fault injector in front of the
// data device must not hide what the device itself reports; a device that
// cannot deallocate is not offered as thin either way.
func TestFaultInjectionKeepsCapabilities(t *testing.T) {
	for _, fi := range []bool{false, true} {
		dir := t.TempDir()
		data, err := OpenFileDevice(filepath.Join(dir, "d.img"), true, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		udev, err := OpenFileDevice(filepath.Join(dir, "d.undo"), true, 8<<20)
		if err != nil {
			t.Fatal(err)
		}
		v, err := OpenDevices(noDeallocDevice{data}, udev, Options{Name: "c", Logger: quietLog, Cache: NewCache(CacheOptions{Size: 32 << 20}), FaultInjection: fi})
		if err != nil {
			t.Fatal(err)
		}
		if got := v.Limits().MaxUnmap; got != 0 {
			t.Errorf("FaultInjection=%v: MaxUnmap %d on a device that cannot deallocate", fi, got)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
