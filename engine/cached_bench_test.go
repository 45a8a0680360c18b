package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Benchmarks comparing the crash-consistent engine (CachedVolume) with the
// plain pread/pwrite engine (FileVolume). Run them together, e.g.
//
//	go test -run '^$' -bench . -benchtime 2s ./engine/
//
// and compare each cached/plain pair in the same run.

type volOpener func(b *testing.B, size int64, wceOff bool) Volume

func openPlain(b *testing.B, size int64, wceOff bool) Volume {
	v, err := OpenFile(filepath.Join(b.TempDir(), "plain.img"), FileOptions{Name: "plain", BlockSize: 512, Size: size, WriteCacheOff: wceOff})
	if err != nil {
		b.Fatal(err)
	}
	return v
}

var warmOnce sync.Once

func openCached(opts Options) volOpener {
	return func(b *testing.B, size int64, wceOff bool) Volume {
		warmOnce.Do(func() { warmSlab(1 << 30) })
		o := opts
		o.Size, o.WriteCacheOff, o.Logger = size, wceOff, quietLog
		if o.Cache == nil {
			o.Cache = NewCache(CacheOptions{})
		}
		v, err := Open(filepath.Join(b.TempDir(), "cached.img"), o)
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
}

var engines = []struct {
	name string
	open volOpener
}{
	{"plain", openPlain},
	{"cached", openCached(Options{FlushInterval: 5 * time.Second})},
	{"cached-mmap", openCached(Options{FlushInterval: 5 * time.Second, Backend: BackendMmap})},
}

// BenchmarkSeqWrite1M: sequential 1 MiB writes to a fresh thin volume, one
// flush at the end (the cached engine commits on its own 5 s timer and
// dirty threshold meanwhile).
func BenchmarkSeqWrite1M(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			ctx := context.Background()
			const n = 1 << 20
			v := e.open(b, int64(b.N+1)*n, false)
			defer v.Close()
			p := pattern(n, 1)
			b.SetBytes(n)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.WriteAt(ctx, p, int64(i)*n, false); err != nil {
					b.Fatal(err)
				}
			}
			if err := v.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// fillVolume writes the whole volume and flushes, outside the timer.
func fillVolume(b *testing.B, v Volume) {
	ctx := context.Background()
	p := pattern(1<<20, 2)
	for off := int64(0); off < v.Size(); off += int64(len(p)) {
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

// fillAndCache fills v and reads it all once, so that a read benchmark
// starts with the whole volume in the engine's cache (or the page cache).
func fillAndCache(b *testing.B, v Volume) {
	fillVolume(b, v)
	p := make([]byte, 4096)
	for off := int64(0); off < v.Size(); off += int64(len(p)) {
		if err := v.ReadAt(context.Background(), p, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRandOverwrite4K: 4 KiB random overwrites of a fully written
// 256 MiB volume with one flush per 1,000 writes.
func BenchmarkRandOverwrite4K(b *testing.B) {
	for _, e := range engines {
		b.Run(e.name, func(b *testing.B) {
			ctx := context.Background()
			const size = 256 << 20
			v := e.open(b, size, false)
			defer v.Close()
			fillVolume(b, v)
			rng := rand.New(rand.NewPCG(1, 2))
			p := pattern(4096, 3)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.WriteAt(ctx, p, rng.Int64N(size/4096)*4096, false); err != nil {
					b.Fatal(err)
				}
				if i%1000 == 999 {
					if err := v.Flush(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
			if err := v.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkRandRead4KCached: 4 KiB random reads of a working set that fits
// the engine's cache (and the kernel page cache, for the plain engine): 8 MiB
// fits the CPU caches too, 64 MiB is bound by memory bandwidth for both.
func BenchmarkRandRead4KCached(b *testing.B) {
	for _, ws := range []int64{8 << 20, 64 << 20} {
		for _, e := range engines {
			b.Run(fmt.Sprintf("%dMiB/%s", ws>>20, e.name), func(b *testing.B) {
				benchRandRead(b, e.open, ws)
			})
		}
	}
}

func benchRandRead(b *testing.B, open volOpener, size int64) {
	ctx := context.Background()
	v := open(b, size, false)
	defer v.Close()
	fillAndCache(b, v)
	b.SetBytes(4096)
	b.ResetTimer()
	// Every reader goroutine (one per GOMAXPROCS) draws its own offsets, so
	// the figure also shows how reads on several connections scale.
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(3, seed.Add(1)))
		p := make([]byte, 4096)
		for pb.Next() {
			if err := v.ReadAt(ctx, p, rng.Int64N(size/4096)*4096); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkWCE0Writers16: 16 concurrent writers of random 4 KiB blocks with
// the write cache off, so each write is durable when acknowledged. Group
// commit lets concurrent writers share a commit; "single" commits each write
// on its own.
func BenchmarkWCE0Writers16(b *testing.B) {
	cases := []struct {
		name string
		open volOpener
	}{
		{"plain", openPlain},
		{"cached-group", openCached(Options{})},
		{"cached-single", openCached(Options{DisableGroupCommit: true})},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			const size = 64 << 20
			v := c.open(b, size, true)
			defer v.Close()
			b.SetBytes(4096)
			b.ResetTimer()
			var wg sync.WaitGroup
			const writers = 16
			for g := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(g), 5))
					p := pattern(4096, g)
					for i := g; i < b.N; i += writers {
						if err := v.WriteAt(ctx, p, rng.Int64N(size/4096)*4096, false); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

// warmSlab faults in n bytes of chunk memory once, so that benchmarks
// measure a running daemon's steady state rather than the kernel zeroing
// fresh pages the first time the cache grows (a one-off cost that would
// dominate a short run).
func warmSlab(n int64) {
	var ds []*[ChunkSize]byte
	for range n / ChunkSize {
		d := chunkSlab.get()
		d[0], d[ChunkSize/2] = 1, 1
		ds = append(ds, d)
	}
	for _, d := range ds {
		chunkSlab.put(d)
	}
}

// ratioBench alternates rounds of the same workload on two volumes and
// reports a's throughput over b's as the "ratio" metric. Alternating rounds
// within one benchmark cancels most of the noise of a shared machine (page
// cache pressure and disk load from other processes hit both alike), which
// separate benchmarks run minutes apart do not.
func ratioBench(b *testing.B, va, vb Volume, round func(v Volume, r int) error) {
	b.Helper()
	ratioBenchPrep(b, va, vb, round, nil)
}

// ratioBenchPrep is ratioBench with prep(v) run, untimed, before each round.
func ratioBenchPrep(b *testing.B, va, vb Volume, round func(v Volume, r int) error, prep func(v Volume)) {
	b.Helper()
	var ta, tb time.Duration
	b.ResetTimer()
	for r := 0; r < b.N; r++ {
		for i, v := range []Volume{va, vb} {
			if r%2 == 1 {
				v = []Volume{vb, va}[i] // alternate who goes first
			}
			if prep != nil {
				b.StopTimer()
				prep(v)
				b.StartTimer()
			}
			start := time.Now()
			if err := round(v, r); err != nil {
				b.Fatal(err)
			}
			if v == va {
				ta += time.Since(start)
			} else {
				tb += time.Since(start)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(tb.Seconds()/ta.Seconds(), "ratio")
	b.ReportMetric(ta.Seconds()*1e3/float64(b.N), "ms/round-a")
	b.ReportMetric(tb.Seconds()*1e3/float64(b.N), "ms/round-b")
}

// BenchmarkRatio measures each target of the engine issue as a ratio in
// one run (a = the engine under test, b = the baseline; ratio = a's
// throughput / b's):
//
//	seqwrite:      cached vs plain, 64 MiB of sequential 1 MiB writes to a
//	               fresh thin volume plus a flush per round (target >= 0.8)
//	randoverwrite: cached vs plain, 1,000 random 4 KiB overwrites of a
//	               fully written 256 MiB volume plus a flush (target >= 0.4)
//	randread:      cached vs plain, 20,000 random 4 KiB reads of an 8 MiB
//	               cached working set (target >= 3), by one reader and
//	               (randread-Nreaders) shared by one reader per CPU
//	wce0:          group commit vs one commit per write, 16 WCE=0 writers
//	               doing 20 random 4 KiB writes each (target >= 4)
//
// Run: go test -run '^$' -bench Ratio -benchtime 10x ./engine/
func BenchmarkRatio(b *testing.B) {
	ctx := context.Background()
	b.Run("seqwrite", func(b *testing.B) {
		const roundBytes = 64 << 20
		size := int64(b.N) * roundBytes
		dir := b.TempDir()
		warmOnce.Do(func() { warmSlab(1 << 30) })
		cachedPath, plainPath := filepath.Join(dir, "cached.img"), filepath.Join(dir, "plain.img")
		cached, err := Open(cachedPath, Options{Size: size, FlushInterval: 5 * time.Second, Cache: NewCache(CacheOptions{}), Logger: quietLog})
		if err != nil {
			b.Fatal(err)
		}
		defer cached.Close()
		plain, err := OpenFile(plainPath, FileOptions{Name: "plain", BlockSize: 512, Size: size})
		if err != nil {
			b.Fatal(err)
		}
		defer plain.Close()
		// Writes come from a rotating 16 MiB pool, as data arriving from the
		// network would, rather than from one buffer that stays in the CPU
		// cache (which flatters whichever engine copies it least).
		pool := pattern(16<<20, 1)
		// Before each round, drop the (clean, flushed) page cache of both
		// data files. These VMs back guest memory lazily: a page the guest
		// never used costs a host fault on first touch, so without this
		// every round allocates fresh page cache, rounds slow down sharply
		// once the guest's warm memory is used up, and whichever
		// engine's footprint grows faster pays first. Recycled pages keep
		// both engines on warm memory.
		prep := func(Volume) {
			for _, path := range []string{cachedPath, plainPath} {
				if err := dropPageCache(path); err != nil {
					b.Fatal(err)
				}
			}
		}
		ratioBenchPrep(b, cached, plain, func(v Volume, r int) error {
			for off := int64(r) * roundBytes; off < int64(r+1)*roundBytes; off += 1 << 20 {
				src := off % int64(len(pool))
				if err := v.WriteAt(ctx, pool[src:src+1<<20], off, false); err != nil {
					return err
				}
			}
			return v.Flush(ctx)
		}, prep)
	})
	b.Run("randoverwrite", func(b *testing.B) {
		const size = 256 << 20
		cached := openCached(Options{FlushInterval: 5 * time.Second})(b, size, false)
		defer cached.Close()
		plain := openPlain(b, size, false)
		defer plain.Close()
		fillVolume(b, cached)
		fillVolume(b, plain)
		p := pattern(4096, 3)
		ratioBench(b, cached, plain, func(v Volume, r int) error {
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			for range 1000 {
				if err := v.WriteAt(ctx, p, rng.Int64N(size/4096)*4096, false); err != nil {
					return err
				}
			}
			return v.Flush(ctx)
		})
	})
	// randread with one reader, and with one reader per CPU, as
	// initiators reading on several connections at once do.
	for _, readers := range []int{1, runtime.GOMAXPROCS(0)} {
		name := "randread"
		if readers > 1 {
			name = fmt.Sprintf("randread-%dreaders", readers)
		}
		b.Run(name, func(b *testing.B) {
			const size = 8 << 20
			cached := openCached(Options{FlushInterval: 5 * time.Second})(b, size, false)
			defer cached.Close()
			plain := openPlain(b, size, false)
			defer plain.Close()
			fillAndCache(b, cached)
			fillAndCache(b, plain)
			ratioBench(b, cached, plain, func(v Volume, r int) error {
				var wg sync.WaitGroup
				errs := make(chan error, readers)
				for g := range readers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						rng := rand.New(rand.NewPCG(uint64(r), uint64(4+g)))
						p := make([]byte, 4096)
						for range 20000 / readers {
							if err := v.ReadAt(ctx, p, rng.Int64N(size/4096)*4096); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				return <-errs
			})
		})
	}
	b.Run("wce0", func(b *testing.B) {
		const size = 64 << 20
		group := openCached(Options{})(b, size, true)
		defer group.Close()
		single := openCached(Options{DisableGroupCommit: true})(b, size, true)
		defer single.Close()
		ratioBench(b, group, single, func(v Volume, r int) error {
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(r), uint64(g)))
					p := pattern(4096, g)
					for range 20 {
						if err := v.WriteAt(ctx, p, rng.Int64N(size/4096)*4096, false); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			return <-errs
		})
	})
}

// dropPageCache evicts a file's clean pages from the kernel page cache.
func dropPageCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
