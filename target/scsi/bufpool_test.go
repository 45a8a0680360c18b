package scsi

import "testing"

func TestDataInPoolClasses(t *testing.T) {
	for _, n := range []int{1, 512, 4096, 4097, 128 << 10, 1 << 24} {
		b := getDataIn(n)
		if len(b) != n {
			t.Fatalf("getDataIn(%d) has length %d", n, len(b))
		}
		if c := cap(b); c&(c-1) != 0 || c < 4096 {
			t.Fatalf("getDataIn(%d) capacity %d is not a size class", n, c)
		}
		putDataIn(b)
	}
	if b := getDataIn(1<<24 + 1); cap(b) != 1<<24+1 {
		t.Fatalf("oversized read got capacity %d, want an exact allocation", cap(b))
	}
	putDataIn(make([]byte, 100, 3000)) // not a class: must be ignored, not panic
}

// A recycled buffer must never show an initiator the bytes of an earlier
// read: a released buffer full of 0xee is reused for a read of zeroes.
func TestReleasedBufferDoesNotLeakOldData(t *testing.T) {
	f := newFixture(t)
	data := fill(8*512, 0xee)
	expectGood(t, f.run(rw(opWrite10, 10, 0, 8), data))
	for i := 0; i < 4; i++ {
		r := f.run(rw(opRead10, 10, 0, 8), nil)
		expectGood(t, r)
		f.tgt.ReleaseDataIn(r.DataIn)
		r = f.run(rw(opRead10, 10, 64, 8), nil) // never written: zeroes
		expectGood(t, r)
		for j, b := range r.DataIn {
			if b != 0 {
				t.Fatalf("round %d: byte %d of a never-written block is %#x (stale pooled data)", i, j, b)
			}
		}
		f.tgt.ReleaseDataIn(r.DataIn)
	}
}
