package service

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/anvilproject/anvil/target/nvme"
)

const hostA = "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"

func TestDemoSubsystemCreatedAndRestored(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, true)
	rec, err := s.Subsystem(DemoNQN)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.AllowAnyHost || len(rec.Namespaces) != 1 || rec.Namespaces[0].NSID != 1 || rec.Namespaces[0].Volume != DemoVolume || len(rec.Serial) != 20 {
		t.Fatalf("demo subsystem = %+v", rec)
	}
	sub, ok := s.NVMeRegistry().Subsystem(DemoNQN)
	if !ok || !sub.Allows(hostA) || len(sub.Namespaces()) != 1 || sub.Serial() != rec.Serial {
		t.Fatal("demo subsystem not live, not open to any host, or without its namespace")
	}
	ns := sub.Namespaces()[0]
	if ns.ID() != 1 || ns.NGUID() == [16]byte{} || ns.UUID() == [16]byte{} || ns.UUID()[6]>>4 != 4 {
		t.Fatalf("demo namespace %d NGUID %x UUID %x", ns.ID(), ns.NGUID(), ns.UUID())
	}
	nguid, uuid := ns.NGUID(), ns.UUID()
	if _, ok := s.NVMeRegistry().Subsystem(strings.ToUpper(DemoNQN)); ok {
		t.Error("NQN lookup ignored case")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, true)
	defer s.Close()
	sub, ok = s.NVMeRegistry().Subsystem(DemoNQN)
	if !ok || len(sub.Namespaces()) != 1 {
		t.Fatal("demo subsystem not restored")
	}
	if ns := sub.Namespaces()[0]; ns.NGUID() != nguid || ns.UUID() != uuid {
		t.Fatalf("identifiers changed over a restart: %x %x, were %x %x", ns.NGUID(), ns.UUID(), nguid, uuid)
	}
	if len(s.NVMeRegistry().Subsystems()) != 1 {
		t.Fatalf("registry lists %d subsystems", len(s.NVMeRegistry().Subsystems()))
	}
}

func TestValidateNQN(t *testing.T) {
	for _, ok := range []string{"nqn.2026-11.io.anvil:demo", hostA, "nqn.2014-08.org.nvmexpress:uuid:1B4E28BA-2FA1-11D2-883F-0016D3CCA427", "nqn.1992-05.com.Example:Disk/1"} {
		if err := ValidateNQN("nqn", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", nvme.DiscoveryNQN, "iqn.2026-11.io.anvil:demo", "nqn.2026-13.io.anvil:x", "nqn.2026-11.io:x", "nqn.2026-11.io.anvil", "nqn.2026-11.io.anvil:a b", "nqn.2026-11.io.anvil:" + strings.Repeat("x", 203)} {
		err := ValidateNQN("nqn", bad)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "nqn" || !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: err = %v, want an invalid field nqn", bad, err)
		}
	}
}

