package nvmetcp

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/nvme"
)

// FuzzPDU feeds arbitrary bytes, as a PDU stream after ICReq, to the
// reader a live connection uses. Every PDU must come out as an error or
// with a data length within the bounds given, never a panic.
func FuzzPDU(f *testing.F) {
	f.Add(capsule(sqe(nvme.OpWrite, 1, 0x01, 8), make([]byte, 8)), false, false)
	f.Add(h2c(1, 0, 0, make([]byte, 64), true), false, false)
	f.Add(append(capsule(sqe(nvme.OpRead, 1, 0x5a, 512), nil), h2c(2, 1, 0, []byte("abcd"), false)...), false, false)
	f.Fuzz(func(t *testing.T, b []byte, hd, dd bool) {
		rd := newPDUReader(bytes.NewReader(b))
		rd.hdgst, rd.ddgst = hd, dd
		limit := func(uint8) int { return 4096 }
		for {
			err := rd.readHeader(false, limit)
			if err != nil {
				var fe *fatalError
				if errors.As(err, &fe) && len(fe.hdr) > maxHdrLen {
					t.Fatalf("TermReq error data %d bytes", len(fe.hdr))
				}
				return
			}
			if rd.dataLen > 4096 || rd.dataLen < 0 {
				t.Fatalf("data length %d past the bound", rd.dataLen)
			}
			if err := rd.discardData(); err != nil {
				return
			}
		}
	})
}

// FuzzConnection sends arbitrary bytes after a valid ICReq and Connect
// into a live connection over the fake core: the connection must end or
// go on, never panic or hang.
func FuzzConnection(f *testing.F) {
	f.Add(capsule(sqe(nvme.OpWrite, 5, 0x5a, 4096), nil))
	f.Add(h2c(5, 0, 0, make([]byte, 4096), true))
	f.Add(capsule(sqe(nvme.OpRead, 6, 0x5a, 512), nil))
	s := newServer(Config{ConnectTimeout: time.Second}, &fakeCore{q: &fakeQueue{mem: make([]byte, 1<<20), done: make(chan struct{})}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go s.Serve(ln)
	f.Fuzz(func(t *testing.T, b []byte) {
		h := dial(t, ln.Addr().String())
		h.connect()
		h.send(b)
		h.nc.(*net.TCPConn).CloseWrite()
		h.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		var buf [4096]byte
		for {
			_, err := h.r.Read(buf[:])
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("connection hangs after EOF from the host")
				}
				return
			}
		}
	})
}
