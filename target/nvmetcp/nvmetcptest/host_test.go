package nvmetcptest_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
	"github.com/anvilproject/anvil/target/nvmetcp"
	"github.com/anvilproject/anvil/target/nvmetcp/nvmetcptest"
)

// TestHostDiscovery drives the real core through the transport with
// digests on: Connect to discovery, Property Set CC.EN, Identify.
func TestHostDiscovery(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := nvmetcp.NewServer(nvmetcp.Config{Logger: quiet}, nvme.NewTarget(nvme.TargetConfig{Logger: quiet}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	}()
	h, err := nvmetcptest.Dial(ln.Addr().String(), true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if !h.HeaderDigest || !h.DataDigest {
		t.Fatalf("digests not granted")
	}
	cd := nvmetcptest.ConnectData([16]byte{9}, 0xffff, "nqn.2014-08.org.nvmexpress.discovery", "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555")
	cqe, _, err := h.Command(nvmetcptest.ConnectSQE(1, 0, 31, 0, 0), cd, 0, 8192)
	if err != nil || nvmetcptest.Status(cqe) != 0 {
		t.Fatalf("Connect: status %#x, %v", nvmetcptest.Status(cqe), err)
	}
	var ps [64]byte
	ps[0], ps[2], ps[4] = 0x7f, 2, 0x00
	ps[44] = 0x14
	ps[48], ps[50] = 1, 0x46
	if cqe, _, err = h.Command(ps, nil, 0, 8192); err != nil || nvmetcptest.Status(cqe) != 0 {
		t.Fatalf("Property Set: status %#x, %v", nvmetcptest.Status(cqe), err)
	}
	var id [64]byte
	id[0], id[2], id[40] = 0x06, 3, 1
	cqe, data, err := h.Command(id, nil, 4096, 8192)
	if err != nil || nvmetcptest.Status(cqe) != 0 || len(data) != 4096 {
		t.Fatalf("Identify: status %#x, %d bytes, %v", nvmetcptest.Status(cqe), len(data), err)
	}
}
