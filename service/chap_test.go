package service

import (
	"errors"
	"testing"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/target/iscsi"
)

func TestDiscoveryCHAP(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	reg := s.ISCSIRegistry().(iscsi.DiscoveryCHAP)
	if c := reg.DiscoveryCredentials("iqn.2026-11.io.host:a"); c.Required {
		t.Fatalf("discovery CHAP required on a fresh data dir: %+v", c)
	}
	var fe *FieldError
	if err := s.SetDiscoveryCHAP(&catalog.CHAP{User: "d", Secret: "short"}); !errors.As(err, &fe) || fe.Field != "secret" {
		t.Fatalf("short secret: %v", err)
	}
	if err := s.SetDiscoveryCHAP(&catalog.CHAP{User: "disco", Secret: "discovery-secret", MutualUser: "tgt", MutualSecret: "target-side-secret"}); err != nil {
		t.Fatal(err)
	}
	want := iscsi.CHAPCredentials{Required: true, User: "disco", Secret: "discovery-secret", MutualUser: "tgt", MutualSecret: "target-side-secret"}
	if c := reg.DiscoveryCredentials("iqn.2026-11.io.host:a"); c != want {
		t.Fatalf("discovery credentials %+v", c)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, false)
	defer s.Close()
	reg = s.ISCSIRegistry().(iscsi.DiscoveryCHAP)
	if c := reg.DiscoveryCredentials("iqn.2026-11.io.host:a"); c != want {
		t.Fatalf("discovery credentials after restart %+v", c)
	}
	if err := s.SetDiscoveryCHAP(nil); err != nil {
		t.Fatal(err)
	}
	if c := reg.DiscoveryCredentials("iqn.2026-11.io.host:a"); c.Required || s.DiscoveryCHAP() != nil {
		t.Fatalf("discovery CHAP not removed: %+v", c)
	}
}

func TestInitiatorCHAP(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, false)
	const iqn = "iqn.2026-11.io.anvil:db"
	const a, b = "iqn.2026-11.io.host:a", "iqn.2026-11.io.host:b"
	if _, err := s.CreateTarget(TargetSpec{IQN: iqn, ACL: catalog.ACL{Open: true}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCHAP(iqn, &catalog.CHAP{User: "all", Secret: "target-wide-secret"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetInitiatorCHAP(iqn, "IQN.2026-11.io.host:A", &catalog.CHAP{User: "alice", Secret: "alice-own-secret"}); err != nil {
		t.Fatal(err)
	}
	var fe *FieldError
	if err := s.SetInitiatorCHAP(iqn, "not an iqn", &catalog.CHAP{User: "x", Secret: "long-enough-secret"}); !errors.As(err, &fe) || fe.Field != "initiator" {
		t.Fatalf("bad initiator name: %v", err)
	}
	if err := s.SetInitiatorCHAP(iqn, b, &catalog.CHAP{User: "", Secret: "long-enough-secret"}); !errors.As(err, &fe) || fe.Field != "user" {
		t.Fatalf("empty user: %v", err)
	}
	if err := s.SetInitiatorCHAP("iqn.2026-11.io.anvil:none", a, &catalog.CHAP{User: "x", Secret: "long-enough-secret"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown target: %v", err)
	}
	check := func(s *Service, ini, user, secret string) {
		t.Helper()
		tg, ok := s.Target(iqn)
		if !ok {
			t.Fatal("target missing")
		}
		if c := tg.Credentials(ini); !c.Required || c.User != user || c.Secret != secret {
			t.Fatalf("credentials of %s: %+v, want %s/%s", ini, c, user, secret)
		}
	}
	check(s, a, "alice", "alice-own-secret")
	check(s, "iqn.2026-11.io.host:A", "alice", "alice-own-secret")
	check(s, b, "all", "target-wide-secret")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, false)
	defer s.Close()
	check(s, a, "alice", "alice-own-secret")
	check(s, b, "all", "target-wide-secret")
	if rec, _ := s.GetTarget(iqn); len(rec.InitiatorCHAP) != 1 || rec.InitiatorCHAP[a].User != "alice" {
		t.Fatalf("record %+v", rec.InitiatorCHAP)
	}
	if err := s.SetInitiatorCHAP(iqn, a, nil); err != nil {
		t.Fatal(err)
	}
	check(s, a, "all", "target-wide-secret")
	if err := s.SetInitiatorCHAP(iqn, a, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing absent credentials: %v", err)
	}
	// Without target-wide CHAP, only initiators with their own credentials
	// must authenticate.
	if err := s.SetInitiatorCHAP(iqn, a, &catalog.CHAP{User: "alice", Secret: "alice-own-secret"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCHAP(iqn, nil); err != nil {
		t.Fatal(err)
	}
	check(s, a, "alice", "alice-own-secret")
	if tg, _ := s.Target(iqn); tg.Credentials(b).Required {
		t.Fatal("initiator b must authenticate without any credentials for it")
	}
}

// Every change that can revoke a session's access calls the hook, without
// the service's lock held (the hook reads the targets again).
func TestAccessHook(t *testing.T) {
	s := open(t, t.TempDir(), false)
	defer s.Close()
	const iqn = "iqn.2026-11.io.anvil:db"
	const ini = "iqn.2026-11.io.host:a"
	calls := 0
	var allowed []bool
	s.SetAccessHook(func() {
		calls++
		if tg, ok := s.Target(iqn); ok {
			allowed = append(allowed, tg.Allow(ini))
		}
	})
	if _, err := s.CreateTarget(TargetSpec{IQN: iqn, ACL: catalog.ACL{Initiators: []string{ini}}}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"acl", func() error { return s.SetACL(iqn, catalog.ACL{}) }},
		{"chap", func() error { return s.SetCHAP(iqn, &catalog.CHAP{User: "u", Secret: "target-wide-secret"}) }},
		{"chap off", func() error { return s.SetCHAP(iqn, nil) }},
		{"initiator chap", func() error {
			return s.SetInitiatorCHAP(iqn, ini, &catalog.CHAP{User: "u", Secret: "initiator-secret"})
		}},
		{"discovery chap", func() error { return s.SetDiscoveryCHAP(&catalog.CHAP{User: "d", Secret: "discovery-secret"}) }},
		{"delete target", func() error { return s.DeleteTarget(iqn) }},
	}
	for i, st := range steps {
		if err := st.fn(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if calls != i+1 {
			t.Fatalf("after %s: hook called %d times, want %d", st.name, calls, i+1)
		}
	}
	if len(allowed) == 0 || allowed[0] {
		t.Fatalf("the hook saw the old ACL: %v", allowed)
	}
	if _, ok := s.Target(iqn); ok {
		t.Fatal("target not deleted")
	}
}
