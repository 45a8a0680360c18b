package netguard

import (
	"net"
	"testing"
)

func TestCapsAdmitAndRelease(t *testing.T) {
	c := NewCaps(3, 2)
	for i, tc := range []struct{ addr, want string }{
		{"10.0.0.1", ""},
		{"10.0.0.1", ""},
		{"10.0.0.1", CapPerAddress},
		{"10.0.0.2", ""},
		{"10.0.0.3", CapTotal},
	} {
		if got := c.Admit(tc.addr); got != tc.want {
			t.Fatalf("admission %d from %s: %q, want %q", i, tc.addr, got, tc.want)
		}
	}
	if total, per := c.Refused(); total != 1 || per != 1 {
		t.Fatalf("refused %d total, %d per address; want 1 and 1", total, per)
	}
	c.Release("10.0.0.1")
	if got := c.Admit("10.0.0.3"); got != "" {
		t.Fatalf("after a release a new address is refused: %q", got)
	}
	if got := c.Admit("10.0.0.1"); got != CapTotal {
		t.Fatalf("over the total cap: %q, want %q", got, CapTotal)
	}
	c.Release("10.0.0.2")
	if got := c.Admit("10.0.0.1"); got != "" {
		t.Fatalf("10.0.0.1 holds one of its two after a release, yet: %q", got)
	}
	if len(c.perAddr) != 2 {
		t.Fatalf("per-address table holds %d addresses, want 2 (released ones are dropped)", len(c.perAddr))
	}
}

func TestPeerIP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if got := PeerIP(sc); got != "127.0.0.1" {
		t.Fatalf("PeerIP %q, want 127.0.0.1 without the port", got)
	}
}
