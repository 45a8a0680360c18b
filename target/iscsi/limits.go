package iscsi

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/internal/netguard"
)

// resources holds the server-wide resource accounting: refused
// connections, accept errors retried and the Data-Out buffer budget.
type resources struct {
	// dataOut is the Data-Out buffer memory reserved by all live tasks.
	dataOut atomic.Int64
	// holders counts the initiator addresses holding Data-Out buffers.
	holders atomic.Int64

	dataOutFull   atomic.Uint64
	dataOutStalls atomic.Uint64
	acceptErrors  atomic.Uint64 // of listeners no longer served
}

// ResourceStats are the server's resource counters, for metrics.
type ResourceStats struct {
	// Connections is the number of open connections, logged in or not.
	Connections int `json:"connections"`
	// RefusedTotal and RefusedPerAddress count connections closed at
	// accept because of MaxConnections and MaxConnectionsPerAddress.
	RefusedTotal      uint64 `json:"refused_total"`
	RefusedPerAddress uint64 `json:"refused_per_address"`
	// AcceptErrors counts failed accepts that were retried.
	AcceptErrors uint64 `json:"accept_errors"`
	// DataOutBytes is the Data-Out buffer memory reserved now, and
	// DataOutLimit the bound on it (Config.MaxDataOut).
	DataOutBytes int64 `json:"data_out_bytes"`
	DataOutLimit int64 `json:"data_out_limit"`
	// DataOutFull counts writes answered TASK SET FULL because a Data-Out
	// bound (the session's or the server's) was reached.
	DataOutFull uint64 `json:"data_out_full"`
	// DataOutStalls counts connections dropped for Config.DataOutTimeout.
	DataOutStalls uint64 `json:"data_out_stalls"`
}

// ResourceStats returns the server's resource counters.
func (s *Server) ResourceStats() ResourceStats {
	s.mu.Lock()
	st := ResourceStats{Connections: len(s.conns), AcceptErrors: s.res.acceptErrors.Load()}
	for ln := range s.listeners {
		if gl, ok := ln.(*netguard.Listener); ok {
			st.AcceptErrors += gl.Errors()
		}
	}
	s.mu.Unlock()
	st.RefusedTotal, st.RefusedPerAddress = s.caps.Refused()
	st.DataOutBytes = s.res.dataOut.Load()
	st.DataOutLimit = s.cfg.MaxDataOut
	st.DataOutFull = s.res.dataOutFull.Load()
	st.DataOutStalls = s.res.dataOutStalls.Load()
	return st
}

// peer is the accounting for one initiator IP address.
type peer struct {
	conns   int          // under Server.mu
	dataOut atomic.Int64 // Data-Out buffer memory its tasks hold
}

// reserveDataOut reserves n bytes of Data-Out buffer for a new write on
// connection c of session ss against the session's and the server's
// bounds. It reports false, reserving nothing, if they are exceeded.
//
// Up to MaxDataOut every write that fits is admitted. Past it, and up to a
// quarter more, only initiator addresses that would still hold less than
// an equal share of MaxDataOut among the addresses holding buffers get
// in: a host whose sessions never finish their writes fills the bound,
// then gets TASK SET FULL, while the other hosts' writes go on.
func (s *Server) reserveDataOut(c *conn, ss *session, n int64) bool {
	if ss.dataOut.Add(n) > s.cfg.MaxSessionDataOut {
		ss.dataOut.Add(-n)
		s.res.dataOutFull.Add(1)
		return false
	}
	limit := s.cfg.MaxDataOut
	p := c.peer
	if total := s.res.dataOut.Add(n); total > limit {
		ok := false
		if total <= limit+limit/4 {
			held := p.dataOut.Load()
			holders := s.res.holders.Load()
			if held == 0 {
				holders++
			}
			ok = held+n <= limit/max(holders, 1)
		}
		if !ok {
			s.res.dataOut.Add(-n)
			ss.dataOut.Add(-n)
			s.res.dataOutFull.Add(1)
			return false
		}
	}
	if p.dataOut.Add(n) == n {
		s.res.holders.Add(1)
	}
	return true
}

// releaseDataOut returns a reservation made by reserveDataOut.
func (s *Server) releaseDataOut(c *conn, ss *session, n int64) {
	if c.peer.dataOut.Add(-n) == 0 {
		s.res.holders.Add(-1)
	}
	ss.dataOut.Add(-n)
	s.res.dataOut.Add(-n)
}

// watchDataOut drops the connection when a write that holds a Data-Out
// buffer has made no progress for DataOutTimeout: no Data-Out arrived for
// it and it did not start. Writes whose data is complete but which wait
// for earlier tasks (task attributes) do not count: that wait is the
// target's. Progress is sampled every quarter of the timeout, so the data
// path needs no clock reads.
func (c *conn) watchDataOut() {
	defer c.bg.Done()
	timeout := c.srv.cfg.DataOutTimeout
	tick := time.NewTicker(max(timeout/4, 10*time.Millisecond))
	defer tick.Stop()
	type sample struct {
		progress uint32
		since    time.Time
	}
	seen := map[*task]sample{}
	s := c.sess
	for {
		select {
		case <-c.closed:
			return
		case now := <-tick.C:
			var stalled *task
			var idle time.Duration
			s.mu.Lock()
			for t := range seen {
				if s.tasks[t.itt] != t {
					delete(seen, t)
				}
			}
			for _, t := range s.tasks {
				if t.reserved.Load() == 0 || !t.st.Waiting() || t.st.Gated() {
					delete(seen, t)
					continue
				}
				p := t.progress.Load()
				v, ok := seen[t]
				if !ok || v.progress != p {
					seen[t] = sample{p, now}
					continue
				}
				if d := now.Sub(v.since); d >= timeout {
					stalled, idle = t, d
					break
				}
			}
			s.mu.Unlock()
			if stalled != nil {
				c.srv.res.dataOutStalls.Add(1)
				c.log.Warn("iscsi: write stalled waiting for Data-Out; dropping the connection",
					"tsih", s.tsih, "itt", fmt.Sprintf("%#x", stalled.itt), "idle", idle.String(),
					"expected_bytes", stalled.edtl, "data_out_timeout", timeout.String())
				c.close(fmt.Errorf("Data-Out for ITT %#x stalled for %s", stalled.itt, idle.Round(time.Millisecond)))
				return
			}
		}
	}
}
