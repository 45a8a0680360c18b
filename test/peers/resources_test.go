package peers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/iscsi/iscsitest"
	"github.com/anvilproject/anvil/test/harness"
)

// procStatus returns a field of /proc/PID/status in KiB (VmRSS, VmHWM).
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// flood opens n idle TCP connections to addr from each of the loopback
// addresses srcs and returns them; the caller closes them.
func flood(t *testing.T, addr string, n int, srcs ...string) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for _, src := range srcs {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		for i := 0; i < n; i++ {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("flood connection %d from %s: %v", i, src, err)
			}
			conns = append(conns, c)
		}
	}
	return conns
}

// closedByTarget counts the connections the target has closed: a read
// returns EOF or a reset within d instead of timing out.
func closedByTarget(conns []net.Conn, d time.Duration) int {
	var wg sync.WaitGroup
	var n atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(d))
			var b [1]byte
			_, err := c.Read(b[:])
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(n.Load())
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// inquiryOK runs a standard INQUIRY on a logged-in raw session.
func inquiryOK(r *iscsitest.Conn) error {
	st, err := r.Read([]byte{0x12, 0, 0, 0, 36, 0}, 36)
	if err != nil {
		return err
	}
	if st.Status != 0 && st.Status != 0x02 { // CHECK CONDITION: a unit attention
		return fmt.Errorf("INQUIRY status %#x", st.Status)
	}
	return nil
}

// verifiedIO writes a 64 KiB block whose bytes name seed at LBA lba of a
// logged-in raw session, reads it back and compares, so a flood test
// checks that the established session still moves correct data, not only
// that it answers.
func verifiedIO(r *iscsitest.Conn, lba uint32, seed byte) error {
	data := ioPattern(seed)
	cdb := iscsitest.CDB10(0x2a, lba, uint16(len(data)/512))
	st, err := r.Write(cdb, data, 8192)
	if err == nil && st.Status == 0x02 && len(st.Sense) > 2 && st.Sense[2]&0xf == 0x06 {
		// The session's first media command reports the power-on unit
		// attention; it is not the command's result.
		st, err = r.Write(cdb, data, 8192)
	}
	if err != nil {
		return fmt.Errorf("WRITE(10): %w", err)
	}
	if st.Status != 0 {
		return fmt.Errorf("WRITE(10) status %#x, sense % x", st.Status, st.Sense)
	}
	return readBack(r, lba, seed)
}

func ioPattern(seed byte) []byte {
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = seed ^ byte(i) ^ byte(i>>8)
	}
	return data
}

// readBack checks that the 64 KiB at lba hold verifiedIO's block for seed.
func readBack(r *iscsitest.Conn, lba uint32, seed byte) error {
	data := ioPattern(seed)
	blocks := uint16(len(data) / 512)
	st, err := r.Read(iscsitest.CDB10(0x28, lba, blocks), uint32(len(data)))
	if err != nil {
		return fmt.Errorf("READ(10): %w", err)
	}
	if st.Status != 0 || !bytes.Equal(st.Data, data) {
		return fmt.Errorf("READ(10) status %#x: %d bytes read back differ from the %d written", st.Status, len(st.Data), len(data))
	}
	return nil
}

