package peers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
	"github.com/anvilproject/anvil/test/harness"
)

// The soak test runs the daemon for a bounded time under a mix of hostile
// clients, API churn and verified I/O from a real initiator (qemu-io), and
// then checks that no acknowledged write was lost, the daemon never
// restarted, and its memory stayed bounded.
//
// The hostile clients come from other loopback addresses (127.0.0.2 and
// up) than the legitimate ones (127.0.0.1), as they would from other hosts,
// so per-address limits hit them and not the verified session.
//
// ANVIL_SOAK_DURATION sets how long the mix runs (default 90s; the test
// suite runs it for two minutes).

const (
	soakSlot  = 64 << 10
	soakSlots = 512 // the first 32 MiB of the demo LUN
	// soakCache is the daemon's cache budget; RSS must stay well under
	// soakCache plus soakRSSSlack whatever the hostile clients do.
	soakCache    = 128 << 20
	soakRSSSlack = 384 << 20
)

func soakDuration(t *testing.T) time.Duration {
	s := os.Getenv("ANVIL_SOAK_DURATION")
	if s == "" {
		return 90 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > 10*time.Minute {
		t.Fatalf("ANVIL_SOAK_DURATION=%q: want a duration up to 10m", s)
	}
	return d
}

func TestSoak(t *testing.T) {
	harness.NeedTool(t, "qemu-io")
	dur := soakDuration(t)
	d := harness.Start(t, harness.Options{Args: []string{
		"--cache-size", strconv.Itoa(soakCache),
		"--iscsi-nop-interval", "5s",
	}})
	pid := d.PID()
	api := newSoakAPI(t, d)

	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var (
		wg       sync.WaitGroup
		failures = make(chan string, 64)
		maxRSS   atomic.Int64
	)
	fail := func(format string, args ...any) {
		select {
		case failures <- fmt.Sprintf(format, args...):
		default:
		}
	}
	model := &soakModel{}
	run := func(name string, f func(ctx context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				fail("%s: %v", name, err)
				cancel()
			}
		}()
	}
	run("verified I/O", func(ctx context.Context) error { return model.verifiedIO(ctx, d, rand.New(rand.NewPCG(1, 2))) })
	run("API churn", func(ctx context.Context) error { return api.churn(ctx) })
	run("connection flood", func(ctx context.Context) error { return connectionFlood(ctx, d.ISCSI, "127.0.0.2") })
	run("garbage", func(ctx context.Context) error { return garbageClients(ctx, d.ISCSI, "127.0.0.3") })
	for i := 0; i < 4; i++ {
		// 48 writes of 1 MiB outstanding per session: together far more
		// than the cache budget, so only a global bound keeps RSS down.
		w := &withholder{addr: d.ISCSI, src: "127.0.0.4", name: fmt.Sprintf("iqn.2026-12.io.anvil:soak-withholder%d", i), outstanding: 48, writeLen: 1 << 20}
		run("data-out withholding", func(ctx context.Context) error { w.run(ctx); return nil })
	}
	run("bad API tokens", func(ctx context.Context) error { return api.badTokens(ctx, "127.0.0.5") })
	run("memory", func(ctx context.Context) error {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			kib, err := procStatus(pid, "VmRSS")
			if err != nil {
				return fmt.Errorf("daemon gone: %w", err)
			}
			rss := kib << 10
			if rss > maxRSS.Load() {
				maxRSS.Store(rss)
			}
		}
	})
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	if !d.Running() || d.PID() != pid {
		t.Fatalf("the daemon did not survive the soak:\n%s", tail(d.Log(), 40))
	}
	if rss := maxRSS.Load(); rss > soakCache+soakRSSSlack {
		t.Errorf("daemon RSS peaked at %d MiB, bound %d MiB", rss>>20, (soakCache+soakRSSSlack)>>20)
	}
	t.Logf("soak: %s, %d verified writes, %d verified reads, %d API cycles, peak RSS %d MiB",
		dur, model.writes, model.reads, api.cycles.Load(), maxRSS.Load()>>20)
	if model.writes < 50 {
		t.Errorf("only %d verified writes in %s: the legitimate session was starved", model.writes, dur)
	}

	// Every acknowledged write is still there after a clean restart.
	stopClean(t, d)
	d.Restart()
	if err := model.verifyAll(d); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