func TestSubsystemLifecycle(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	ctx := context.Background()
	for _, v := range []string{"a", "b", "c"} {
		if _, err := s.CreateVolume(ctx, VolumeSpec{Name: v, SizeBytes: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	const nqn = "nqn.2026-11.io.anvil:s1"
	if _, err := s.CreateSubsystem(SubsystemSpec{NQN: nqn, Hosts: []string{hostA, hostA}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSubsystem(SubsystemSpec{NQN: nqn}); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := s.CreateSubsystem(SubsystemSpec{NQN: "nqn.2026-11.io.anvil:s2", Hosts: []string{"bogus"}}); err == nil || !strings.Contains(err.Error(), "hosts[0]") {
		t.Fatalf("bad host NQN: %v", err)
	}
	if _, err := s.CreateSubsystem(SubsystemSpec{NQN: "nqn.2026-11.io.anvil:s2", Serial: strings.Repeat("x", 21)}); err == nil || !strings.Contains(err.Error(), "serial") {
		t.Fatalf("long serial: %v", err)
	}
	n1, err := s.AddNamespace(nqn, 0, "a")
	if err != nil || n1.NSID != 1 {
		t.Fatalf("first auto NSID: %+v %v", n1, err)
	}
	if _, err := s.AddNamespace(nqn, 3, "b"); err != nil {
		t.Fatal(err)
	}
	n2, err := s.AddNamespace(nqn, 0, "c")
	if err != nil || n2.NSID != 2 {
		t.Fatalf("auto NSID with 1 and 3 taken: %+v %v", n2, err)
	}
	if n1.NGUID == n2.NGUID || n1.UUID == n2.UUID || len(n1.NGUID) != 32 {
		t.Fatalf("identifiers %+v %+v", n1, n2)
	}
	if _, err := s.AddNamespace(nqn, 4, "a"); !errors.Is(err, ErrExists) {
		t.Errorf("same volume twice in one subsystem: %v", err)
	}
	if _, err := s.AddNamespace(nqn, 3, "a"); !errors.Is(err, ErrExists) {
		t.Errorf("taken NSID: %v", err)
	}
	if _, err := s.AddNamespace(nqn, MaxNSID+1, "a"); !errors.Is(err, ErrInvalid) {
		t.Errorf("NSID past MaxNSID: %v", err)
	}
	if _, err := s.AddNamespace(nqn, 0, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing volume: %v", err)
	}
	if _, err := s.AddNamespace("nqn.2026-11.io.anvil:none", 0, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing subsystem: %v", err)
	}
	sub, _ := s.NVMeRegistry().Subsystem(nqn)
	if len(sub.Namespaces()) != 3 || sub.Allows("nqn.2026-11.io.anvil:other") || !sub.Allows(hostA) {
		t.Fatal("live subsystem does not match its record")
	}

	// A volume exported as a namespace is in use, like a mapped LUN.
	if err := s.DeleteVolume("b", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete exported volume: %v", err)
	}
	if err := s.RemoveNamespace(nqn, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveNamespace(nqn, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
	if err := s.DeleteVolume("b", false); err != nil {
		t.Fatalf("delete unexported volume: %v", err)
	}
	if err := s.DeleteVolume("c", true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if len(sub.Namespaces()) != 1 {
		t.Fatalf("live namespaces after removals: %d", len(sub.Namespaces()))
	}
	rec, err := s.SetSubsystemHosts(nqn, false, []string{"nqn.2026-11.io.anvil:other"})
	if err != nil || len(rec.Hosts) != 1 {
		t.Fatal(rec, err)
	}
	if sub.Allows(hostA) || !sub.Allows("nqn.2026-11.io.anvil:other") {
		t.Fatal("host change not live")
	}
	if _, err := s.SetSubsystemHosts(nqn, false, []string{nvme.DiscoveryNQN}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("discovery NQN as host: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, false)
	defer s.Close()
	rec, err = s.Subsystem(nqn)
	if err != nil || len(rec.Namespaces) != 1 || rec.Namespaces[0] != n1 || rec.AllowAnyHost || rec.Hosts[0] != "nqn.2026-11.io.anvil:other" {
		t.Fatalf("restored %+v %v", rec, err)
	}
	var hooked int
	s.SetNVMeDiscoveryHook(func() { hooked++ })
	if err := s.DeleteSubsystem(nqn); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSubsystem(nqn); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, ok := s.NVMeRegistry().Subsystem(nqn); ok || hooked != 1 || len(s.Subsystems()) != 0 {
		t.Fatalf("deleted subsystem still live (hook ran %d times)", hooked)
	}
	if err := s.DeleteVolume("a", false); err != nil {
		t.Fatalf("volume of a deleted subsystem: %v", err)
	}
}

// TestNamespaceWriteCachePersists: Set Features Volatile Write Cache on a
// namespace goes through the same hook as MODE SELECT, so it survives a
// restart.
func TestNamespaceWriteCachePersists(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, true)
	sub, _ := s.NVMeRegistry().Subsystem(DemoNQN)
	if err := sub.Namespaces()[0].SetWriteCache(false); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Volume(DemoVolume); v.WriteCache {
		t.Fatal("write cache change not recorded")
	}
	s.Close()
	s = open(t, dir, true)
	defer s.Close()
	if v, _ := s.Volume(DemoVolume); v.WriteCache {
		t.Fatal("write cache change lost over a restart")
	}
	if lv := s.volumes[DemoVolume]; lv.locks == nil {
		t.Fatal("volume has no range locks to share")
	}
}

func TestResizeReachesNamespaces(t *testing.T) {
	s := open(t, t.TempDir(), true)
	defer s.Close()
	if _, err := s.ResizeVolume(context.Background(), DemoVolume, 2*DemoSize); err != nil {
		t.Fatal(err)
	}
	sub, _ := s.NVMeRegistry().Subsystem(DemoNQN)
	if got := sub.Namespaces()[0].Volume().Size(); got != 2*DemoSize {
		t.Fatalf("namespace size after resize = %d", got)
	}
}