// TestFDFloodUnderLowLimit runs the daemon with 256 file descriptors (hard
// limit; the soft one starts at 128) and
// floods it with 300 idle TCP connections, twice. From one address, the
// per-address cap refuses most of them on accept, and libiscsi still logs
// in during the flood. From five addresses, under the total cap, the
// daemon runs out of descriptors: accept fails with EMFILE, which must be
// retried rather than end the portal (it used to stop the whole daemon),
// so a session established before keeps working (its writes read back)
// and new logins work once the flood is gone; the daemon's peak RSS stays
// bounded throughout.
func TestFDFloodUnderLowLimit(t *testing.T) {
	harness.NeedTool(t, "iscsi-inq", "iscsi-readcapacity16", "prlimit", "qemu-io")
	// Soft limit 128, hard 256: the daemon raises its soft limit to 256.
	d := harness.Start(t, harness.Options{Prefix: []string{"prlimit", "--nofile=128:256"}})
	url := lunURL(d)
	if !strings.Contains(d.Log(), `msg="open file limit" soft=256 hard=256`) {
		t.Fatalf("daemon did not raise its descriptor limit to the hard limit 256:\n%s", tail(d.Log(), 20))
	}

	established, err := iscsitest.Dial(d.ISCSI)
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if err := rawLogin(established, "iqn.2026-12.io.anvil:established", harness.DemoIQN); err != nil {
		t.Fatal(err)
	}
	if err := inquiryOK(established); err != nil {
		t.Fatal(err)
	}

	// One flooding host: the per-address cap (64) refuses the rest.
	conns := flood(t, d.ISCSI, 300, "127.0.0.2")
	refused := closedByTarget(conns, 2*time.Second)
	if refused < 300-64 {
		t.Errorf("%d of 300 connections from one address refused, want at least %d (cap 64 per address)", refused, 300-64)
	}
	run(t, d, "iscsi-inq", url)
	run(t, d, "iscsi-readcapacity16", url)
	if err := inquiryOK(established); err != nil {
		t.Fatalf("established session during the flood: %v", err)
	}
	if err := verifiedIO(established, 0, 1); err != nil {
		t.Fatalf("established session during the flood: %v", err)
	}
	closeAll(conns)

	// Five flooding hosts, 60 each: within every cap, beyond the
	// descriptors.
	conns = flood(t, d.ISCSI, 60, "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.Log(), "accept failed; retrying") {
		if time.Now().After(deadline) || !d.Running() {
			closeAll(conns)
			t.Fatalf("the flood did not make accept fail (running %v); log tail:\n%s", d.Running(), tail(d.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // several retries at the 1 s backoff cap
	if !d.Running() {
		t.Fatalf("daemon exited on EMFILE; log tail:\n%s", tail(d.Log(), 20))
	}
	if err := inquiryOK(established); err != nil {
		t.Fatalf("established session while accept fails: %v\n%s", err, tail(d.Log(), 20))
	}
	if err := verifiedIO(established, 1024, 2); err != nil {
		t.Fatalf("established session while accept fails: %v\n%s", err, tail(d.Log(), 20))
	}
	closeAll(conns)

	// With the descriptors back, new logins work.
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, err := harness.Run(context.Background(), 20*time.Second, "iscsi-inq", url)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("iscsi-inq after the flood: %v\n%s\nlog tail:\n%s", err, out, tail(d.Log(), 20))
		}
		time.Sleep(500 * time.Millisecond)
	}
	run(t, d, "iscsi-readcapacity16", url)
	if err := inquiryOK(established); err != nil {
		t.Fatalf("established session after the flood: %v", err)
	}
	// What was written while accept failed is still there.
	if err := readBack(established, 1024, 2); err != nil {
		t.Fatalf("established session after the flood: %v", err)
	}
	// A new initiator writes and reads back data too.
	run(t, d, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 1M", "-c", "read -P 0x5a 1M 1M", url)
	// Two floods of idle connections cost descriptors, not memory.
	const rssBound = 256 << 10 // KiB
	if hwm, err := procStatus(d.PID(), "VmHWM"); err != nil {
		t.Fatal(err)
	} else if hwm > rssBound {
		t.Errorf("daemon peak RSS %d KiB through the floods, want under %d KiB", hwm, rssBound)
	}
	// The API went through the same descriptor shortage.
	resp, err := http.Get("http://" + d.API + "/api/v1/health")
	if err != nil {
		t.Fatalf("API after the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("API health after the flood: %s", resp.Status)
	}
	stopClean(t, d)
}

// withholder is a hostile initiator: it keeps writes outstanding and
// answers every R2T but holds back the last 512 bytes of each write, so
// the target keeps a buffer for data that never comes. When the target
// drops the connection, it logs in again.
type withholder struct {
	addr, src, name string
	outstanding     int
	writeLen        uint32

	// mu serializes writes to the connection and guards the sequence
	// numbers: retries are issued from timers while the session's loop
	// reads, so they are kept here rather than in the Conn, whose Recv
	// updates its own ExpStatSN unlocked.
	mu                 sync.Mutex
	r                  *iscsitest.Conn
	itt, cmdSN, statSN uint32

	logins, fulls, drops atomic.Int64
}

// send sends a request header with the current ExpStatSN.
func (w *withholder) send(h *iscsitest.BHS, data []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	h.SetU32(28, w.statSN)
	return w.r.Send(h, nil, data)
}

// issue sends one WRITE(10) of writeLen bytes with no immediate data.
func (w *withholder) issue(lba uint32) error {
	var h iscsitest.BHS
	h[0] = iscsitest.OpSCSICmd
	h[1] = iscsitest.FlagFinal | iscsitest.FlagWrite | iscsitest.AttrSimple
	w.mu.Lock()
	w.itt++
	h.SetITT(w.itt)
	h.SetU32(24, w.cmdSN)
	w.cmdSN++
	w.mu.Unlock()
	h.SetU32(20, w.writeLen)
	copy(h[32:], iscsitest.CDB10(0x2a, lba, uint16(w.writeLen/512)))
	return w.send(&h, nil)
}

// session runs one login until the connection ends or ctx is done.
func (w *withholder) session(ctx context.Context) error {
	r, err := iscsitest.DialFrom(w.src, w.addr)
	if err != nil {
		return err
	}
	defer r.Close()
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	if err := rawLogin(r, w.name, harness.DemoIQN); err != nil {
		return err
	}
	w.logins.Add(1)
	w.mu.Lock()
	w.r, w.itt, w.cmdSN, w.statSN = r, r.ITT, r.CmdSN, r.ExpStatSN
	w.mu.Unlock()
	// Far from the data the legitimate writer checks (which is at LBA 0).
	lba := func(i int) uint32 { return uint32(1<<20 + i%64*int(w.writeLen/512)) }
	for i := 0; i < w.outstanding; i++ {
		if err := w.issue(lba(i)); err != nil {
			return err
		}
	}
	seg := make([]byte, 64<<10)
	for n := w.outstanding; ; n++ {
		p, err := r.Recv(time.Minute)
		if err != nil {
			return err
		}
		switch p.Opcode() {
		case iscsitest.OpR2T:
			ttt, off, length := p.BHS.U32(20), p.BHS.U32(40), p.BHS.U32(44)
			end := off + length
			if end == w.writeLen {
				end -= 512 // the last 512 bytes never come
			}
			for sn, o := uint32(0), off; o < end; sn++ {
				m := min(uint32(len(seg)), end-o)
				var h iscsitest.BHS
				h[0] = iscsitest.OpDataOut
				if o+m == off+length {
					h[1] = iscsitest.FlagFinal
				}
				h.SetITT(p.BHS.ITT())
				h.SetU32(20, ttt)
				h.SetU32(36, sn)
				h.SetU32(40, o)
				if err := w.send(&h, seg[:m]); err != nil {
					return err
				}
				o += m
			}
		case iscsitest.OpSCSIResp:
			w.mu.Lock()
			w.statSN = p.BHS.StatSN() + 1
			w.mu.Unlock()
			if p.BHS[3] == 0x28 { // TASK SET FULL: try again a little later
				w.fulls.Add(1)
				time.AfterFunc(50*time.Millisecond, func() { w.issue(lba(n)) })
				continue
			}
			if err := w.issue(lba(n)); err != nil {
				return err
			}
		}
	}
}

func (w *withholder) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := w.session(ctx); err != nil && ctx.Err() == nil {
			w.drops.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestDataOutWithholdingFlood: four sessions from another host keep 32
// writes of 4 MiB each outstanding and never send their last 512 bytes
// (512 MiB of buffers they would pin with only per-session bounds), while
// qemu-io writes and verifies data. The daemon's Data-Out budget (32 MiB)
// and stall timeout (2 s) must keep its peak RSS under a bound, and the
// legitimate writes must succeed.
func TestDataOutWithholdingFlood(t *testing.T) {
	harness.NeedTool(t, "qemu-io")
	const rssBound = 256 << 10 // KiB
	d := harness.Start(t, harness.Options{Args: []string{
		"--cache-size", "67108864",
		"--iscsi-data-out-budget", "33554432",
		"--iscsi-data-out-timeout", "2s",
	}})
	pid := d.PID()
	url := lunURL(d)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var hostile []*withholder
	for i := 0; i < 4; i++ {
		w := &withholder{addr: d.ISCSI, src: "127.0.0.2", name: fmt.Sprintf("iqn.2026-12.io.anvil:withholder%d", i), outstanding: 32, writeLen: 4 << 20}
		hostile = append(hostile, w)
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()

	var peakRSS int64
	sample := func() {
		if v, err := procStatus(pid, "VmRSS"); err == nil {
			peakRSS = max(peakRSS, v)
		}
	}
	time.Sleep(time.Second) // let the flood fill the budget
	start := time.Now()
	writes := 0
	for i := 0; time.Since(start) < 12*time.Second; i++ {
		sample()
		pat := fmt.Sprintf("0x%02x", 0x30+i%64)
		off := fmt.Sprintf("%d", (i%8)<<22)
		run(t, d, "qemu-io", "-f", "raw", "-c", "write -P "+pat+" "+off+" 4M", "-c", "read -P "+pat+" "+off+" 4M", url)
		writes++
		sample()
	}
	hwm, err := procStatus(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	var logins, fulls, drops int64
	for _, w := range hostile {
		logins += w.logins.Load()
		fulls += w.fulls.Load()
		drops += w.drops.Load()
	}
	t.Logf("daemon VmRSS peak sampled %d KiB, VmHWM %d KiB; %d verified 4 MiB writes; withholders: %d logins, %d TASK SET FULL, %d connections lost",
		peakRSS, hwm, writes, logins, fulls, drops)
	if logins < 4 {
		t.Fatalf("only %d withholder logins; the flood did not run", logins)
	}
	if hwm > rssBound {
		t.Errorf("daemon peak RSS %d KiB, want under %d KiB with a 32 MiB Data-Out budget and a 64 MiB cache", hwm, rssBound)
	}
	if drops == 0 {
		t.Errorf("no withholder connection was dropped in 12 s with a 2 s Data-Out timeout")
	}
	if !d.Running() {
		t.Fatalf("daemon exited; log tail:\n%s", tail(d.Log(), 20))
	}
	cancel()
	wg.Wait()
	stopClean(t, d)
}
