// Package crashtest kills the real daemon with SIGKILL in the middle of a
// stream of writes from qemu's own iSCSI client (qemu-io), restarts it, and
// checks the engine's promise on what the initiator reads back: the volume
// holds exactly the state after some prefix of the acknowledged writes, and
// that prefix covers every write acknowledged before the last completed
// flush or FUA write. No write is torn.
package crashtest

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

const (
	slotSize = 64 << 10 // each write covers whole 64 KiB slots
	slots    = 256      // of the first 16 MiB of the LUN
	writes   = 400
)

// op is one qemu-io command of the workload.
type op struct {
	flush   bool
	slot    int // first slot written
	n       int // slots written: several make long in-place runs
	pattern byte
	fua     bool
}

func workload(seed uint64) []op {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	var ops []op
	for i := 0; i < writes; i++ {
		n := 1
		if r.IntN(4) == 0 {
			n = 4 + r.IntN(5) // 256-512 KiB
		}
		ops = append(ops, op{slot: r.IntN(slots - n + 1), n: n, pattern: byte(i%251 + 1), fua: r.IntN(13) == 0})
		if r.IntN(10) == 0 {
			ops = append(ops, op{flush: true})
		}
	}
	return ops
}

func (o op) command() string {
	if o.flush {
		return "flush"
	}
	fua := ""
	if o.fua {
		fua = "-f "
	}
	return fmt.Sprintf("write %s-P %d %d %d", fua, o.pattern, o.slot*slotSize, o.n*slotSize)
}

// state is the first 16 MiB after the first n writes of ops applied to
// base, one pattern byte per slot (0: never written).
func state(base [slots]byte, ops []op, n int) [slots]byte {
	s := base
	for _, o := range ops {
		if n == 0 {
			break
		}
		if !o.flush {
			for i := o.slot; i < o.slot+o.n; i++ {
				s[i] = o.pattern
			}
			n--
		}
	}
	return s
}

// durable is how many writes the initiator was told are durable, given that
// acked writes completed: those before the last flush that completed (a
// command after it completed, since qemu-io runs one at a time) or the last
// acknowledged FUA write.
func durable(ops []op, acked int) int {
	d, seen := 0, 0
	for i, o := range ops {
		if o.flush {
			// The flush completed if the next write was acknowledged.
			next := seen
			for _, p := range ops[i+1:] {
				if !p.flush {
					next++
					break
				}
			}
			if next > seen && next <= acked {
				d = seen
			}
			continue
		}
		seen++
		if seen > acked {
			break
		}
		if o.fua {
			d = seen
		}
	}
	return d
}

func TestKillDuringWrites(t *testing.T) {
	harness.NeedTool(t, "qemu-io", "qemu-img", "stdbuf")
	for _, backend := range []string{"file", "mmap"} {
		t.Run(backend, func(t *testing.T) {
			d := harness.Start(t, harness.Options{Args: []string{"--volume-default-backend", backend}})
			var base [slots]byte // a new thin volume reads as zeroes
			for round := 0; round < 3; round++ {
				seed := uint64(round*7 + len(backend))
				killAfter := 40 + int(seed*37)%(writes-80)
				base = crashRound(t, d, seed, killAfter, base)
			}
		})
	}
}

// crashRound runs the workload on a volume holding base, kills the daemon
// after killAfter acknowledged writes, restarts it and checks the result,
// which it returns as the next round's base.
func crashRound(t *testing.T, d *harness.Daemon, seed uint64, killAfter int, base [slots]byte) [slots]byte {
	t.Helper()
	url := "iscsi://" + d.ISCSI + "/" + harness.DemoIQN + "/0"
	ops := workload(seed)
	args := []string{"-oL", "qemu-io", "-f", "raw", "-t", "writeback"}
	for _, o := range ops {
		args = append(args, "-c", o.command())
	}
	args = append(args, url)
	cmd := exec.Command("stdbuf", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		acked  int
		killed = make(chan struct{})
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "wrote ") {
				mu.Lock()
				acked++
				n := acked
				mu.Unlock()
				if n >= killAfter {
					once.Do(func() { close(killed) })
				}
			}
		}
		once.Do(func() { close(killed) })
	}()
	select {
	case <-killed:
	case <-time.After(2 * time.Minute):
		t.Fatalf("qemu-io acknowledged fewer than %d writes in 2 minutes:\n%s", killAfter, stderr.String())
	}
	d.Kill()
	// Let output already written reach us, then stop the client (libiscsi
	// would try to reconnect for ever).
	time.Sleep(200 * time.Millisecond)
	cmd.Process.Kill()
	<-done
	cmd.Wait()
	mu.Lock()
	w := acked
	mu.Unlock()
	if w < killAfter {
		t.Fatalf("only %d writes acknowledged before qemu-io stopped:\n%s", w, stderr.String())
	}

	d.Restart()
	got := readSlots(t, url)
	lo := durable(ops, w)
	hi := min(w+1, writes) // one write may have been in flight at the kill
	for p := hi; p >= lo; p-- {
		if state(base, ops, p) == got {
			t.Logf("seed %d: %d writes acknowledged, %d durable; volume holds the first %d", seed, w, lo, p)
			return got
		}
	}
	want := state(base, ops, lo)
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("seed %d: after kill -9 (%d acknowledged, %d durable) the volume matches no prefix of the acknowledged writes; slot %d holds %d, the durable prefix says %d",
				seed, w, lo, i, got[i], want[i])
		}
	}
	t.Fatalf("seed %d: the volume matches no allowed prefix", seed)
	return got
}

// readSlots reads the first 16 MiB through qemu-img and reduces each slot
// to its pattern byte, failing on a torn slot (mixed bytes).
func readSlots(t *testing.T, url string) [slots]byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "lun.img")
	if msg, err := harness.Run(t.Context(), 2*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, out); err != nil {
		t.Fatalf("read back: %v\n%s", err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var s [slots]byte
	for i := range s {
		slot := b[i*slotSize : (i+1)*slotSize]
		s[i] = slot[0]
		if bytes.Count(slot, slot[:1]) != len(slot) {
			t.Fatalf("slot %d is torn: it mixes patterns (first byte %d)", i, slot[0])
		}
	}
	return s
}
