// Command testreport reads `go test -json` on its standard input and turns
// it into what a person running the suite wants to see: a line per package
// as it ends, a progress line while a long one runs, the output of each
// failed test (and only of those), and at the end a summary naming every
// failed test with its package. The whole output goes to a log file beside.
//
//	go test -json ./... | go run ./internal/cmd/testreport -label 3.10 -log test.log -summary failed.txt
//
// It exits 1 when a test or a package failed, or when the input ended
// before every package reported (a killed or crashed run), 0 otherwise.
// The summary file (appended to) lets a script that ran several phases
// print every failure at the very end, after all of them.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// event is one line of test2json's output.
type event struct {
	Time       time.Time
	Action     string
	Package    string
	ImportPath string // build-output and build-fail (Go 1.24 and later)
	Test       string
	Elapsed    float64
	Output     string
}

// tailLines is how much of a failed test's output is shown: its end, where
// the failure is; the log file has all of it.
const tailLines = 80

func main() {
	label := flag.String("label", "", "a prefix for every line printed (e.g. the broker line)")
	logPath := flag.String("log", "", "file for the whole output (default: none)")
	summaryPath := flag.String("summary", "", "file to append a line per failed test or package to")
	countsPath := flag.String("counts", "", "file to append a line \"passed failed skipped\" to")
	every := flag.Duration("progress", time.Minute, "how often to say what still runs")
	flag.Parse()

	r := newReport(os.Stdout, *label)
	if *logPath != "" {
		f, err := os.Create(*logPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testreport:", err)
			os.Exit(2)
		}
		defer f.Close()
		r.log = f
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(*every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				r.progress()
			}
		}
	}()
	r.read(os.Stdin)
	close(stop)
	wg.Wait()

	failures := r.finish()
	if *summaryPath != "" && len(failures) > 0 {
		appendLines(*summaryPath, failures...)
	}
	if *countsPath != "" {
		appendLines(*countsPath, fmt.Sprintf("%d %d %d", r.passed, len(failures), len(r.skipped)))
	}
	if len(failures) > 0 {
		os.Exit(1)
	}
}

func appendLines(path string, lines ...string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		return
	}
	defer f.Close()
	for _, l := range lines {
		fmt.Fprintln(f, l)
	}
}

// report is the state of one run: what runs, what each test printed.
type report struct {
	mu     sync.Mutex
	out    io.Writer
	log    io.Writer
	prefix string
	start  time.Time

	outputs  map[string][]string  // test key -> its last lines
	running  map[string]time.Time // test key -> when it started
	packages map[string]string    // package -> its result ("" while it runs)
	pkgStart map[string]time.Time
	failed   []string // "package TestName" or "package (package)"
	passed   int
	skipped  []string // "package TestName: reason"
}

func newReport(out io.Writer, label string) *report {
	prefix := ""
	if label != "" {
		prefix = "[" + label + "] "
	}
	return &report{
		out: out, prefix: prefix, start: time.Now(),
		outputs: map[string][]string{}, running: map[string]time.Time{},
		packages: map[string]string{}, pkgStart: map[string]time.Time{},
	}
}

func key(e event) string { return e.Package + " " + e.Test }

func (r *report) say(format string, args ...any) {
	fmt.Fprintf(r.out, r.prefix+format+"\n", args...)
}

func (r *report) read(in io.Reader) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not test2json: a build error, or go's own message. Keep it.
			r.mu.Lock()
			r.say("%s", line)
			if r.log != nil {
				fmt.Fprintf(r.log, "%s\n", line)
			}
			r.mu.Unlock()
			continue
		}
		r.handle(e)
	}
}

func (r *report) handle(e event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Output != "" && r.log != nil {
		io.WriteString(r.log, e.Output)
	}
	k := key(e)
	switch e.Action {
	case "build-output":
		r.say("%s", strings.TrimRight(e.Output, "\n"))
	case "build-fail":
		r.failed = append(r.failed, e.ImportPath+" (build failed)")
	case "start":
		r.packages[e.Package] = ""
		r.pkgStart[e.Package] = time.Now()
	case "run":
		r.running[k] = time.Now()
	case "output":
		lines := append(r.outputs[k], strings.TrimRight(e.Output, "\n"))
		if len(lines) > 4*tailLines {
			lines = slices.Clone(lines[len(lines)-tailLines:])
		}
		r.outputs[k] = lines
	case "pass", "fail", "skip":
		delete(r.running, k)
		if e.Test == "" {
			r.endPackage(e)
			return
		}
		switch e.Action {
		case "pass":
			r.passed++
			delete(r.outputs, k)
		case "skip":
			r.skipped = append(r.skipped, fmt.Sprintf("%s %s: %s", e.Package, e.Test, skipReason(r.outputs[k])))
			delete(r.outputs, k)
		case "fail":
			r.failed = append(r.failed, fmt.Sprintf("%s %s%s", e.Package, e.Test, failReason(r.outputs[k])))
			r.say("--- FAIL: %s %s (%.1fs); its output's end:", e.Package, e.Test, e.Elapsed)
			r.printTail(r.outputs[k])
			delete(r.outputs, k)
		}
	}
}

