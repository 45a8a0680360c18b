// Package netguard keeps network front ends serving when the host runs
// short of resources: a listener that retries failed accepts instead of
// giving up, and a limiter that keeps repeated warnings from flooding the
// log.
package netguard

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Backoff bounds for Listener: the first retry waits MinRetryDelay, each
// further one twice as long, up to MaxRetryDelay.
const (
	MinRetryDelay = 5 * time.Millisecond
	MaxRetryDelay = time.Second
)

// LogInterval is how often Listener logs accept errors at most.
const LogInterval = 10 * time.Second

// Listener wraps a net.Listener so that Accept returns an error only once
// the listener is closed. Any other accept error (EMFILE and ENFILE when
// the process or the host is out of file descriptors, ENOBUFS, ENOMEM,
// ECONNABORTED...) is counted, logged at most once per LogInterval and
// retried with exponential backoff: such errors are about the moment, and
// a server that stopped on them would let one client that opens many
// connections take the whole daemon down.
type Listener struct {
	net.Listener
	log     *slog.Logger
	limiter Limiter

	done      chan struct{}
	closeOnce sync.Once
	errs      atomic.Uint64
}

// NewListener wraps ln. log receives the rate-limited warnings.
func NewListener(ln net.Listener, log *slog.Logger) *Listener {
	return &Listener{
		Listener: ln,
		log:      log,
		limiter:  Limiter{Interval: LogInterval},
		done:     make(chan struct{}),
	}
}

// Accept waits for the next connection. It returns an error only when the
// listener was closed (the error then matches net.ErrClosed).
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			return c, nil
		}
		if l.closed() {
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		delay = min(max(2*delay, MinRetryDelay), MaxRetryDelay)
		l.errs.Add(1)
		if ok, suppressed := l.limiter.Allow(); ok {
			l.log.Warn("accept failed; retrying", "addr", l.Addr().String(), "err", err.Error(),
				"retry_in", delay.String(), "errors_not_logged", suppressed)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.done:
			t.Stop()
		}
	}
}

// Close closes the listener and ends a retry in progress.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

func (l *Listener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// Errors returns how many accept errors have been retried.
func (l *Listener) Errors() uint64 { return l.errs.Load() }

// Limiter lets one event through per Interval and counts the ones it
// holds back. The zero value with Interval set is ready to use; it is safe
// for concurrent use.
type Limiter struct {
	// Interval is the least time between two allowed events.
	Interval time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// Allow reports whether the event may be logged now and, if so, how many
// events were held back since the last allowed one.
func (l *Limiter) Allow() (ok bool, suppressed int) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.Interval {
		l.suppressed++
		return false, 0
	}
	l.last = now
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
