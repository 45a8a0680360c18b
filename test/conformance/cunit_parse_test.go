package conformance

import (
	"strings"
	"testing"
)

// Outputs below were captured from iscsi-test-cu 1.19 (Debian 12) run
// against Debian's tgt; they pin the parser to the real format.

const sampleMixed = `
     CUnit - A unit testing framework for C - Version 2.1-3
     http://cunit.sourceforge.net/


Suite: GetLBAStatus
  Test: Simple ...passed
  Test: BeyondEol ...    [FAILED] GET_LBA_STATUS successful but should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)
FAILED
    1. test_get_lba_status_beyond_eol.c:38  - CU_ASSERT_EQUAL(_r,0)
  Test: UnmapSingle ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      1      1    n/a      0        0
               tests      3      3      2      1        0
             asserts    516    516    515      1      n/a

Elapsed time =    0.011 seconds
Tests completed with return value: 0
`

const sampleDataSN = `Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
    2. test_iscsi_datasn_invalid.c:116  - CU_ASSERT_NOT_EQUAL(ret,0)

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      1      1    n/a      0        0
               tests      1      1      0      1        0
             asserts      2      2      0      2      n/a
`

func TestParseCUnitMixed(t *testing.T) {
	r, err := parseCUnit(sampleMixed)
	if err != nil {
		t.Fatal(err)
	}
	if !r.HaveSummary || r.Total != 3 || r.Ran != 3 || r.Passed != 2 || r.Failed != 1 || r.Inactive != 0 {
		t.Fatalf("summary = %+v", r)
	}
	if r.AssertsFailed != 1 {
		t.Errorf("asserts failed = %d, want 1", r.AssertsFailed)
	}
	if got := r.Skipped(); got != 1 {
		t.Errorf("skipped = %d, want 1", got)
	}
	if got := r.RealPassed(); got != 1 {
		t.Errorf("real passed = %d, want 1", got)
	}
	if len(r.Tests) != 3 {
		t.Fatalf("tests = %+v", r.Tests)
	}
	f := r.FailedTests()
	if len(f) != 1 || f[0].Name != "BeyondEol" {
		t.Fatalf("failed tests = %+v", f)
	}
	if len(f[0].Asserts) != 1 || !strings.HasPrefix(f[0].Asserts[0], "test_get_lba_status_beyond_eol.c:38") {
		t.Errorf("asserts = %q", f[0].Asserts)
	}
	if len(f[0].Why) != 1 || !strings.Contains(f[0].Why[0], "LBA_OUT_OF_RANGE") {
		t.Errorf("why = %q", f[0].Why)
	}
	if s := r.Tests[2]; !s.Skipped || !s.Passed || s.SkipWhy != "Logical unit is fully provisioned. Skipping test" {
		t.Errorf("skipped test = %+v", s)
	}
}

func TestParseCUnitFailedOnTestLine(t *testing.T) {
	r, err := parseCUnit(sampleDataSN)
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 1 || len(r.FailedTests()) != 1 || len(r.FailedTests()[0].Asserts) != 2 {
		t.Fatalf("result = %+v", r)
	}
}

func TestParseCUnitNoSummary(t *testing.T) {
	// A run cut short (timeout, crash) has tests but no summary.
	cut := sampleMixed[:strings.Index(sampleMixed, "Run Summary")]
	r, err := parseCUnit(cut)
	if err != nil {
		t.Fatal(err)
	}
	if r.HaveSummary {
		t.Fatal("summary reported for output without one")
	}
	if len(r.Tests) != 3 {
		t.Errorf("tests = %d, want 3", len(r.Tests))
	}
	if r.Ran != 3 || r.Passed != 2 || r.Failed != 1 || r.Skipped() != 1 || r.RealPassed() != 1 {
		t.Errorf("counts from test lines = ran %d passed %d failed %d skipped %d", r.Ran, r.Passed, r.Failed, r.Skipped())
	}
}

func TestParseCUnitCutMidTest(t *testing.T) {
	// Cut inside a skipped test, before its "passed": nothing counts yet.
	cut := sampleMixed[:strings.Index(sampleMixed, "Skipping test")+len("Skipping test")]
	r, err := parseCUnit(cut)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ran != 2 || r.Skipped() != 0 || r.RealPassed() != 1 {
		t.Errorf("ran %d skipped %d real passed %d, want 2, 0, 1", r.Ran, r.Skipped(), r.RealPassed())
	}
}

func TestParseCUnitInconsistent(t *testing.T) {
	// The summary claims two failures but only one test says FAILED: the
	// parser must notice rather than silently trust either.
	bad := strings.Replace(sampleMixed, "      3      3      2      1        0", "      3      3      1      2        0", 1)
	if _, err := parseCUnit(bad); err == nil {
		t.Fatal("inconsistent output parsed without error")
	}
}

func TestFailureContextFailedLine(t *testing.T) {
	out := `Suite: GetLBAStatus
  Test: BeyondEol ...
    Test GETLBASTATUS one block beyond the end of the LUN
    Send GET_LBA_STATUS (Expecting CHECK_CONDITION) LBA:2097153 alloc_len:24
    [OK] GET_LBA_STATUS returned ILLEGAL_REQUEST(0x05) LBA_OUT_OF_RANGE(0x2100)
    Test GETLBASTATUS at LBA 2^63
    Send GET_LBA_STATUS (Expecting CHECK_CONDITION) LBA:9223372036854775808 alloc_len:24
    [FAILED] GET_LBA_STATUS successful but should have failed with ILLEGAL_REQUEST(0x05)/LBA_OUT_OF_RANGE(0x2100)
FAILED
`
	ctx := failureContext(out)
	if len(ctx) < 2 {
		t.Fatalf("context = %q", ctx)
	}
	if last := ctx[len(ctx)-1]; !strings.HasPrefix(last, "[FAILED] GET_LBA_STATUS successful") {
		t.Errorf("last line = %q, want the [FAILED] line", last)
	}
	if prev := ctx[len(ctx)-2]; !strings.Contains(prev, "LBA:9223372036854775808") {
		t.Errorf("line before the failure = %q, want the command that failed", prev)
	}
	for _, l := range ctx {
		if strings.HasPrefix(l, "[OK]") {
			t.Errorf("context keeps an [OK] line: %q", l)
		}
	}
}

func TestFailureContextAssertOnly(t *testing.T) {
	out := `Suite: iSCSIdatasn
  Test: iSCSIDataSnInvalid ...
    Send two Data-Out PDU's with DataSN==0. Should fail.
    Send WRITE10 (Expecting SUCCESS) LBA:100 blocks:2
    [OK] WRITE10 returned SUCCESS NO SENSE(0x00) (null)(0x0000)
FAILED
    1. test_iscsi_datasn_invalid.c:98  - CU_ASSERT_NOT_EQUAL(ret,0)
`
	ctx := failureContext(out)
	want := []string{
		"Send two Data-Out PDU's with DataSN==0. Should fail.",
		"Send WRITE10 (Expecting SUCCESS) LBA:100 blocks:2",
		"[OK] WRITE10 returned SUCCESS NO SENSE(0x00) (null)(0x0000)",
	}
	if strings.Join(ctx, "\n") != strings.Join(want, "\n") {
		t.Errorf("context = %q, want %q", ctx, want)
	}
	if got := failureContext("Suite: X\n  Test: Y ...passed\n"); len(got) != 1 || !strings.Contains(got[0], "did not reproduce") {
		t.Errorf("passing re-run context = %q", got)
	}
}