// soakModel tracks which pattern each slot holds after acknowledged writes.
type soakModel struct {
	slots         [soakSlots]byte
	writes, reads int
}

// verifiedIO runs batches of qemu-io writes and pattern-checked reads on
// the demo LUN until ctx ends.
func (m *soakModel) verifiedIO(ctx context.Context, d *harness.Daemon, r *rand.Rand) error {
	url := lunURL(d)
	for ctx.Err() == nil {
		var args []string
		next := m.slots
		var written, read int
		for i := 0; i < 16; i++ {
			s := r.IntN(soakSlots)
			p := byte(1 + r.IntN(250))
			args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", p, s*soakSlot, soakSlot))
			next[s] = p
			written++
			if r.IntN(4) == 0 {
				args = append(args, "-c", "flush")
			}
		}
		for i := 0; i < 8; i++ {
			s := r.IntN(soakSlots)
			args = append(args, "-c", fmt.Sprintf("read -P %d %d %d", next[s], s*soakSlot, soakSlot))
			read++
		}
		out, err := qemuIO(url, args, 2*time.Minute)
		if err != nil {
			return err
		}
		if n := strings.Count(out, "wrote "); n != written {
			return fmt.Errorf("qemu-io acknowledged %d of %d writes:\n%s", n, written, tail(out, 20))
		}
		m.slots = next
		m.writes += written
		m.reads += read
	}
	return nil
}

// verifyAll reads every slot back and compares it with the model.
func (m *soakModel) verifyAll(d *harness.Daemon) error {
	var args []string
	for s, p := range m.slots {
		args = append(args, "-c", fmt.Sprintf("read -P %d %d %d", p, s*soakSlot, soakSlot))
	}
	_, err := qemuIO(lunURL(d), args, 5*time.Minute)
	return err
}

// qemuIO runs qemu-io commands on url; a failed or mismatched read or a
// failed write is an error.
func qemuIO(url string, cmds []string, timeout time.Duration) (string, error) {
	args := append([]string{"-f", "raw", "-t", "writeback"}, cmds...)
	args = append(args, url)
	out, err := harness.Run(context.Background(), timeout, "qemu-io", args...)
	if err != nil {
		return out, fmt.Errorf("qemu-io: %v\n%s", err, tail(out, 20))
	}
	for _, bad := range []string{"Pattern verification failed", "failed:", "Input/output error"} {
		if strings.Contains(out, bad) {
			return out, fmt.Errorf("qemu-io reported %q:\n%s", bad, tail(out, 20))
		}
	}
	return out, nil
}

// dialTCPFrom opens a TCP connection to addr from the loopback address src.
func dialTCPFrom(src, addr string) (net.Conn, error) {
	r, err := iscsitest.DialFrom(src, addr)
	if err != nil {
		return nil, err
	}
	return r.NetConn(), nil
}

