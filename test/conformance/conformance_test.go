// Package conformance runs libiscsi's iscsi-test-cu, the conformance suite
// every iSCSI target is measured with, against a real Anvil daemon.
//
// Environment:
//
//	ANVIL_CONFORMANCE_TABLE          also write the per-suite table (markdown) to this file
//	ANVIL_CONFORMANCE_URL            run against this iscsi:// LUN URL instead of
//	                                 starting Anvil (used to calibrate against tgt)
//	ANVIL_CONFORMANCE_SUITES         regexp: run only the ALL.* suites it matches
//	ANVIL_CONFORMANCE_SUITE_TIMEOUT  per-suite time limit (Go duration, default 3m)
//	ANVIL_CONFORMANCE_LOGDIR         keep each suite's full iscsi-test-cu output here
//	ANVIL_CONFORMANCE_4K=0           skip the second pass against a 4096-byte-block LUN
package conformance

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// requiredSuites are the suites of the ALL family that must pass with zero
// failed tests. Every other ALL suite must still run to its end without
// killing or wedging the daemon; its failures are reported, not fatal.
//
// This is the one place to promote a suite once Anvil passes it.
var requiredSuites = map[string]bool{
	"ALL.TestUnitReady":  true,
	"ALL.Inquiry":        true,
	"ALL.Mandatory":      true,
	"ALL.ReadCapacity10": true,
	"ALL.ReadCapacity16": true,
	"ALL.Read6":          true,
	"ALL.Read10":         true,
	"ALL.Read12":         true,
	"ALL.Read16":         true,
	"ALL.Write10":        true,
	"ALL.Write12":        true,
	"ALL.Write16":        true,
	"ALL.Verify10":       true,
	"ALL.Verify12":       true,
	"ALL.Verify16":       true,
	"ALL.WriteVerify10":  true,
	"ALL.WriteVerify12":  true,
	"ALL.WriteVerify16":  true,
	"ALL.ModeSense6":     true,
	"ALL.NoMedia":        true,
	"ALL.Prefetch10":     true,
	"ALL.Prefetch16":     true,
	"ALL.PreventAllow":   true,
	"ALL.StartStopUnit":  true,
	"ALL.ReadOnly":       true,
	"ALL.iSCSIcmdsn":     true,
	"ALL.iSCSIdatasn":    true,
	"ALL.iSCSIResiduals": true,

	// Promoted once Anvil passed them: the rest of the ALL family.
	"ALL.CompareAndWrite":        true,
	"ALL.ExtendedCopy":           true,
	"ALL.GetLBAStatus":           true,
	"ALL.OrWrite":                true,
	"ALL.PrinReadKeys":           true,
	"ALL.PrinServiceactionRange": true,
	"ALL.PrinReportCapabilities": true,
	"ALL.ProutRegister":          true,
	"ALL.ProutReserve":           true,
	"ALL.ProutClear":             true,
	"ALL.ProutPreempt":           true,
	"ALL.ReadDefectData10":       true,
	"ALL.ReadDefectData12":       true,
	"ALL.ReceiveCopyResults":     true,
	"ALL.ReportSupportedOpcodes": true,
	"ALL.Reserve6":               true,
	"ALL.Sanitize":               true,
	"ALL.Unmap":                  true,
	"ALL.WriteAtomic16":          true,
	"ALL.WriteSame10":            true,
	"ALL.WriteSame16":            true,
	"ALL.iSCSITMF":               true,
	"ALL.MultipathIO":            true,
}

// staleTests are tests of the installed libiscsi (1.19) that contradict
// SBC-4 and were corrected upstream, keyed by suite/test, with the failure
// they show. That failure is logged but does not fail the suite; any other
// failure of the same test still does.
var staleTests = map[string]struct{ why, reason string }{
	"ALL.WriteSame10/UnmapUntilEnd": {
		why: "Blocks did not read back as zero",
		reason: "libiscsi 1.19 sends WRITE SAME(10) with UNMAP=1 and a data block of 0xFF, then expects zeroes; " +
			"the device server must write a data block that is not zeroes (unmapping would lose it), " +
			"and libiscsi upstream sends a zero block there since sahlberg/libiscsi#318",
	},
}

