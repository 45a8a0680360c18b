package conformance

import "testing"

// TestWaiveStale checks that only the documented failure of a stale
// libiscsi test is waived: another failure of the same test, or the same
// failure of another test, still counts.
func TestWaiveStale(t *testing.T) {
	mk := func(name, why string) cunitResult {
		return cunitResult{HaveSummary: true, Ran: 2, Passed: 1, Failed: 1, Tests: []cunitTest{
			{Name: "Simple", Passed: true},
			{Name: name, Failed: true, Why: []string{why}},
		}}
	}
	res := mk("UnmapUntilEnd", "[FAILED] Blocks did not read back as zero")
	res.Tests[1].Why = append(res.Tests[1].Why, `Blocks did not read back " "as zero")`)
	if w := waiveStale("ALL.WriteSame10", &res); len(w) != 1 || res.Failed != 0 || res.Passed != 2 || len(res.FailedTests()) != 0 {
		t.Fatalf("stale failure not waived: waived %q, result %+v", w, res)
	}
	for _, tc := range []struct{ suite, name, why string }{
		{"ALL.WriteSame10", "UnmapUntilEnd", "[FAILED] WRITESAME10 failed with sense 05/2400"},
		{"ALL.WriteSame16", "UnmapUntilEnd", "[FAILED] Blocks did not read back as zero"},
		{"ALL.WriteSame10", "Unmap", "[FAILED] Blocks did not read back as zero"},
	} {
		res := mk(tc.name, tc.why)
		if w := waiveStale(tc.suite, &res); len(w) != 0 || res.Failed != 1 {
			t.Errorf("%s/%s %q waived: %q", tc.suite, tc.name, tc.why, w)
		}
	}
}
