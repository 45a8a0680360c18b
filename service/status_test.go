package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestVolumeStatus: one snapshot carries what the API used to gather with
// five calls: the record, the mapping targets, the state with its reason,
// and statistics only for an open volume; an unknown name is ErrNotFound.
func TestVolumeStatus(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := s.CreateVolume(ctx, VolumeSpec{Name: n, SizeBytes: 4 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	const iqn = "iqn.2026-11.io.anvil:st"
	if _, err := s.CreateTarget(TargetSpec{IQN: iqn}); err != nil {
		t.Fatal(err)
	}
	if err := s.MapLUN(iqn, 0, "a"); err != nil {
		t.Fatal(err)
	}

	st, err := s.VolumeStatus("a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Record.Name != "a" || len(st.MappedBy) != 1 || st.MappedBy[0] != iqn || st.State != StateOnline || !st.Open || st.Error != "" {
		t.Errorf("status of a: %+v", st)
	}
	if len(st.IO.Commit.Counts) == 0 {
		t.Errorf("status of a lacks the engine's statistics")
	}
	if st, _ := s.VolumeStatus("b"); st.MappedBy == nil || len(st.MappedBy) != 0 {
		t.Errorf("unmapped b: mapped_by %#v, want empty and not nil", st.MappedBy)
	}
	if _, err := s.VolumeStatus("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown volume: %v, want ErrNotFound", err)
	}

	// Offline after a restart without its undo FIFO: state and reason,
	// no statistics, still listed.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "volumes", "b.undo")); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, false)
	defer s.Close()
	st, err = s.VolumeStatus("b")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateOffline || st.Reason == "" || st.Open || len(st.IO.Commit.Counts) != 0 || st.Record.Name != "b" {
		t.Errorf("offline b: %+v", st)
	}
	all := s.VolumeStatuses()
	if len(all) != 2 || all[0].Record.Name != "a" || all[1].Record.Name != "b" || all[1].State != StateOffline {
		t.Errorf("VolumeStatuses: %+v", all)
	}
}