// waiveStale clears the failures staleTests explains from res and returns
// what it waived.
func waiveStale(suite string, res *cunitResult) []string {
	var waived []string
	for i := range res.Tests {
		ct := &res.Tests[i]
		st, ok := staleTests[suite+"/"+ct.Name]
		if !ok || !ct.Failed || len(ct.Why) == 0 {
			continue
		}
		all := true
		for _, w := range ct.Why {
			// The CU_FAIL text comes as its C source too, with the
			// string literal split: "...read back " "as zero".
			all = all && strings.Contains(strings.ReplaceAll(w, `" "`, ""), st.why)
		}
		if !all {
			continue
		}
		ct.Failed, ct.Passed = false, true
		res.Failed--
		res.Passed++
		waived = append(waived, fmt.Sprintf("%s: %s (%s)", ct.Name, st.why, st.reason))
	}
	return waived
}

// defaultSuiteTimeout bounds one suite. On tgt the slowest ALL suite takes
// about 6 s, so three minutes only trips on a hang, and the whole family
// stays well under 15 minutes on two cores.
const defaultSuiteTimeout = 3 * time.Minute

// suiteRow is one line of the report table.
type suiteRow struct {
	Name     string // as shown in the table
	Suite    string // as passed to iscsi-test-cu -t
	Required bool
	// MustRun fails the suite if libiscsi skipped any of its tests: set
	// where the LU was configured precisely so that they can run.
	MustRun bool
	Result  cunitResult
	Elapsed time.Duration
	Verdict string // PASS, FAIL, TIMEOUT, NO-SUMMARY, DAEMON-DIED, DAEMON-HUNG
	Detail  string
}

// target is the LUN under test and, when it is Anvil, the daemon behind it.
type target struct {
	url string
	d   *harness.Daemon // nil for an external target
}

