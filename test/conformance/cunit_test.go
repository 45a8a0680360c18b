package conformance

import (
	"bufio"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// cunitResult is what one iscsi-test-cu run of a single suite reported.
//
// CUnit itself has no notion of a skipped test: libiscsi marks a test it
// cannot run (an optional command the target does not implement, a feature
// the LU lacks) by printing "[SKIPPED] <why>" and then passing it. We count
// those separately so that "passed" means a test that really exercised the
// target.
type cunitResult struct {
	// HaveSummary is false when the run ended before CUnit printed its
	// "Run Summary" table (crash, timeout, lost connection).
	HaveSummary bool
	// Totals from the "tests" row of the Run Summary table.
	Total, Ran, Passed, Failed, Inactive int
	// AssertsFailed is the "Failed" column of the "asserts" row.
	AssertsFailed int
	// Tests lists every test in the order it ran.
	Tests []cunitTest
}

// cunitTest is one CUnit test case of a suite.
type cunitTest struct {
	Name    string
	Passed  bool
	Failed  bool
	Skipped bool     // passed only because libiscsi skipped it
	SkipWhy string   // libiscsi's reason for skipping
	Asserts []string // failed assertions, "file.c:line - CU_ASSERT..." (first few)
	// Why holds libiscsi's own "[FAILED] ..." explanations (first few):
	// they name the command, the expected and the received status.
	Why []string
	// Context is filled in by a verbose re-run of the failed test: the
	// commands sent, with their expected status, up to the failure.
	Context []string
}

// Skipped returns how many tests libiscsi skipped (and CUnit counted as
// passed).
func (r cunitResult) Skipped() int {
	n := 0
	for _, t := range r.Tests {
		if t.Skipped && t.Passed && !t.Failed {
			n++
		}
	}
	return n
}

// RealPassed returns the tests that passed without being skipped.
func (r cunitResult) RealPassed() int { return r.Passed - r.Skipped() }

// FailedTests returns the tests CUnit marked FAILED.
func (r cunitResult) FailedTests() []cunitTest {
	var out []cunitTest
	for _, t := range r.Tests {
		if t.Failed {
			out = append(out, t)
		}
	}
	return out
}

// maxAssertsKept bounds how many failed assertions we keep per test: some
// tests (MultipathIO.CompareAndWriteAsync) fail the same two asserts
// thousands of times.
const maxAssertsKept = 8

var (
	testLineRE   = regexp.MustCompile(`^\s+Test: (.+?) \.\.\.(.*)$`)
	assertLineRE = regexp.MustCompile(`^\s+\d+\. (\S+:\d+\s+-\s+.*)$`)
	summaryRowRE = regexp.MustCompile(`^\s*(suites|tests|asserts)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(\S+)\s*$`)
	skippedRE    = regexp.MustCompile(`\[SKIPPED\]\s*(.*)$`)
	failedWhyRE  = regexp.MustCompile(`\[FAILED\]\s*(.*)$`)
)

// parseCUnit reads the verbose console output of iscsi-test-cu (CUnit's
// basic interface) for one suite.
func parseCUnit(out string) (cunitResult, error) {
	var r cunitResult
	var cur *cunitTest
	inSummary := false
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Run Summary:") {
			inSummary = true
			cur = nil
			continue
		}
		if inSummary {
			m := summaryRowRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			total, _ := strconv.Atoi(m[2])
			ran, _ := strconv.Atoi(m[3])
			failed, _ := strconv.Atoi(m[5])
			switch m[1] {
			case "tests":
				passed, err := strconv.Atoi(m[4])
				if err != nil {
					return r, fmt.Errorf("cunit summary: tests passed %q: %w", m[4], err)
				}
				inactive, err := strconv.Atoi(m[6])
				if err != nil {
					return r, fmt.Errorf("cunit summary: tests inactive %q: %w", m[6], err)
				}
				r.Total, r.Ran, r.Passed, r.Failed, r.Inactive = total, ran, passed, failed, inactive
				r.HaveSummary = true
			case "asserts":
				r.AssertsFailed = failed
			}
			continue
		}
		if m := testLineRE.FindStringSubmatch(line); m != nil {
			r.Tests = append(r.Tests, cunitTest{Name: m[1]})
			cur = &r.Tests[len(r.Tests)-1]
			line = m[2]
		}
		if cur == nil {
			continue
		}
		if m := skippedRE.FindStringSubmatch(line); m != nil {
			if !cur.Skipped {
				cur.SkipWhy = strings.TrimSpace(m[1])
			}
			cur.Skipped = true
			continue
		}
		if m := failedWhyRE.FindStringSubmatch(line); m != nil {
			if len(cur.Why) < maxAssertsKept {
				cur.Why = append(cur.Why, strings.TrimSpace(m[1]))
			}
			continue
		}
		if m := assertLineRE.FindStringSubmatch(line); m != nil {
			if len(cur.Asserts) < maxAssertsKept {
				cur.Asserts = append(cur.Asserts, m[1])
			}
			continue
		}
		switch t := strings.TrimSpace(line); {
		case strings.HasSuffix(t, "FAILED"):
			cur.Failed = true
		case strings.HasSuffix(t, "passed"):
			cur.Passed = true
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("read iscsi-test-cu output: %w", err)
	}
	passed, failed := 0, 0
	for _, t := range r.Tests {
		switch {
		case t.Failed:
			failed++
		case t.Passed:
			passed++
		}
	}
	if !r.HaveSummary {
		// Count what finished before the run was cut short.
		r.Ran, r.Passed, r.Failed = passed+failed, passed, failed
		return r, nil
	}
	if failed != r.Failed {
		return r, fmt.Errorf("cunit output lists %d FAILED tests but its summary says %d", failed, r.Failed)
	}
	return r, nil
}
