package apitest

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// icExchange sends an NVMe/TCP ICReq (TP 8000: PDU type 0, HLEN and PLEN
// 128, PFV 0, no digests) and reads the ICResp's header.
func icExchange(t *testing.T, addr string) (pduType byte, hlen byte, plen uint32, maxH2C uint32) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial NVMe/TCP %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := make([]byte, 128)
	req[0], req[2] = 0x00, 128
	binary.LittleEndian.PutUint32(req[4:], 128)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	resp := make([]byte, 128)
	if _, err := io.ReadFull(c, resp); err != nil {
		t.Fatalf("ICResp from %s: %v", addr, err)
	}
	return resp[0], resp[2], binary.LittleEndian.Uint32(resp[4:]), binary.LittleEndian.Uint32(resp[12:])
}

// TestDaemonServesNVMeTCP: `anvil serve` answers an NVMe/TCP connection
// on both its I/O and its discovery port, and --nvme=false closes them.
func TestDaemonServesNVMeTCP(t *testing.T) {
	d := start(t, harness.Options{})
	for _, addr := range []string{d.NVMePort, d.NVMeDiscoveryPort} {
		typ, hlen, plen, maxH2C := icExchange(t, addr)
		if typ != 0x01 || hlen != 128 || plen != 128 || maxH2C < 4096 || maxH2C%4 != 0 {
			t.Errorf("%s: ICResp type %#x hlen %d plen %d maxh2cdata %d", addr, typ, hlen, plen, maxH2C)
		}
	}
	contains(t, "daemon log", d.Log(), "anvil serving", d.NVMePort, d.NVMeDiscoveryPort)

	off := start(t, harness.Options{Args: []string{"--nvme=false"}})
	for _, addr := range []string{off.NVMePort, off.NVMeDiscoveryPort} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("--nvme=false: %s accepts connections", addr)
		}
	}
}