// connectionFlood keeps opening idle connections from src in waves of a
// few hundred, holds them for a while and drops them, as a port scanner or
// a misbehaving client would.
func connectionFlood(ctx context.Context, addr, src string) error {
	for ctx.Err() == nil {
		var conns []net.Conn
		for i := 0; i < 300 && ctx.Err() == nil; i++ {
			c, err := dialTCPFrom(src, addr)
			if err != nil {
				break // refused or out of ports: fine, the target defends itself
			}
			conns = append(conns, c)
		}
		sleepCtx(ctx, 3*time.Second)
		for _, c := range conns {
			c.Close()
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return nil
}

// garbageClients send random bytes, truncated headers and absurd data
// segment lengths before and after login; each connection must be closed by
// the target (or rejected) without affecting anybody else.
func garbageClients(ctx context.Context, addr, src string) error {
	r := rand.New(rand.NewPCG(7, 7))
	for ctx.Err() == nil {
		c, err := dialTCPFrom(src, addr)
		if err != nil {
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		var b []byte
		switch r.IntN(3) {
		case 0: // random bytes
			b = make([]byte, 48+r.IntN(4096))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
		case 1: // a login request that claims a 16 MiB data segment
			b = make([]byte, iscsitest.BHSLen)
			b[0] = iscsitest.FlagImmediate | iscsitest.OpLoginReq
			b[5], b[6], b[7] = 0xff, 0xff, 0xff
		case 2: // half a header, then silence
			b = make([]byte, 20)
			b[0] = iscsitest.FlagImmediate | iscsitest.OpLoginReq
		}
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		io.Copy(io.Discard, c)
		c.Close()
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// soakAPI drives the REST API.
type soakAPI struct {
	base, token string
	client      *http.Client
	cycles      atomic.Int64
}

func newSoakAPI(t *testing.T, d *harness.Daemon) *soakAPI {
	a := &soakAPI{base: "http://" + d.API, client: &http.Client{Timeout: 30 * time.Second}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			a.token = string(bytes.TrimSpace(b))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no api.token: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return a
}

func (a *soakAPI) call(method, path string, body any, want ...int) error {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	for _, w := range want {
		if resp.StatusCode == w {
			return nil
		}
	}
	return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, msg)
}

// churn creates, maps, resizes, unmaps and deletes volumes and targets in
// a loop, the way an orchestrator does.
func (a *soakAPI) churn(ctx context.Context) error {
	for i := 0; ctx.Err() == nil; i++ {
		vol := fmt.Sprintf("soak%d", i%3)
		iqn := fmt.Sprintf("iqn.2026-12.io.anvil:soak%d", i%3)
		steps := []func() error{
			func() error {
				return a.call("POST", "/api/v1/volumes", map[string]any{"name": vol, "size_bytes": 64 << 20}, 201)
			},
			func() error { return a.call("POST", "/api/v1/targets", map[string]any{"iqn": iqn}, 201) },
			func() error {
				return a.call("POST", "/api/v1/targets/"+iqn+"/luns", map[string]any{"lun": 0, "volume": vol}, 200, 201)
			},
			func() error {
				return a.call("PATCH", "/api/v1/volumes/"+vol, map[string]any{"size_bytes": 128 << 20}, 200)
			},
			func() error { return a.call("GET", "/api/v1/volumes", nil, 200) },
			func() error { return a.call("DELETE", "/api/v1/targets/"+iqn+"/luns/0", nil, 200, 204) },
			func() error { return a.call("DELETE", "/api/v1/targets/"+iqn, nil, 200, 204) },
			func() error { return a.call("DELETE", "/api/v1/volumes/"+vol, nil, 200, 204) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		// Malformed requests get a 4xx, never a 5xx.
		if err := a.call("POST", "/api/v1/volumes", map[string]any{"name": "", "size_bytes": -1}, 400); err != nil {
			return err
		}
		a.cycles.Add(1)
	}
	return nil
}

// badTokens sends requests with wrong tokens from src.
func (a *soakAPI) badTokens(ctx context.Context, src string) error {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return dl.DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := 0; ctx.Err() == nil; i++ {
		req, _ := http.NewRequest("GET", a.base+"/api/v1/volumes", nil)
		req.Header.Set("Authorization", fmt.Sprintf("Bearer guess-%d", i))
		resp, err := c.Do(req)
		if err != nil {
			sleepCtx(ctx, 50*time.Millisecond)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 && resp.StatusCode != 429 {
			return fmt.Errorf("a wrong token got %d", resp.StatusCode)
		}
		sleepCtx(ctx, 20*time.Millisecond)
	}
	return nil
}
