package engine

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadsNeverTorn races readers, which mostly take the lock-free hit
// path, against everything that changes the cache under them: writes of
// two chunks at once (in place on dirty buffers, or copy-on-write while a
// commit holds the old version), unmaps, commits, and evictions forced by
// a cache far smaller than the volume. Every write fills its two chunks
// with one stamp, so a read of the pair must find a single stamp (or
// zeroes after an unmap) across both chunks: anything else is a read that
// saw part of a write, or memory that was freed and reused under it.
func TestReadsNeverTorn(t *testing.T) {
	ctx := context.Background()
	const pairs = 256 // 2 MiB volume; the cache holds 64 chunks
	v := openTest(t, filepath.Join(t.TempDir(), "v.img"), Options{
		Size: pairs * 2 * ChunkSize, FlushInterval: time.Hour,
		Cache: NewCache(CacheOptions{Size: 64 * ChunkSize}),
	})
	defer v.Close()

	var stamp atomic.Uint64
	fill := func(p []byte, s uint64) {
		for i := 0; i < len(p); i += 8 {
			binary.LittleEndian.PutUint64(p[i:], s)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var seed uint64
	run := func(f func(rng *rand.Rand) error) {
		seed++
		rng := rand.New(rand.NewPCG(seed, 1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := f(rng); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// pick returns one of a few hot pairs, or any pair one time in
	// anywhere: hot pairs are read while cached, dirty and frozen, the
	// others make the cache evict.
	pick := func(rng *rand.Rand, anywhere int) int64 {
		if rng.IntN(anywhere) == 0 {
			return rng.Int64N(pairs)
		}
		return rng.Int64N(8)
	}
	for range 2 {
		p := make([]byte, 2*ChunkSize)
		run(func(rng *rand.Rand) error {
			k := pick(rng, 4)
			if rng.IntN(16) == 0 {
				return v.Unmap(ctx, k*2*ChunkSize, 2*ChunkSize)
			}
			fill(p, stamp.Add(1))
			return v.WriteAt(ctx, p, k*2*ChunkSize, false)
		})
	}
	run(func(*rand.Rand) error {
		time.Sleep(200 * time.Microsecond)
		return v.Flush(ctx)
	})
	var reads atomic.Int64
	for range 2 {
		p := make([]byte, 2*ChunkSize)
		run(func(rng *rand.Rand) error {
			k := pick(rng, 2)
			if err := v.ReadAt(ctx, p, k*2*ChunkSize); err != nil {
				return err
			}
			reads.Add(1)
			first := binary.LittleEndian.Uint64(p)
			for i := 8; i < len(p); i += 8 {
				if got := binary.LittleEndian.Uint64(p[i:]); got != first {
					return fmt.Errorf("pair %d torn: stamp %d at byte 0, %d at byte %d", k, first, got, i)
				}
			}
			return nil
		})
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := v.Stats()
	t.Logf("%d reads checked, %d cache hits, %d misses", reads.Load(), st.CacheHits, st.CacheMisses)
	if reads.Load() < 1000 || st.CacheHits == 0 || st.CacheMisses == 0 {
		t.Fatalf("the race did not happen: %d reads, %d hits, %d misses", reads.Load(), st.CacheHits, st.CacheMisses)
	}
}