// TestISCSITestCU runs every top-level suite of iscsi-test-cu's ALL family
// as its own subtest against one Anvil daemon over a fresh data directory.
func TestISCSITestCU(t *testing.T) {
	harness.NeedTool(t, "iscsi-test-cu", "iscsi-inq")

	suites, err := listSuites()
	if err != nil {
		t.Fatal(err)
	}
	if f := os.Getenv("ANVIL_CONFORMANCE_SUITES"); f != "" {
		re, err := regexp.Compile(f)
		if err != nil {
			t.Fatalf("ANVIL_CONFORMANCE_SUITES: %v", err)
		}
		var keep []string
		for _, s := range suites {
			if re.MatchString(s) {
				keep = append(keep, s)
			}
		}
		suites = keep
	} else {
		// A required suite that iscsi-test-cu no longer lists would
		// silently stop being checked.
		have := map[string]bool{}
		for _, s := range suites {
			have[s] = true
		}
		for s := range requiredSuites {
			if !have[s] {
				t.Errorf("required suite %s is not in `iscsi-test-cu --list`", s)
			}
		}
	}
	if len(suites) == 0 {
		t.Fatal("no suites to run")
	}

	timeout := defaultSuiteTimeout
	if v := os.Getenv("ANVIL_CONFORMANCE_SUITE_TIMEOUT"); v != "" {
		if timeout, err = time.ParseDuration(v); err != nil {
			t.Fatalf("ANVIL_CONFORMANCE_SUITE_TIMEOUT: %v", err)
		}
	}
	logDir := os.Getenv("ANVIL_CONFORMANCE_LOGDIR")
	if logDir == "" {
		logDir = t.TempDir()
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// iscsi-test-cu overwrites the LUN (-d), so Anvil always gets a fresh
	// data directory: harness.Start makes one.
	tg := &target{url: os.Getenv("ANVIL_CONFORMANCE_URL")}
	if tg.url == "" {
		tg.d = harness.Start(t, harness.Options{})
		tg.url = fmt.Sprintf("iscsi://%s/%s/0", tg.d.ISCSI, harness.DemoIQN)
	}
	t.Logf("target %s, %d suites, %s per suite, logs in %s", tg.url, len(suites), timeout, logDir)

	var rows []suiteRow
	for _, suite := range suites {
		row := suiteRow{Name: suite, Suite: suite, Required: requiredSuites[suite]}
		t.Run(suite, func(t *testing.T) {
			row = runSuite(t, tg, row, timeout, logDir)
		})
		rows = append(rows, row)
	}

	// On a writable LU every ReadOnly test skips itself ("Logical unit is
	// not write-protected"), so run the suite a second time against a
	// read-only volume exported as LUN 1, where none may skip.
	if tg.d != nil && slices.Contains(suites, "ALL.ReadOnly") {
		row := suiteRow{Name: "ALL.ReadOnly (write-protected LUN 1)", Suite: "ALL.ReadOnly", Required: true, MustRun: true, Verdict: "SETUP-FAILED"}
		t.Run("ALL.ReadOnly_write-protected", func(t *testing.T) {
			ro := &target{url: exportReadOnlyLUN(t, tg.d), d: tg.d}
			row = runSuite(t, ro, row, timeout, logDir)
		})
		rows = append(rows, row)
	}

	table := renderTable(tg.url, rows)

	// The same family against a volume with 4096-byte logical blocks
	// (LUN 2), where every LBA-to-byte conversion is different; the same
	// suites are required.
	if tg.d != nil && os.Getenv("ANVIL_CONFORMANCE_4K") != "0" {
		var rows4k []suiteRow
		url4k := ""
		t.Run("4K", func(t *testing.T) {
			url4k = exportLUN(t, tg.d, 2, "conformance-4k", "--size", "1G", "--block-size", "4096")
			tg4k := &target{url: url4k, d: tg.d}
			for _, suite := range suites {
				row := suiteRow{Name: suite, Suite: suite, Required: requiredSuites[suite]}
				t.Run(suite, func(t *testing.T) {
					row = runSuite(t, tg4k, row, timeout, filepath.Join(logDir, "4k"))
				})
				rows4k = append(rows4k, row)
			}
		})
		if len(rows4k) > 0 {
			table += "\n## 4096-byte logical blocks\n\n" + renderTable(url4k, rows4k)
		}
	}

	t.Logf("iscsi-test-cu results:\n%s", table)
	if p := os.Getenv("ANVIL_CONFORMANCE_TABLE"); p != "" {
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			t.Errorf("write ANVIL_CONFORMANCE_TABLE: %v", err)
		}
	}
}

// exportReadOnlyLUN creates a small read-only volume and maps it as LUN 1
// of the demo target.
func exportReadOnlyLUN(t *testing.T, d *harness.Daemon) string {
	return exportLUN(t, d, 1, "conformance-ro", "--size", "64M", "--read-only")
}

// exportLUN creates a volume through the CLI (and so the REST API) with the
// given `volume create` flags, maps it as lun of the demo target, and
// returns its URL.
func exportLUN(t *testing.T, d *harness.Daemon, lun int, name string, createFlags ...string) string {
	t.Helper()
	bin := harness.Binary(t)
	global := []string{"--api", d.API, "--data-dir", d.DataDir}
	for _, args := range [][]string{
		append([]string{"volume", "create", name}, createFlags...),
		{"target", "map", harness.DemoIQN, fmt.Sprint(lun), name},
	} {
		out, err := harness.Run(context.Background(), time.Minute, bin, append(args, global...)...)
		if err != nil {
			t.Fatalf("anvil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return fmt.Sprintf("iscsi://%s/%s/%d", d.ISCSI, harness.DemoIQN, lun)
}

// listSuites returns the top-level suites of the ALL family, in the order
// iscsi-test-cu lists them.
func listSuites() ([]string, error) {
	out, err := exec.Command("iscsi-test-cu", "--list").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("iscsi-test-cu --list: %w\n%s", err, out)
	}
	var suites []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "ALL.") && strings.Count(l, ".") == 1 {
			suites = append(suites, l)
		}
	}
	if len(suites) == 0 {
		return nil, fmt.Errorf("iscsi-test-cu --list printed no ALL.* suites:\n%s", out)
	}
	return suites, nil
}

