package api

import (
	"context"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// oldLatencyBounds are the bounds of the latency histogram the service
// used to keep beside the engine's; none may reach /metrics any more.
var oldLatencyBounds = []string{"5e-05", "0.00025", "0.0005", "0.0025", "0.005", "0.025"}

var bucketLine = regexp.MustCompile(`^(anvil_(?:volume|engine)_\w+)_bucket\{(.*)le="([^"]+)"\} (\d+)$`)

// TestMetricsOneLatencyLayout: after real I/O every volume latency
// histogram on /metrics (per-operation and commit) has the engine's log2
// bounds and no other, and the counters and histogram counts there and in
// the REST stats are the engine's: every call counted, failures as
// errors, reads timed one in sample_every.
func TestMetricsOneLatencyLayout(t *testing.T) {
	e := newEnv(t)
	e.must("POST", "/api/v1/volumes", `{"name":"m1","size_bytes":1048576}`, 201, nil)
	v, err := e.svc.EngineVolume("m1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	buf := make([]byte, 4096)
	const writes, reads = 8, 128
	for i := range writes {
		if err := v.WriteAt(ctx, buf, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	for i := range reads {
		if err := v.ReadAt(ctx, buf, int64(i%writes)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.ReadAt(ctx, buf, v.Size()); err == nil {
		t.Fatal("a read past the end succeeded")
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	code, body := e.do("GET", "/metrics", nil)
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	// The engine's layout: bucket i under 2^i µs, 23 bounds and +Inf.
	var want []string
	for i := range 23 {
		want = append(want, strconv.FormatFloat(float64(int64(1)<<i)*1e-6, 'g', 4, 64))
	}
	want = append(want, "+Inf")
	bounds := map[string][]string{} // series (name and labels) -> its le values
	values := map[string]string{}   // full line without value -> value
	for _, line := range strings.Split(string(body), "\n") {
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			values[line[:i]] = line[i+1:]
		}
		m := bucketLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		le := m[3]
		if f, err := strconv.ParseFloat(le, 64); err == nil {
			le = strconv.FormatFloat(f, 'g', 4, 64)
		}
		bounds[m[1]+"{"+m[2]+"}"] = append(bounds[m[1]+"{"+m[2]+"}"], le)
	}
	for _, series := range []string{
		`anvil_volume_op_duration_seconds{op="read",volume="m1",}`,
		`anvil_volume_op_duration_seconds{op="write",volume="m1",}`,
		`anvil_volume_op_duration_seconds{op="flush",volume="m1",}`,
		`anvil_volume_op_duration_seconds{op="unmap",volume="m1",}`,
		`anvil_engine_commit_duration_seconds{volume="m1",}`,
	} {
		if _, ok := bounds[series]; !ok {
			t.Errorf("no histogram %s on /metrics", series)
		}
	}
	for series, les := range bounds {
		if !slices.Equal(les, want) {
			t.Errorf("%s has bounds %v; want the engine's %v", series, les, want)
		}
		for _, old := range oldLatencyBounds {
			if slices.Contains(les, old) {
				t.Errorf("%s has the old bound %s", series, old)
			}
		}
	}
	for key, val := range map[string]string{
		`anvil_volume_ops_total{op="read",volume="m1"}`:                  strconv.Itoa(reads + 1),
		`anvil_volume_errors_total{op="read",volume="m1"}`:               "1",
		`anvil_volume_bytes_total{op="read",volume="m1"}`:                strconv.Itoa(reads * 4096),
		`anvil_volume_op_duration_seconds_count{op="read",volume="m1"}`:  "2",
		`anvil_volume_ops_total{op="write",volume="m1"}`:                 strconv.Itoa(writes),
		`anvil_volume_errors_total{op="write",volume="m1"}`:              "0",
		`anvil_volume_op_duration_seconds_count{op="write",volume="m1"}`: strconv.Itoa(writes),
		`anvil_volume_ops_total{op="flush",volume="m1"}`:                 "1",
	} {
		if got := values[key]; got != val {
			t.Errorf("%s = %q; want %q", key, got, val)
		}
	}

	var vol struct {
		Stats VolumeStats `json:"stats"`
	}
	e.must("GET", "/api/v1/volumes/m1", nil, 200, &vol)
	r := vol.Stats.Read
	if r.Ops != reads+1 || r.Errors != 1 || r.Latency.Count != 2 || r.Latency.SampleEvery != 64 || len(r.Latency.Counts) != len(want) {
		t.Errorf("REST read stats: %+v", r)
	}
	if w := vol.Stats.Write; w.Ops != writes || w.Latency.Count != writes || w.Latency.SampleEvery != 1 {
		t.Errorf("REST write stats: %+v", w)
	}
}
