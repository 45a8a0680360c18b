package iscsi

import (
	"testing"
)

// The benchmarks run one session over loopback against the in-memory fake
// target at queue depth 1; allocations include the test client's own.

func benchSession(b *testing.B, keys ...string) (*testServer, *client) {
	ts := startServer(b, Config{NopInterval: -1})
	c := dial(b, ts.addr)
	c.login(testIQN, keys...)
	return ts, c
}

func BenchmarkRead4K(b *testing.B)   { benchRead(b, 8) }
func BenchmarkRead128K(b *testing.B) { benchRead(b, 256) }

func benchRead(b *testing.B, blocks uint16) {
	ts, c := benchSession(b, "MaxRecvDataSegmentLength=262144")
	_ = ts
	b.SetBytes(int64(blocks) * 512)
	b.ReportAllocs()
	for b.Loop() {
		r := c.read(0, blocks)
		if r.status != 0 {
			b.Fatalf("status %#x", r.status)
		}
	}
}

func BenchmarkWrite4K(b *testing.B) {
	ts, c := benchSession(b, "ImmediateData=Yes", "InitialR2T=No", "MaxRecvDataSegmentLength=262144")
	_ = ts
	data := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		r := c.write(0, data, 65536)
		if r.status != 0 {
			b.Fatalf("status %#x", r.status)
		}
	}
}

func BenchmarkRead16K(b *testing.B) { benchRead(b, 32) }
func BenchmarkRead64K(b *testing.B) { benchRead(b, 128) }
