// Package nvmetcp is Anvil's NVMe/TCP transport binding (NVMe over
// Fabrics TCP transport, TP 8000), controller side.
//
// It accepts TCP connections, runs the ICReq/ICResp exchange (PFV 0, the
// host's PDU data alignment honoured, CPDA 0, CRC32C header and data
// digests as the host asks) and then carries capsules between the host
// and the command core (package nvme): the first capsule of a connection
// must be a Fabrics Connect, which makes the connection one queue pair of
// a controller; every later capsule is a command on that queue. Host data
// comes in the capsule or, solicited with R2T, in H2CData PDUs; read data
// goes back in C2HData PDUs, and every command ends with a CapsuleResp (or
// with the SUCCESS flag of its last C2HData PDU when the host disabled SQ
// flow control).
//
// A malformed PDU ends its connection with a C2HTermReq that names the
// fatal error (FES) and the offending field (FEI); it never affects other
// connections. A command the core refuses gets its NVMe status and the
// connection goes on. What one connection may make us allocate is bounded
// by the queue's in-capsule data size, MAXH2CDATA and the core's MDTS;
// connections are capped in total and per host address, and panics are
// recovered per connection.
//
// Each connection has one reader goroutine, which parses PDUs, moves host
// data and starts commands, and one goroutine per executing command. There
// is no writer goroutine: whoever has PDUs to send appends them to the
// connection's output batch, and the first one to find no flush in
// progress writes the batch (and whatever is appended meanwhile) with
// writev, so concurrent completions share system calls. A lone read on an
// I/O queue runs on the reader itself, which saves two goroutine wake-ups
// per command at queue depth 1.
package nvmetcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/internal/netguard"
)

// Config configures a Server. Zero values select the defaults documented
// on each field.
type Config struct {
	// MaxH2CData is the MAXH2CDATA we announce in ICResp: the most data
	// one H2CData PDU may carry, and the most one R2T asks for. It is
	// rounded down to a multiple of 4 and kept at 4096 or more (default
	// 256 KiB).
	MaxH2CData uint32
	// MaxConnections caps the TCP connections the server keeps at once
	// (default 1024). Connections past it are closed as soon as they are
	// accepted, before ICResp.
	MaxConnections int
	// MaxConnectionsPerAddress caps the connections from one host IP
	// address (default 128: a Linux host opens one per CPU and controller).
	MaxConnectionsPerAddress int
	// DisableHeaderDigest and DisableDataDigest refuse CRC32C digests: an
	// ICReq asking for them gets an ICResp without them (which a Linux
	// host treats as a failed connect). By default we grant what the host
	// asks.
	DisableHeaderDigest, DisableDataDigest bool
	// ConnectTimeout bounds the time from accept to a completed Fabrics
	// Connect: the ICReq and the Connect capsule must both arrive in it
	// (default 10 s), so that silent connections do not pile up.
	ConnectTimeout time.Duration
	// MaxDataTransfer is the longest data buffer one command may carry
	// (bytes); it must match the core's TargetConfig.MaxDataTransfer
	// (default nvme.DefaultMaxDataTransfer). Longer SGLs are refused with
	// Invalid Field, so no command makes us allocate more.
	MaxDataTransfer int
	// Logger receives the transport's logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxH2CData == 0 {
		c.MaxH2CData = 256 << 10
	}
	c.MaxH2CData = max(c.MaxH2CData, 4096) &^ 3
	if c.MaxConnections <= 0 {
		c.MaxConnections = 1024
	}
	if c.MaxConnectionsPerAddress <= 0 {
		c.MaxConnectionsPerAddress = 128
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nvmetcp: server closed")

// Server is an NVMe/TCP listener set: it serves any number of listeners
// (the I/O port, the discovery port) for one command core.
type Server struct {
	cfg  Config
	core coreTarget
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]string // value: the peer's IP address
	caps      *netguard.Caps   // MaxConnections and MaxConnectionsPerAddress
	closing   bool
	connWG    sync.WaitGroup

	acceptErrors atomic.Uint64 // of listeners no longer served
}

func newServer(cfg Config, core coreTarget) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg:       cfg,
		core:      core,
		log:       cfg.Logger.With("component", "nvmetcp"),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]string{},
		caps:      netguard.NewCaps(cfg.MaxConnections, cfg.MaxConnectionsPerAddress),
	}
	return s
}

// Serve accepts connections on ln until ln is closed or Shutdown is
// called. Accept errors other than a closed listener are logged and
// retried with backoff (netguard), never returned: a client opening
// connections must not be able to stop the listener. It returns
// ErrServerClosed after Shutdown and nil when ln was closed otherwise.
func (s *Server) Serve(ln net.Listener) error {
	gl := netguard.NewListener(ln, s.log)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[gl] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, gl)
		s.mu.Unlock()
		s.acceptErrors.Add(gl.Errors())
	}()
	for {
		nc, err := gl.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("nvmetcp: accept: %w", err)
		}
		addr := netguard.PeerIP(nc)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		if why := s.caps.Admit(addr); why != "" {
			s.mu.Unlock()
			nc.Close()
			s.caps.LogRefusal(s.log, addr, why)
			continue
		}
		c := newConn(s, nc)
		s.conns[c] = addr
		s.connWG.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	if addr, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.caps.Release(addr)
	}
	s.mu.Unlock()
	s.connWG.Done()
}

// Shutdown stops accepting connections, lets commands in flight finish
// (until ctx expires), then closes every connection (which closes its
// queue in the core) and waits for them to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	var err error
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		busy := int32(0)
		for _, c := range conns {
			busy += c.inflight.Load()
		}
		if busy == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
		}
	}
	for _, c := range conns {
		c.close(errors.New("server shutdown"))
	}
	done := make(chan struct{})
	go func() { s.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		return fmt.Errorf("nvmetcp: shutdown: %w", err)
	}
	return nil
}

// Stats are the server's connection counters, for metrics.
type Stats struct {
	// Connections is the number of open connections.
	Connections int `json:"connections"`
	// RefusedTotal and RefusedPerAddress count connections closed at
	// accept because of MaxConnections and MaxConnectionsPerAddress.
	RefusedTotal      uint64 `json:"refused_total"`
	RefusedPerAddress uint64 `json:"refused_per_address"`
	// AcceptErrors counts failed accepts that were retried.
	AcceptErrors uint64 `json:"accept_errors"`
}

// Stats returns the server's connection counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Connections: len(s.conns), AcceptErrors: s.acceptErrors.Load()}
	for ln := range s.listeners {
		if gl, ok := ln.(*netguard.Listener); ok {
			st.AcceptErrors += gl.Errors()
		}
	}
	s.mu.Unlock()
	st.RefusedTotal, st.RefusedPerAddress = s.caps.Refused()
	return st
}
