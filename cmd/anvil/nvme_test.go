package main

import (
	"net"
	"testing"

	"github.com/anvilproject/anvil/target/nvme"
)

func TestNVMePorts(t *testing.T) {
	io, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer io.Close()
	disc, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer disc.Close()
	ports, err := nvmePorts(io, disc)
	if err != nil {
		t.Fatal(err)
	}
	_, ioPort, _ := net.SplitHostPort(io.Addr().String())
	_, discPort, _ := net.SplitHostPort(disc.Addr().String())
	want := []nvme.Port{
		{ID: 1, TransportType: nvme.TransportTCP, AddressFamily: nvme.AddrIPv4, Address: "127.0.0.1", ServiceID: ioPort},
		{ID: 2, TransportType: nvme.TransportTCP, AddressFamily: nvme.AddrIPv4, Address: "", ServiceID: discPort, Discovery: true},
	}
	if len(ports) != 2 || ports[0] != want[0] || ports[1] != want[1] {
		t.Fatalf("ports = %+v, want %+v", ports, want)
	}
	if ports, err = nvmePorts(io, nil); err != nil || len(ports) != 1 {
		t.Fatalf("without a discovery listener: %+v %v", ports, err)
	}
	v6 := &net.TCPAddr{IP: net.ParseIP("fd00::1"), Port: 4420}
	if p, err := nvmePort(3, v6, false); err != nil || p.AddressFamily != nvme.AddrIPv6 || p.Address != "fd00::1" || p.ServiceID != "4420" {
		t.Fatalf("IPv6 port = %+v %v", p, err)
	}
	if _, err := nvmePort(4, &net.UnixAddr{Name: "/x", Net: "unix"}, false); err == nil {
		t.Fatal("a unix socket address made a port")
	}
}
