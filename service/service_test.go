package service

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/anvilproject/anvil/catalog"
)

func open(t *testing.T, dir string, demo bool) *Service {
	t.Helper()
	s, err := Open(Options{DataDir: dir, Demo: demo})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDemoCreatedOnceAndRestored(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, true)
	v, err := s.Volume(DemoVolume)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != DemoSize || !v.Thin || len(v.NAA) != 16 || v.NAA[0] != '3' {
		t.Fatalf("demo volume = %+v", v)
	}
	tg, ok := s.Target("IQN.2026-11.io.anvil:DEMO")
	if !ok || !tg.scsi.HasLUN(0) || !tg.Allow("iqn.1993-08.org.debian:01:x") {
		t.Fatal("demo target missing, without LUN 0, or not open")
	}
	if err := s.DeleteVolume(DemoVolume, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The operator deleted the demo: a restart must not bring it back.
	s = open(t, dir, true)
	defer s.Close()
	if _, err := s.Volume(DemoVolume); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted demo volume came back: %v", err)
	}
	if tg, ok := s.Target(DemoIQN); !ok || tg.scsi.HasLUN(0) {
		t.Fatal("demo target should survive with its LUN unmapped by the forced delete")
	}
}

func TestNoDemo(t *testing.T) {
	s := open(t, t.TempDir(), false)
	defer s.Close()
	if len(s.Volumes()) != 0 || len(s.ListTargets()) != 0 {
		t.Fatal("--no-demo still created something")
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	ctx := context.Background()
	rec, err := s.CreateVolume(ctx, VolumeSpec{Name: "db1", SizeBytes: 8 << 20, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTarget(TargetSpec{IQN: "iqn.2026-11.io.anvil:db", ACL: catalog.ACL{Initiators: []string{"iqn.2026-11.io.host:a"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.MapLUN("iqn.2026-11.io.anvil:db", 7, "db1"); err != nil {
		t.Fatal(err)
	}
	vol, _ := s.EngineVolume("db1")
	if err := vol.WriteAt(ctx, make([]byte, 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, true)
	defer s.Close()
	got, err := s.Volume("db1")
	if err != nil {
		t.Fatal(err)
	}
	if got.NAA != rec.NAA || got.Serial != rec.Serial || got.BlockSize != 4096 {
		t.Fatalf("identity changed across restart: %+v vs %+v", got, rec)
	}
	tg, ok := s.Target("iqn.2026-11.io.anvil:db")
	if !ok || !tg.scsi.HasLUN(7) {
		t.Fatal("target or LUN 7 lost across restart")
	}
	if !tg.Allow("IQN.2026-11.io.host:A") || tg.Allow("iqn.2026-11.io.host:b") {
		t.Fatal("ACL not restored")
	}
	if names := s.Targets("iqn.2026-11.io.host:b"); len(names) != 0 {
		t.Fatalf("discovery shows %v to an initiator outside the ACL", names)
	}
	if _, err := s.Volume(DemoVolume); err == nil {
		t.Fatal("demo created on a data dir that was already initialised")
	}
}

func TestValidationAndConflicts(t *testing.T) {
	s := open(t, t.TempDir(), false)
	defer s.Close()
	ctx := context.Background()
	cases := []struct {
		spec  VolumeSpec
		field string
	}{
		{VolumeSpec{Name: "", SizeBytes: 1 << 20}, "name"},
		{VolumeSpec{Name: "../x", SizeBytes: 1 << 20}, "name"},
		{VolumeSpec{Name: "a", SizeBytes: 1000}, "size_bytes"},
		{VolumeSpec{Name: "a", SizeBytes: 0}, "size_bytes"},
		{VolumeSpec{Name: "a", SizeBytes: 1 << 20, BlockSize: 1024}, "block_size"},
		{VolumeSpec{Name: "a", SizeBytes: MaxVolumeSize + 512}, "size_bytes"},
	}
	for _, c := range cases {
		_, err := s.CreateVolume(ctx, c.spec)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateVolume(%+v) = %v, want FieldError on %s", c.spec, err, c.field)
		}
	}
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "a", SizeBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "a", SizeBytes: 1 << 20}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate volume = %v, want ErrExists", err)
	}
	for _, bad := range []string{"iqn.2026-13.io.anvil:x", "iqn.26-11.io.anvil", "eui.123", "target1", "iqn.2026-11.-bad"} {
		if _, err := s.CreateTarget(TargetSpec{IQN: bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateTarget(%q) = %v, want invalid", bad, err)
		}
	}
	for _, good := range []string{"iqn.2026-11.io.anvil:x", "eui.0123456789abcdef", "naa.52004567ba64678d", "iqn.2001-04.com.example"} {
		if _, err := s.CreateTarget(TargetSpec{IQN: good}); err != nil {
			t.Errorf("CreateTarget(%q) = %v", good, err)
		}
	}
	if err := s.MapLUN("iqn.2026-11.io.anvil:x", 0, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.MapLUN("iqn.2026-11.io.anvil:x", 0, "a"); !errors.Is(err, ErrExists) {
		t.Errorf("LUN 0 mapped twice: %v", err)
	}
	if err := s.MapLUN("iqn.2026-11.io.anvil:x", MaxLUN+1, "a"); !errors.Is(err, ErrInvalid) {
		t.Errorf("LUN beyond MaxLUN: %v", err)
	}
	if err := s.MapLUN("iqn.2026-11.io.anvil:x", 1, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("map missing volume: %v", err)
	}
	if err := s.DeleteVolume("a", false); !errors.Is(err, ErrInUse) {
		t.Errorf("delete of mapped volume = %v, want ErrInUse", err)
	}
	if err := s.UnmapLUN("iqn.2026-11.io.anvil:x", 0); err != nil {
		t.Fatal(err)
	}
	v, _ := s.Volume("a")
	if err := s.DeleteVolume("a", false); err != nil {
		t.Fatalf("delete after unmap: %v", err)
	}
	if _, err := os.Stat(v.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data file left behind: %v", err)
	}
}