// runSuite runs one suite, checks the daemon survived it, and fails t as
// the suite's status demands.
func runSuite(t *testing.T, tg *target, row suiteRow, timeout time.Duration, logDir string) suiteRow {
	if tg.d != nil && !tg.d.Running() {
		// An earlier suite killed it and was already failed for it;
		// every suite still deserves a live target.
		t.Logf("daemon was not running before %s; restarting it", row.Name)
		tg.d.Restart()
	}

	panicsBefore := 0
	if tg.d != nil {
		panicsBefore = len(panicLines(tg.d.Log()))
	}

	// -d allows the destructive (data-writing) tests and -S the SANITIZE
	// ones: the LUN is scratch. The URL is passed a second time as the
	// multipath URL so the MultipathIO suite and the two-nexus tests have a
	// second I_T nexus to work with.
	args := []string{"-d", "-S", "-t", row.Suite, tg.url, tg.url}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "iscsi-test-cu", args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	runErr := cmd.Start()
	if runErr == nil {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		runErr = waitSuite(tg, done, cancel)
	}
	out := buf.Bytes()
	row.Elapsed = time.Since(start)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Errorf("suite log directory: %v", err)
	}
	logPath := filepath.Join(logDir, strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(row.Name)+".log")
	if err := os.WriteFile(logPath, out, 0o644); err != nil {
		t.Errorf("save suite log: %v", err)
	}

	res, perr := parseCUnit(string(out))
	for _, w := range waiveStale(row.Suite, &res) {
		t.Logf("suite %s: waived stale libiscsi test %s", row.Name, w)
	}
	row.Result = res
	switch {
	case tg.d != nil && !tg.d.Running():
		row.Verdict = "DAEMON-DIED" // failed below
		row.Detail = fmt.Sprintf("daemon exited (%v)", tg.d.ExitState())
	case ctx.Err() != nil:
		row.Verdict = "TIMEOUT"
		row.Detail = fmt.Sprintf("did not finish within %s", timeout)
	case perr != nil:
		row.Verdict = "NO-SUMMARY"
		row.Detail = perr.Error()
	case !res.HaveSummary:
		row.Verdict = "NO-SUMMARY"
		row.Detail = fmt.Sprintf("iscsi-test-cu ended without a CUnit summary (%v)", runErr)
	case res.Failed > 0:
		row.Verdict = "FAIL"
	case res.Ran == 0:
		row.Verdict = "NO-SUMMARY"
		row.Detail = "no test ran"
	case row.MustRun && res.Skipped() > 0:
		row.Verdict = "SKIPPED"
		row.Detail = fmt.Sprintf("%d tests skipped where all must run", res.Skipped())
	default:
		row.Verdict = "PASS"
	}

	// The daemon must outlive every suite, required or not.
	if tg.d != nil {
		if !tg.d.Running() {
			row.Verdict = "DAEMON-DIED"
			t.Errorf("daemon died in suite %s; daemon log tail:\n%s", row.Name, tail(tg.d.Log(), 40))
			tg.d.Restart()
		} else if p := panicLines(tg.d.Log()); len(p) > panicsBefore {
			// Recovered at the connection boundary, so the daemon lives
			// on, but a panic is still a bug in Anvil.
			row.Verdict = "PANIC"
			row.Detail = p[panicsBefore]
			t.Errorf("daemon recovered from %d panic(s) during suite %s; first:\n%s", len(p)-panicsBefore, row.Name, p[panicsBefore])
		} else if msg, ok := healthy(tg.url); !ok {
			row.Verdict = "DAEMON-HUNG"
			t.Errorf("daemon stopped answering INQUIRY after suite %s: %s\ndaemon log tail:\n%s", row.Name, msg, tail(tg.d.Log(), 40))
			tg.d.Kill()
			tg.d.Restart()
		}
	}

	switch row.Verdict {
	case "PASS":
	case "FAIL":
		explainFailures(tg, row.Suite, &res, logDir)
		row.Result = res
		report := failureReport(res)
		if row.Required {
			t.Errorf("required suite %s: %d of %d tests failed (full log %s):\n%s", row.Name, res.Failed, res.Ran, logPath, report)
		} else {
			t.Logf("suite %s (not required yet): %d of %d tests failed:\n%s", row.Name, res.Failed, res.Ran, report)
		}
	case "SKIPPED":
		var why []string
		for _, ct := range res.Tests {
			if ct.Skipped {
				why = append(why, ct.Name+": "+ct.SkipWhy)
			}
		}
		t.Errorf("suite %s: %s:\n  %s", row.Name, row.Detail, strings.Join(why, "\n  "))
	case "TIMEOUT", "NO-SUMMARY":
		t.Errorf("suite %s did not run to its end: %s (full log %s); output tail:\n%s", row.Name, row.Detail, logPath, tail(string(out), 30))
	}
	return row
}

