package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"
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

func openCached(opts Options) volOpener {
	return func(b *testing.B, size int64, wceOff bool) Volume {
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
	{
		{
			ctx := context.Background()
			v := open(b, size, false)
			defer v.Close()
			fillVolume(b, v)
			p := make([]byte, 4096)
			for off := int64(0); off < size; off += 4096 {
				if err := v.ReadAt(ctx, p, off); err != nil {
					b.Fatal(err)
				}
			}
			rng := rand.New(rand.NewPCG(3, 4))
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.ReadAt(ctx, p, rng.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
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
