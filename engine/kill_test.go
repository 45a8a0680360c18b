package engine

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// killWorkload is the deterministic write sequence of the kill test: write
// i is stamped with id i+1.
func killWorkload(seed uint64, volSize int64, n int) []logEntry {
	rng := rand.New(rand.NewPCG(seed, 99))
	sectors := volSize / simSector
	log := make([]logEntry, n)
	for i := range log {
		ns := 1 + rng.Int64N(64)
		s := rng.Int64N(sectors - ns + 1)
		log[i] = logEntry{off: s * simSector, n: ns * simSector, id: uint64(i + 1)}
	}
	return log
}

const killVolSize = 4 << 20

// TestMain lets the kill test re-execute the test binary as the writer.
func TestMain(m *testing.M) {
	if path := os.Getenv("ANVIL_KILL_CHILD"); path != "" {
		seed, _ := strconv.ParseUint(os.Getenv("ANVIL_KILL_SEED"), 10, 64)
		killChild(path, seed)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// killChild writes the workload, flushing every 20 writes and reporting
// "flushed N" once writes [0, N) are durable, until it is killed.
func killChild(path string, seed uint64) {
	ctx := context.Background()
	v, err := Open(path, Options{Size: killVolSize, UndoSize: 1 << 20, Logger: quietLog, FlushInterval: 3 * time.Millisecond})
	if err != nil {
		fmt.Println("error", err)
		return
	}
	log := killWorkload(seed, killVolSize, 1<<20)
	for i, e := range log {
		p := make([]byte, e.n)
		for k := int64(0); k < e.n/simSector; k++ {
			stampSector(p[k*simSector:], e.id, e.off/simSector+k)
		}
		fua := i%37 == 0
		if err := v.WriteAt(ctx, p, e.off, fua); err != nil {
			fmt.Println("error", err)
			return
		}
		if fua {
			fmt.Println("flushed", i+1)
		}
		if i%20 == 19 {
			if err := v.Flush(ctx); err != nil {
				fmt.Println("error", err)
				return
			}
			fmt.Println("flushed", i+1)
		}
	}
}

// TestProcessKill kills a writing process with SIGKILL at random moments
// and checks that the reopened volume holds a prefix of its writes that
// includes everything it saw flushed. (A process kill keeps the kernel's
// page cache, so this covers the engine's own cache and commit protocol;
// the crash simulator covers power loss.)
func TestProcessKill(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for round := range 4 {
		seed := uint64(time.Now().UnixNano()) + uint64(round)
		path := filepath.Join(t.TempDir(), "kill.img")
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "ANVIL_KILL_CHILD="+path, fmt.Sprintf("ANVIL_KILL_SEED=%d", seed))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		flushed := 0
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// The kill comes at a random moment after the child's first
		// completed flush (a slow machine may take a while to get there).
		var deadline <-chan time.Time
		giveUp := time.After(2 * time.Minute)
	wait:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break wait
				}
				if strings.HasPrefix(l, "error") {
					t.Fatalf("child: %s", l)
				}
				fmt.Sscanf(l, "flushed %d", &flushed)
				if deadline == nil && flushed > 0 {
					deadline = time.After(time.Duration(rand.IntN(600)) * time.Millisecond)
				}
			case <-deadline:
				break wait
			case <-giveUp:
				break wait
			}
		}
		// Whatever the child reported before the kill counts.
		cmd.Process.Kill()
		for l := range lines {
			fmt.Sscanf(l, "flushed %d", &flushed)
		}
		cmd.Wait()
		if flushed == 0 {
			t.Fatalf("round %d: the child flushed nothing before the kill", round)
		}
		v, err := Open(path, Options{Logger: quietLog, UndoSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		img := make([]byte, killVolSize)
		if err := v.ReadAt(context.Background(), img, 0); err != nil {
			t.Fatal(err)
		}
		v.Close()
		log := killWorkload(seed, killVolSize, flushed+200000)
		feasible, err := checkPrefix(img, log, flushed)
		if err != nil {
			t.Fatalf("round %d (seed %d, %d flushed): %v", round, seed, flushed, err)
		}
		t.Logf("round %d: killed after %d flushed writes; state is the prefix %v", round, flushed, feasible)
	}
}
