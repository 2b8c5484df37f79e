package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestReportNamesEachFailureAndKeepsPassingOutputQuiet(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"start","Package":"p"}`,
		`{"Action":"run","Package":"p","Test":"TestQuiet"}`,
		`{"Action":"output","Package":"p","Test":"TestQuiet","Output":"chatty log line\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestQuiet"}`,
		`{"Action":"run","Package":"p","Test":"TestBroken"}`,
		`{"Action":"output","Package":"p","Test":"TestBroken","Output":"x_test.go:9: 3 lost\n"}`,
		`{"Action":"output","Package":"p","Test":"TestBroken","Output":"helper.go:74: closed in a cleanup\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestBroken","Elapsed":1.5}`,
		`{"Action":"run","Package":"p","Test":"TestSkipped"}`,
		`{"Action":"output","Package":"p","Test":"TestSkipped","Output":"    y_test.go:3: needs a cluster\n"}`,
		`{"Action":"output","Package":"p","Test":"TestSkipped","Output":"--- SKIP: TestSkipped (0.00s)\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestSkipped"}`,
		`{"Action":"fail","Package":"p","Elapsed":2}`,
		`{"Action":"start","Package":"q"}`,
		`{"Action":"run","Package":"q","Test":"TestHangs"}`,
		`{"Action":"output","Package":"q","Test":"TestHangs","Output":"panic: test timed out\n"}`,
		`{"Action":"fail","Package":"q","Elapsed":3}`,
		`{"Action":"start","Package":"r"}`,
		`{"Action":"start","Package":"s"}`,
		`{"Action":"run","Package":"s","Test":"TestOK"}`,
		`{"Action":"pass","Package":"s","Test":"TestOK"}`,
		`{"Action":"fail","Package":"s","Elapsed":1}`,
		`{"ImportPath":"b","Action":"build-output","Output":"b.go:1: syntax error\n"}`,
		`{"ImportPath":"b","Action":"build-fail"}`,
	}, "\n")
	var out bytes.Buffer
	r := newReport(&out, "4.0 race")
	r.read(strings.NewReader(in))
	failures := r.finish()

	want := []string{
		"[4.0 race] p TestBroken: x_test.go:9: 3 lost",
		"[4.0 race] q TestHangs (did not finish)",
		"[4.0 race] s (the package itself: TestMain, a leak check, a panic or a build error)",
		"[4.0 race] b (build failed)",
		"[4.0 race] r (the run ended before it reported: killed or crashed)",
	}
	if !slices.Equal(failures, want) {
		t.Errorf("failures:\n%s\nwant:\n%s", strings.Join(failures, "\n"), strings.Join(want, "\n"))
	}
	text := out.String()
	for _, s := range []string{"3 lost", "panic: test timed out", "b.go:1: syntax error",
		"skipped: p TestSkipped: y_test.go:3: needs a cluster", "2 passed, 5 failed, 1 skipped"} {
		if !strings.Contains(text, s) {
			t.Errorf("output lacks %q:\n%s", s, text)
		}
	}
	if strings.Contains(text, "chatty log line") {
		t.Errorf("a passing test's output was shown:\n%s", text)
	}
}
