package main

import (
	"fmt"
	"net"
	"strconv"

	"github.com/anvilproject/anvil/target/nvme"
)

// nvmePort describes a bound NVMe/TCP listener for the discovery log:
// its address family, traddr (a wildcard address stays one, and the core
// advertises the local address each discovery connection came in on) and
// trsvcid from the socket, so that a :0 listen address advertises the
// port the kernel chose.
func nvmePort(id uint16, addr net.Addr, discovery bool) (nvme.Port, error) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return nvme.Port{}, fmt.Errorf("NVMe/TCP listener address %v is not TCP", addr)
	}
	p := nvme.Port{ID: id, TransportType: nvme.TransportTCP, AddressFamily: nvme.AddrIPv4, ServiceID: strconv.Itoa(tcp.Port), Discovery: discovery}
	switch {
	case tcp.IP == nil || tcp.IP.IsUnspecified():
		// Go reports a 0.0.0.0 listener as [::] (it binds both
		// families), so the family cannot be told from the socket; the
		// core puts the connection's own local address in traddr.
		p.Address = ""
	case tcp.IP.To4() != nil:
		p.Address = tcp.IP.To4().String()
	default:
		p.AddressFamily = nvme.AddrIPv6
		p.Address = tcp.IP.String()
	}
	return p, nil
}

// nvmePorts are the discovery log's ports: the I/O listener (port 1) and,
// if there is one, the discovery-only listener (port 2).
func nvmePorts(io, disc net.Listener) ([]nvme.Port, error) {
	p, err := nvmePort(1, io.Addr(), false)
	if err != nil {
		return nil, err
	}
	ports := []nvme.Port{p}
	if disc != nil {
		d, err := nvmePort(2, disc.Addr(), true)
		if err != nil {
			return nil, err
		}
		ports = append(ports, d)
	}
	return ports, nil
}