// diedGrace is how long iscsi-test-cu may go on after the daemon died
// before it is stopped: libiscsi retries its reconnect forever, and the
// suite's verdict is already settled.
const diedGrace = 5 * time.Second

// waitSuite waits for iscsi-test-cu to exit, cancelling it a little after
// the daemon dies rather than at the suite's time limit.
func waitSuite(tg *target, done <-chan error, cancel context.CancelFunc) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var diedAt time.Time
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			if tg.d == nil || tg.d.Running() {
				continue
			}
			if diedAt.IsZero() {
				diedAt = time.Now()
			} else if time.Since(diedAt) > diedGrace {
				cancel()
			}
		}
	}
}

// panicLines returns the daemon log lines that report a recovered panic.
func panicLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, "panic") {
			out = append(out, l)
		}
	}
	return out
}

// healthy reports whether the target still answers a standard INQUIRY on a
// fresh session.
func healthy(url string) (string, bool) {
	out, err := harness.Run(context.Background(), 30*time.Second, "iscsi-inq", url)
	if err != nil {
		return fmt.Sprintf("%v: %s", err, out), false
	}
	return "", true
}

// maxExplained bounds how many failed tests of one suite are re-run.
const maxExplained = 6

// explainFailures re-runs each failed test of suite alone with libiscsi's
// SCSI-level logging (-V), which prints every command it sends with the
// status it expects ("Send WRITE10 (Expecting SUCCESS) ...") just before
// the "[FAILED] ... got ..." line, and keeps those lines as the test's
// Context: the precise expected-versus-got a fix needs.
func explainFailures(tg *target, suite string, res *cunitResult, logDir string) {
	n := 0
	for i := range res.Tests {
		ft := &res.Tests[i]
		if !ft.Failed || n >= maxExplained {
			continue
		}
		n++
		if tg.d != nil && !tg.d.Running() {
			return
		}
		name := suite + "." + ft.Name
		out, _ := harness.Run(context.Background(), time.Minute, "iscsi-test-cu", "-d", "-S", "-V", "-t", name, tg.url, tg.url)
		os.WriteFile(filepath.Join(logDir, name+".verbose.log"), []byte(out), 0o644)
		ft.Context = failureContext(out)
	}
}