// endPackage reports a package's end; a package that failed with no test
// failed (a TestMain, a leak check, a build error, a panic, a time-out)
// shows its own output.
func (r *report) endPackage(e event) {
	r.packages[e.Package] = e.Action
	took := time.Since(r.pkgStart[e.Package]).Round(100 * time.Millisecond)
	if e.Elapsed > 0 {
		took = time.Duration(e.Elapsed * float64(time.Second)).Round(100 * time.Millisecond)
	}
	pk := e.Package + " "
	switch e.Action {
	case "pass":
		r.say("ok    %s (%s)", e.Package, took)
	case "skip":
		r.say("skip  %s (no tests)", e.Package)
	case "fail":
		r.say("FAIL  %s (%s)", e.Package, took)
		ownFailure := true
		for _, f := range r.failed {
			if strings.HasPrefix(f, pk) {
				ownFailure = false
			}
		}
		// Tests cut short by a panic or a time-out never reported.
		for k := range r.running {
			if strings.HasPrefix(k, pk) {
				r.failed = append(r.failed, k+" (did not finish)")
				r.say("--- did not finish: %s; its output's end:", k)
				r.printTail(r.outputs[k])
				delete(r.running, k)
				ownFailure = false
			}
		}
		if ownFailure {
			r.failed = append(r.failed, e.Package+" (the package itself: TestMain, a leak check, a panic or a build error)")
			r.say("--- FAIL: %s itself; its output's end:", e.Package)
		}
		r.printTail(r.outputs[pk])
	}
	delete(r.outputs, pk)
}

func (r *report) printTail(lines []string) {
	if len(lines) > tailLines {
		r.say("    ... (%d lines before: see the log)", len(lines)-tailLines)
		lines = lines[len(lines)-tailLines:]
	}
	for _, l := range lines {
		fmt.Fprintf(r.out, "    %s\n", l)
	}
}

// progress says what still runs, so that a long phase is not silent.
func (r *report) progress() {
	r.mu.Lock()
	defer r.mu.Unlock()
	var tests []string
	for k, since := range r.running {
		// A parent test runs while its subtests do: name the leaves.
		leaf := true
		for other := range r.running {
			if other != k && strings.HasPrefix(other, k+"/") {
				leaf = false
				break
			}
		}
		if leaf {
			tests = append(tests, fmt.Sprintf("%s (%s)", strings.TrimSpace(k), time.Since(since).Round(time.Second)))
		}
	}
	slices.Sort(tests)
	if len(tests) == 0 {
		r.say("%s: building or between packages", time.Since(r.start).Round(time.Second))
		return
	}
	r.say("%s: %d passed so far; running %s", time.Since(r.start).Round(time.Second), r.passed, strings.Join(tests, ", "))
}

// finish prints the closing summary and returns the failures.
func (r *report) finish() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pkg, result := range r.packages {
		if result == "" {
			r.failed = append(r.failed, pkg+" (the run ended before it reported: killed or crashed)")
		}
	}
	for k := range r.running {
		if !slices.ContainsFunc(r.failed, func(f string) bool { return strings.HasPrefix(f, strings.TrimSpace(k)) }) {
			r.failed = append(r.failed, strings.TrimSpace(k)+" (did not finish)")
		}
	}
	for _, s := range r.skipped {
		r.say("skipped: %s", s)
	}
	r.say("%d passed, %d failed, %d skipped in %s", r.passed, len(r.failed), len(r.skipped),
		time.Since(r.start).Round(time.Second))
	var out []string
	for _, f := range r.failed {
		out = append(out, r.prefix+f)
	}
	return out
}

// failReason is what the summary line of a failed test adds, so that the
// end of a long run says why as well as where: the last line the test
// printed from a _test.go file (a t.Errorf or t.Fatalf is usually the
// last of those; a helper's own logging, from a plain .go file, comes
// after it as the test's cleanups run), else from any file, shortened;
// nothing when it printed none (a parent test whose subtest failed).
func failReason(lines []string) string {
	const most = 240
	for _, pattern := range []*regexp.Regexp{testFileLine, fileLine} {
		for i := len(lines) - 1; i >= 0; i-- {
			l := strings.TrimSpace(lines[i])
			if !pattern.MatchString(l) {
				continue
			}
			if len(l) > most {
				l = l[:most] + "..."
			}
			return ": " + l
		}
	}
	return ""
}

// fileLine matches a line printed by t.Log, t.Error or t.Fatal;
// testFileLine, one printed from a test file.
var (
	fileLine     = regexp.MustCompile(`^[\w.-]+\.go:\d+: `)
	testFileLine = regexp.MustCompile(`^[\w.-]+_test\.go:\d+: `)
)

// skipReason is the message t.Skip printed: the last line that is not the
// "--- SKIP" header itself.
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "--- SKIP") && !strings.HasPrefix(l, "=== ") {
			return l
		}
	}
	return "(no reason given)"
}
