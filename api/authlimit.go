package api

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// DefaultAuthFailuresPerMinute is how many failed authentications a client
// address may make per minute before it is refused for authBlock.
const DefaultAuthFailuresPerMinute = 10

// authBlock is how long a client address that used up its failure budget
// is refused. A variable so tests need not wait a minute.
var authBlock = time.Minute

// maxAuthClients bounds the failure table: past it, idle entries are
// dropped, and if none are idle the table is cleared rather than grown.
const maxAuthClients = 4096

// authLimiter counts failed authentications per client address. Only
// failures use up the budget, so clients with the right token are never
// slowed; a blocked address is refused before its token is even looked at,
// since answering would still tell a guesser whether the guess was right.
type authLimiter struct {
	perMinute int
	mu        sync.Mutex
	clients   map[string]*authClient
}

type authClient struct {
	failures     *rate.Limiter
	blockedUntil time.Time
}

func newAuthLimiter(perMinute int) *authLimiter {
	if perMinute <= 0 {
		perMinute = DefaultAuthFailuresPerMinute
	}
	return &authLimiter{perMinute: perMinute, clients: map[string]*authClient{}}
}

// blocked returns how long addr is still refused, or 0.
func (l *authLimiter) blocked(addr string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.clients[addr]; ok && now.Before(c.blockedUntil) {
		return c.blockedUntil.Sub(now)
	}
	return 0
}

// fail records a failed authentication from addr and reports whether it
// used up the address's budget (the address is blocked from now on).
func (l *authLimiter) fail(addr string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.clients[addr]
	if !ok {
		if len(l.clients) >= maxAuthClients {
			l.pruneLocked(now)
		}
		c = &authClient{failures: rate.NewLimiter(rate.Limit(float64(l.perMinute)/60), l.perMinute)}
		l.clients[addr] = c
	}
	if c.failures.AllowN(now, 1) {
		return false
	}
	c.blockedUntil = now.Add(authBlock)
	return true
}

func (l *authLimiter) pruneLocked(now time.Time) {
	for a, c := range l.clients {
		if now.After(c.blockedUntil) && c.failures.TokensAt(now) >= float64(l.perMinute) {
			delete(l.clients, a)
		}
	}
	if len(l.clients) >= maxAuthClients {
		clear(l.clients)
	}
}

// clientAddr is the address of the peer itself: X-Forwarded-For and
// friends are set by the client, so trusting them would let a guesser pick
// a fresh address for every attempt.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// tooManyFailures answers a blocked client.
func tooManyFailures(c echo.Context, wait time.Duration) error {
	c.Response().Header().Set("Retry-After", strconv.Itoa(int(wait.Round(time.Second)/time.Second)+1))
	return &apiError{status: http.StatusTooManyRequests, msg: "too many failed authentications from this address; try again later"}
}

// securityHeaders keeps the UI and API out of other sites' frames (click-
// jacking) and stops browsers from sniffing a JSON or text answer into
// something executable.
func securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		// The UI's handler replaces this with its fuller policy, which
		// carries the same frame-ancestors directive.
		h.Set("Content-Security-Policy", "frame-ancestors 'none'")
		return next(c)
	}
}
