package netguard

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// flakyListener fails its first n accepts with err, then hands out conns
// (one end of a pipe each), and returns net.ErrClosed once closed.
type flakyListener struct {
	mu     sync.Mutex
	n      int
	err    error
	calls  int
	closed chan struct{}
	once   sync.Once
}

func newFlaky(n int, err error) *flakyListener {
	return &flakyListener{n: n, err: err, closed: make(chan struct{})}
}

func (f *flakyListener) Accept() (net.Conn, error) {
	select {
	case <-f.closed:
		return nil, net.ErrClosed
	default:
	}
	f.mu.Lock()
	f.calls++
	fail := f.calls <= f.n
	f.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", f.err)}
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func (f *flakyListener) Close() error   { f.once.Do(func() { close(f.closed) }); return nil }
func (f *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3260} }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestListenerRetriesEveryAcceptError(t *testing.T) {
	// EMFILE is "temporary" to net/http, ENOBUFS is not; both must be
	// retried.
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		f := newFlaky(4, errno)
		l := NewListener(f, quiet())
		c, err := l.Accept()
		if err != nil {
			t.Fatalf("%v: Accept = %v, want a connection after the errors", errno, err)
		}
		c.Close()
		if got := l.Errors(); got != 4 {
			t.Errorf("%v: Errors() = %d, want 4", errno, got)
		}
		l.Close()
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%v: Accept after Close = %v, want net.ErrClosed", errno, err)
		}
	}
}

func TestListenerCloseEndsBackoff(t *testing.T) {
	f := newFlaky(1<<30, syscall.EMFILE)
	l := NewListener(f, quiet())
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	time.Sleep(1500 * time.Millisecond) // long enough to reach the 1 s cap
	start := time.Now()
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept = %v, want net.ErrClosed", err)
		}
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Errorf("Accept returned %s after Close, want promptly", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Accept still retrying after Close")
	}
	// Backoff: in 1.5 s an uncapped 5 ms doubling makes about 8 attempts;
	// spinning would make thousands.
	if n := l.Errors(); n < 3 || n > 20 {
		t.Errorf("%d accept attempts in 1.5 s, want exponential backoff (a handful)", n)
	}
}

func TestLimiter(t *testing.T) {
	l := Limiter{Interval: 50 * time.Millisecond}
	if ok, _ := l.Allow(); !ok {
		t.Fatal("first event held back")
	}
	for i := 0; i < 5; i++ {
		if ok, _ := l.Allow(); ok {
			t.Fatal("event within the interval allowed")
		}
	}
	time.Sleep(60 * time.Millisecond)
	ok, n := l.Allow()
	if !ok || n != 5 {
		t.Fatalf("Allow after the interval = %v, %d; want true, 5", ok, n)
	}
}

// failFirst fails the first n accepts of a real listener with errno.
type failFirst struct {
	net.Listener
	mu    sync.Mutex
	n     int
	errno syscall.Errno
}

func (f *failFirst) Accept() (net.Conn, error) {
	f.mu.Lock()
	fail := f.n > 0
	f.n--
	f.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", f.errno)}
	}
	return f.Listener.Accept()
}

// TestHTTPServerKeepsServing: net/http gives up on accept errors it does
// not consider temporary, such as ENOBUFS; behind a Listener it serves on.
// This is why anvil serve wraps the API listener.
func TestHTTPServerKeepsServing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(NewListener(&failFirst{Listener: ln, n: 3, errno: syscall.ENOBUFS}, quiet()))
	}()
	defer srv.Close()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		select {
		case serr := <-done:
			t.Fatalf("GET: %v; Serve returned %v", err, serr)
		default:
			t.Fatalf("GET: %v", err)
		}
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok" {
		t.Fatalf("body %q", body)
	}
}
