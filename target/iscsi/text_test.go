package iscsi

import (
	"net"
	"reflect"
	"testing"
)

// addrConn is a net.Conn whose only job is to report a local address.
type addrConn struct {
	net.Conn
	local net.Addr
}

func (a addrConn) LocalAddr() net.Addr { return a.local }

func TestPortalAddrs(t *testing.T) {
	v4 := &net.TCPAddr{IP: net.ParseIP("192.0.2.10"), Port: 3260}
	v6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::5"), Port: 3260}
	cases := []struct {
		local   net.Addr
		portals []string
		tpgt    uint16
		want    []string
	}{
		{v4, nil, 1, []string{"192.0.2.10:3260,1"}},
		{v4, []string{"0.0.0.0:3260"}, 7, []string{"192.0.2.10:3260,7"}},
		{v6, []string{"[::]:3261", "198.51.100.1:3260"}, 1, []string{"[2001:db8::5]:3261,1", "198.51.100.1:3260,1"}},
		{v6, nil, 2, []string{"[2001:db8::5]:3260,2"}},
		{v4, []string{"storage.example"}, 1, []string{"storage.example:3260,1"}},
	}
	for _, tc := range cases {
		c := &conn{srv: &Server{cfg: Config{Portals: tc.portals, PortalGroupTag: tc.tpgt}}, nc: addrConn{local: tc.local}}
		if got := c.portalAddrs(); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("local %v portals %v: got %v, want %v", tc.local, tc.portals, got, tc.want)
		}
	}
}
