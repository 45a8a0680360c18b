package service

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/target/scsi"
)

// fakeFS stands in for statfs: a file system of size bytes with free bytes
// available.
type fakeFS struct {
	mu         sync.Mutex
	size, free uint64
}

func (f *fakeFS) set(size, free uint64) { f.mu.Lock(); f.size, f.free = size, free; f.mu.Unlock() }
func (f *fakeFS) statfs(string) (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size, f.free, nil
}

func openWithFS(t *testing.T, warn int) (*Service, *fakeFS) {
	t.Helper()
	s, err := Open(Options{DataDir: t.TempDir(), SpaceWarnPercent: warn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	fs := &fakeFS{size: 1 << 40, free: 1 << 39}
	s.space.mu.Lock()
	s.space.statfs = fs.statfs
	s.space.mu.Unlock()
	return s, fs
}

// TestClearErrorWhileStillFull: a volume whose commit ran out of space
// keeps its error while its file system is still full: ClearError fails
// with ErrNoSpace and says why, and succeeds once there is room.
func TestClearErrorWhileStillFull(t *testing.T) {
	s, fs := openWithFS(t, 0)
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "v", SizeBytes: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetFaultInjection("v", 10000, 1, true); err != nil {
		t.Fatal(err)
	}
	ev, _ := s.EngineVolume("v")
	if err := ev.WriteAt(ctx, make([]byte, 1<<20), 0, true); !errors.Is(err, engine.ErrNoSpace) {
		t.Fatalf("write on a full file system: %v, want ErrNoSpace", err)
	}
	if err := s.SetFaultInjection("v", 0, 0, false); err != nil {
		t.Fatal(err)
	}
	fs.set(1<<30, 4096)
	err := s.ClearError("v")
	if !errors.Is(err, engine.ErrNoSpace) {
		t.Fatalf("ClearError while the file system is full = %v, want ErrNoSpace", err)
	}
	if s.VolumeError("v") == nil {
		t.Fatal("the refused ClearError lifted the volume's error")
	}
	fs.set(1<<30, 512<<20)
	if err := s.ClearError("v"); err != nil {
		t.Fatalf("ClearError with room again: %v", err)
	}
	if err := ev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestSoftThresholdUnitAttentionOncePerCrossing: passing
// volume.space_warn_percent gives a thin volume's initiators one THIN
// PROVISIONING SOFT THRESHOLD REACHED unit attention; staying above gives
// no more; dropping below and passing it again gives another.
func TestSoftThresholdUnitAttentionOncePerCrossing(t *testing.T) {
	s, fs := openWithFS(t, 90)
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "v", SizeBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	const iqn = "iqn.2026-11.io.anvil:space"
	if _, err := s.CreateTarget(TargetSpec{IQN: iqn, ACL: catalog.ACL{Open: true}}); err != nil {
		t.Fatal(err)
	}
	if err := s.MapLUN(iqn, 0, "v"); err != nil {
		t.Fatal(err)
	}
	tg, _ := s.Target(iqn)
	n := &scsi.Nexus{InitiatorPort: "iqn.2026-11.io.host:a,i,0x1", InitiatorName: "iqn.2026-11.io.host:a", TargetPort: iqn + ",t,0x1", RelativeTargetPortID: 1, TargetPortGroup: 1}
	tur := []byte{0, 0, 0, 0, 0, 0}
	// Consume the power-on unit attention.
	execute(t, tg, n, tur, nil, 0)
	softUA := func() bool {
		r := tg.scsi.Execute(ctx, &scsi.Command{Nexus: n, CDB: tur})
		return r.Status == scsi.StatusCheckCondition && len(r.Sense) > 13 && r.Sense[2]&0x0f == 6 && r.Sense[12] == 0x38 && r.Sense[13] == 0x07
	}
	const size = 1000 << 20
	steps := []struct {
		usedPercent uint64
		wantUA      bool
	}{{50, false}, {95, true}, {97, false}, {40, false}, {91, true}}
	for _, st := range steps {
		fs.set(size, size-size*st.usedPercent/100)
		s.CheckSpace()
		if got := softUA(); got != st.wantUA {
			t.Fatalf("at %d%% used: soft threshold unit attention %v, want %v", st.usedPercent, got, st.wantUA)
		}
	}
	if sp := s.Space(); sp.Crossings != 2 || !sp.Above {
		t.Fatalf("space status %+v, want 2 crossings and above", sp)
	}
}

// TestOvercommitWarns: thin volumes adding up to more than the file system
// are allowed, with a warning.
func TestOvercommitWarns(t *testing.T) {
	s, fs := openWithFS(t, 0)
	fs.set(10<<20, 10<<20)
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "a", SizeBytes: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	if w := s.SpaceWarnings(); len(w) != 0 {
		t.Fatalf("warnings without over-commit: %v", w)
	}
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "b", SizeBytes: 8 << 20}); err != nil {
		t.Fatalf("over-committing create refused: %v", err)
	}
	if w := s.SpaceWarnings(); len(w) != 1 {
		t.Fatalf("warnings after over-commit: %v, want one", w)
	}
}