// failureContext returns the lines leading up to the first "[FAILED]" of a
// verbose run: the test's own narration and the command it sent with its
// expectation, then the failure itself. Tests that fail by CU_ASSERT alone
// print no "[FAILED]" line; for them it returns the whole narration up to
// CUnit's FAILED marker, whose "[OK]" lines are then the "got".
func failureContext(out string) []string {
	const maxNarration = 14
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if !strings.Contains(l, "[FAILED]") {
			continue
		}
		var ctx []string
		for j := i - 1; j >= 0 && len(ctx) < 4; j-- {
			t := strings.TrimSpace(lines[j])
			if t == "" || strings.HasPrefix(t, "[OK]") || strings.HasPrefix(t, "Test:") {
				continue
			}
			ctx = append([]string{t}, ctx...)
			if strings.HasPrefix(t, "Send ") && len(ctx) >= 2 {
				break
			}
		}
		return append(ctx, strings.TrimSpace(l))
	}
	var narration []string
	in := false
	for _, l := range lines {
		t := strings.TrimSpace(l)
		switch {
		case testLineRE.MatchString(l):
			in = true
			narration = narration[:0]
		case !in || t == "":
		case t == "FAILED":
			if len(narration) > maxNarration {
				narration = append([]string{"..."}, narration[len(narration)-maxNarration:]...)
			}
			return narration
		default:
			narration = append(narration, t)
		}
	}
	return []string{"(the failure did not reproduce when the test ran alone)"}
}

// failureReport lists the failed tests with libiscsi's explanation and the
// first failed assertions.
func failureReport(r cunitResult) string {
	var b strings.Builder
	for _, ft := range r.FailedTests() {
		fmt.Fprintf(&b, "  %s\n", ft.Name)
		for _, w := range ft.Why {
			fmt.Fprintf(&b, "      why: %s\n", w)
		}
		for _, a := range ft.Asserts {
			fmt.Fprintf(&b, "      assert: %s\n", a)
		}
		for _, c := range ft.Context {
			fmt.Fprintf(&b, "      | %s\n", c)
		}
	}
	return b.String()
}

// renderTable formats the per-suite results as a markdown table followed
// by the list of failed tests.
func renderTable(url string, rows []suiteRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "iscsi-test-cu (libiscsi) ALL family against %s, %s\n\n", url, time.Now().UTC().Format(time.RFC3339))
	b.WriteString("| Suite | Required | Tests run | Passed | Failed | Skipped | Inactive | Time | Verdict |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	var tot struct{ ran, passed, failed, skipped, inactive int }
	verdicts := map[string]int{}
	for _, r := range rows {
		req := ""
		if r.Required {
			req = "yes"
		}
		res := r.Result
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %.1fs | %s |\n",
			r.Name, req, res.Ran, res.RealPassed(), res.Failed, res.Skipped(), res.Inactive, r.Elapsed.Seconds(), r.Verdict)
		tot.ran += res.Ran
		tot.passed += res.RealPassed()
		tot.failed += res.Failed
		tot.skipped += res.Skipped()
		tot.inactive += res.Inactive
		verdicts[r.Verdict]++
	}
	fmt.Fprintf(&b, "| **total** | | %d | %d | %d | %d | %d | | |\n", tot.ran, tot.passed, tot.failed, tot.skipped, tot.inactive)

	var vs []string
	for v, n := range verdicts {
		vs = append(vs, fmt.Sprintf("%s %d", v, n))
	}
	sort.Strings(vs)
	fmt.Fprintf(&b, "\nSuites: %s. \"Skipped\" are tests libiscsi skipped (it counts them as passed; they are not in \"Passed\").\n", strings.Join(vs, ", "))

	var failed strings.Builder
	for _, r := range rows {
		if len(r.Result.FailedTests()) == 0 && r.Detail == "" {
			continue
		}
		fmt.Fprintf(&failed, "- %s (%s)", r.Name, r.Verdict)
		if r.Detail != "" {
			fmt.Fprintf(&failed, ": %s", r.Detail)
		}
		failed.WriteString("\n")
		for _, ft := range r.Result.FailedTests() {
			line := ft.Name
			if len(ft.Why) > 0 {
				line += ": " + ft.Why[0]
			} else if len(ft.Asserts) > 0 {
				line += ": " + ft.Asserts[0]
			}
			fmt.Fprintf(&failed, "  - %s\n", line)
			for _, c := range ft.Context {
				fmt.Fprintf(&failed, "    - `%s`\n", c)
			}
		}
	}
	if failed.Len() > 0 {
		b.WriteString("\nFailed tests:\n\n")
		b.WriteString(failed.String())
	}
	return b.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
