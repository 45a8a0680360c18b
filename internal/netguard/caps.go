package netguard

import (
	"log/slog"
	"net"
	"sync/atomic"
)

// Caps admits a server's connections under two caps: one on all its
// connections and one on those from a single remote IP address, so that
// one host cannot use up the whole allowance. The counts are not locked:
// the server calls Admit and Release under the lock that guards its own
// connection set, so admission and its shutdown check are one step.
type Caps struct {
	maxTotal, maxPerAddress int

	total   int
	perAddr map[string]int

	refusedTotal, refusedPerAddr atomic.Uint64
	refuseLog                    Limiter
}

// NewCaps returns caps of maxTotal connections in all and maxPerAddress
// from one address.
func NewCaps(maxTotal, maxPerAddress int) *Caps {
	return &Caps{maxTotal: maxTotal, maxPerAddress: maxPerAddress, perAddr: map[string]int{}, refuseLog: Limiter{Interval: LogInterval}}
}

// Cap names, as Admit reports them and refusals are logged.
const (
	CapTotal      = "max_connections"
	CapPerAddress = "max_connections_per_address"
)

// Admit counts a new connection from addr and returns "", or returns the
// cap it would exceed (CapTotal or CapPerAddress), counting the refusal
// instead.
func (c *Caps) Admit(addr string) string {
	switch {
	case c.total >= c.maxTotal:
		c.refusedTotal.Add(1)
		return CapTotal
	case c.perAddr[addr] >= c.maxPerAddress:
		c.refusedPerAddr.Add(1)
		return CapPerAddress
	}
	c.total++
	c.perAddr[addr]++
	return ""
}

// Release uncounts a connection from addr that Admit admitted.
func (c *Caps) Release(addr string) {
	c.total--
	if c.perAddr[addr]--; c.perAddr[addr] <= 0 {
		delete(c.perAddr, addr)
	}
}

// Refused returns how many connections each cap refused so far. Unlike
// Admit it may be called without the server's lock.
func (c *Caps) Refused() (total, perAddress uint64) {
	return c.refusedTotal.Load(), c.refusedPerAddr.Load()
}

// LogRefusal logs a connection closed at accept because of limit: each
// at debug level, and a warning at most every LogInterval, so that a
// flood of connections does not flood the log as well.
func (c *Caps) LogRefusal(log *slog.Logger, addr, limit string) {
	log.Debug("connection refused", "remote", addr, "limit", limit)
	if ok, n := c.refuseLog.Allow(); ok {
		log.Warn("refusing connections over a limit", "remote", addr, "limit", limit,
			CapTotal, c.maxTotal, CapPerAddress, c.maxPerAddress, "refused_not_logged", n)
	}
}

// PeerIP is a connection's remote IP address, the key of the per-address
// cap (the port differs for every connection).
func PeerIP(nc net.Conn) string {
	a := nc.RemoteAddr()
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}
