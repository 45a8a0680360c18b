package engine

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestPartialWriteNeverAdoptsAStaleFill replays the interleaving the crash
// simulator found: a partial write reads the old contents of its two end
// chunks (the fills), and before it takes the volume lock another write
// caches a newer version of the first chunk and commits it, and some other
// buffer is evicted. The writer retries; before its retry looks at the
// cache, the newer version of the first chunk is evicted too. A fill kept
// from the first attempt would then be adopted, and the committed newer
// version of that chunk silently replaced by the older one.
func TestPartialWriteNeverAdoptsAStaleFill(t *testing.T) {
	ctx := context.Background()
	v := openTest(t, filepath.Join(t.TempDir(), "v.img"), Options{Size: 1 << 20, FlushInterval: time.Hour})
	defer v.Close()
	const a, b, c = 10, 11, 20 // chunk a and b are the write's ends; c is evicted
	fill := func(x byte) []byte { return bytes.Repeat([]byte{x}, ChunkSize) }
	evict := func(k int64) {
		t.Helper()
		v.mu.RLock()
		buf := v.chunks.get(k)
		v.mu.RUnlock()
		if buf == nil || !v.dropClean(buf) {
			t.Fatalf("chunk %d is not a clean cached buffer", k)
		}
	}
	// The device holds version 1 of chunk a; nothing of it is cached.
	for k, x := range map[int64]byte{a: 1, c: 9} {
		if err := v.WriteAt(ctx, fill(x), k*ChunkSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	evict(a)

	inHook := false
	v.fillHook = func(attempt int, read bool) {
		if inHook {
			return
		}
		inHook = true
		defer func() { inHook = false }()
		switch {
		case attempt == 0 && read:
			// The writer has read version 1 of chunk a. Version 2 is
			// written and committed, and chunk c leaves the cache, so
			// the writer must look again.
			if err := v.WriteAt(ctx, fill(2), a*ChunkSize, false); err != nil {
				t.Error(err)
			}
			if err := v.Flush(ctx); err != nil {
				t.Error(err)
			}
			evict(c)
		case attempt == 1 && !read:
			// Version 2 leaves the cache before the retry looks.
			evict(a)
		}
	}
	// The partial write: the second half of chunk a, the first half of b.
	if err := v.WriteAt(ctx, fill(7), a*ChunkSize+ChunkSize/2, false); err != nil {
		t.Fatal(err)
	}
	v.fillHook = nil

	got := make([]byte, 2*ChunkSize)
	if err := v.ReadAt(ctx, got, a*ChunkSize); err != nil {
		t.Fatal(err)
	}
	want := append(append(fill(2)[:ChunkSize/2:ChunkSize/2], fill(7)...), make([]byte, ChunkSize/2)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("chunk a starts with version %d, want 2 (the committed one); chunk b starts with %d, want 7",
			got[0], got[ChunkSize])
	}
}
