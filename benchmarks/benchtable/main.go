// Command benchtable reads the output of the benchmarks in this module
// (go test -bench, any -count) and prints a Markdown table comparing the
// resilient publisher with raw amqp091-go and watermill-amqp: medians over
// the runs, as ratios, each against its target. A pair raw-X, resilient-X
// (raw-lean and resilient-lean: the lean wire) has a row of its own.
// The duels' cases (BenchmarkDuel, BenchmarkDuelConsume), which report
// their own paired ratios and their interval, have a table of their own
// (duelTable).
//
//	go test ./benchmarks -run '^$' -bench . -count 3 | tee bench.txt | go run ./benchmarks/benchtable
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A result line: name-GOMAXPROCS, iterations, then value/unit pairs.
var line = regexp.MustCompile(`^Benchmark(\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// samples holds, per case and implementation, every value of every unit.
type samples map[string]map[string]map[string][]float64

// duelImpl is the implementation a BenchmarkDuel case is filed under: its
// lines name none, for each reports both sides.
const duelImpl = "duel"

func parse(r io.Reader) (samples, []string, error) {
	s := samples{}
	var order []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		text := sc.Text()
		fmt.Fprintln(os.Stderr, text) // the raw output stays visible
		m := line.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		name, impl, ok := strings.Cut(m[1], "/impl=")
		if strings.HasPrefix(name, "Duel/") || strings.HasPrefix(name, "DuelConsume/") {
			impl, ok = duelImpl, true
		}
		if !ok {
			continue
		}
		if s[name] == nil {
			s[name] = map[string]map[string][]float64{}
			order = append(order, name)
		}
		if s[name][impl] == nil {
			s[name][impl] = map[string][]float64{}
		}
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			s[name][impl][fields[i+1]] = append(s[name][impl][fields[i+1]], v)
		}
	}
	return s, order, sc.Err()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func (s samples) get(name, impl, unit string) float64 { return median(s[name][impl][unit]) }

// pairedRatios are ours / raw in each round, where both ran in every round:
// a drift of the machine between rounds (the two cores are shared with the
// broker, and with neighbours) then falls on both sides of each ratio. Nil
// otherwise.
func pairedRatios(raw, ours []float64) []float64 {
	if len(raw) != len(ours) || len(raw) == 0 {
		return nil
	}
	ratios := make([]float64, len(raw))
	for i := range raw {
		ratios[i] = ours[i] / raw[i]
	}
	return ratios
}

// pairedRatio is the median of the rounds' ratios (pairedRatios), or, when
// the rounds do not pair, the ratio of the medians.
func pairedRatio(raw, ours []float64) float64 {
	if ratios := pairedRatios(raw, ours); ratios != nil {
		return median(ratios)
	}
	return median(ours) / median(raw)
}

// spread is the lowest and highest of the rounds' ratios, "" when the
// rounds do not pair: how far one round can land from the median on this
// machine, so that a ratio near its target is read for what it is.
func spread(raw, ours []float64) string {
	ratios := pairedRatios(raw, ours)
	if len(ratios) < 2 {
		return ""
	}
	return fmt.Sprintf("%.2f–%.2f", slices.Min(ratios), slices.Max(ratios))
}

func check(ratio, target float64, atLeast bool) string {
	if target == 0 {
		return ""
	}
	ok := ratio >= target
	sign := "≥"
	if !atLeast {
		ok, sign = ratio <= target, "≤"
	}
	mark := "✅"
	if !ok {
		mark = "❌"
	}
	return fmt.Sprintf("%s %s %.2f", mark, sign, target)
}

// variant is a pair of implementations compared on one row, e.g. raw-lean
// and resilient-lean.
type variant struct {
	raw, ours string // impl names
	label     string // after the case's name
}

var variants = []variant{
	{"raw", "resilient", ""},
	{"raw-lean", "resilient-lean", " (lean wire: UUID in message_id only)"},
	{"raw-batched", "resilient", " (against raw acking in batches the same way)"},
	{"raw", "resilient-unbatched", " (AckBatch 1: each ack at once)"},
	{"raw-owned", "resilient", " (against raw with one goroutine owning each channel, as the lanes do)"},
}

// target is the ratio a row must reach: publishing at least 0.95 of raw
// (but for one goroutine, whose bound is its latency); consuming a backlog
// with acks in batches at least 1.2 of raw acking each message, and 1.0 of
// raw batching the same way; at prefetch 1, which batches nothing, 0.95 of
// raw; none for the others (end-to-end latency, quorum queues, unbatched:
// for information).
func target(name string, v variant) float64 {
	switch {
	case strings.Contains(name, "classic/"):
		if strings.HasSuffix(name, "prefetch=1") {
			// Nothing to batch: as fast as raw, within 5 %.
			if v.raw == "raw" && v.ours == "resilient" {
				return 0.95
			}
			return 0
		}
		if v.ours != "resilient" {
			return 0
		}
		if v.raw == "raw-batched" {
			return 1.0
		}
		return 1.2
	case strings.Contains(name, "e2e/"), strings.Contains(name, "quorum/"), v.raw == "raw-owned":
		return 0
	case strings.Contains(name, "batch="), !strings.Contains(name, "goroutines=1/") && !strings.HasSuffix(name, "goroutines=1"):
		return 0.95
	}
	return 0
}

// row prints the row comparing raw and resilient of v in case name, if the
// run has both.
func (s samples) row(name string, v variant) {
	rawImpl, ourImpl := v.raw, v.ours
	if s[name][rawImpl] == nil || s[name][ourImpl] == nil {
		return
	}
	get := func(unit string) (raw, ours float64) { return s.get(name, rawImpl, unit), s.get(name, ourImpl, unit) }
	raw, ours := get("msgs/s")
	ratio := pairedRatio(s[name][rawImpl]["msgs/s"], s[name][ourImpl]["msgs/s"])
	rounds := spread(s[name][rawImpl]["msgs/s"], s[name][ourImpl]["msgs/s"])
	cpuRaw, cpuOurs := get("cpu-µs/msg")
	cpuRatio := pairedRatio(s[name][rawImpl]["cpu-µs/msg"], s[name][ourImpl]["cpu-µs/msg"])
	p50Raw, p50Ours := get("p50-µs")
	p99Raw, p99Ours := get("p99-µs")
	allocsRaw, allocsOurs := get("allocs/op")
	bytesRaw, bytesOurs := get("B/op")
	fmt.Printf("| %s%s | %.0f | %.0f | %.2f | %s | %s | %.0f / %.0f | %.0f / %.0f | %.0f / %.0f | %.0f / %.0f | %.1f / %.1f (%.2f) |\n",
		name, v.label, raw, ours, ratio, rounds, check(ratio, target(name, v), true),
		p50Raw, p50Ours, p99Raw, p99Ours, allocsRaw, allocsOurs, bytesRaw, bytesOurs,
		cpuRaw, cpuOurs, cpuRatio)
}

// duelTable prints the duels' cases: each line is one run of pairs
// of turns, with the median of its pairs' ratios and that median's 95 %
// interval; over several runs, the medians of each. A verdict holds only
// when the whole interval is on one side of the target: the row says
// "undecided" otherwise, however close its median.
func (s samples) duelTable(order []string) {
	var names []string
	for _, name := range order {
		if s[name][duelImpl] != nil {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return
	}
	fmt.Print("\nBenchmarkDuel and BenchmarkDuelConsume: raw and ours in turns (publishing to one queue purged between turns; consuming a queue preloaded right before the turn); ratio = the median of the pairs' ratios (ours / raw msgs/s), with its 95 % interval; the CPU ratio is the median of the pairs' CPU-per-message ratios.\n\n")
	fmt.Println("| case | raw msgs/s | resilient msgs/s | ratio | 95 % interval | target | p50 µs raw / ours | p99 µs raw / ours | CPU ratio |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, name := range names {
		get := func(unit string) float64 { return s.get(name, duelImpl, unit) }
		ratio, lo, hi := get("ratio"), get("ratio-lo"), get("ratio-hi")
		judged := verdict(lo, hi, duelTarget(name))
		if pairs := s[name][duelImpl]["pairs"]; pairs != nil && median(pairs) < minPairs { // runs before 2026-12-06 did not say
			judged = fmt.Sprintf("none: fewer than %d pairs have no 95 %% interval", minPairs)
		}
		pair := func(raw, ours string) string {
			if get(raw) == 0 && get(ours) == 0 {
				return "–" // consuming: no call to time
			}
			return fmt.Sprintf("%.0f / %.0f", get(raw), get(ours))
		}
		fmt.Printf("| %s | %.0f | %.0f | %.2f | %.2f–%.2f | %s | %s | %s | %.2f |\n",
			name, get("raw-msgs/s"), get("msgs/s"), ratio, lo, hi, judged,
			pair("raw-p50-µs", "p50-µs"), pair("raw-p99-µs", "p99-µs"), get("cpu-ratio"))
	}
}

// minPairs is the fewest pairs whose median has a 95 % interval narrower
// than their whole range (the sign test's: medianInterval in the
// benchmarks).
const minPairs = 6

// duelTarget is what a duel's ratio must reach: publishing, 0.95 of raw's
// rate, at every concurrency and in batches, on either wire; consuming, as
// target says of BenchmarkConsume's rows: 0.95 of raw at prefetch 1, 1.2
// of raw acking each and 1.0 of raw batching the same way at 100 and 500
// (handing each message over to a handler goroutine as watermill does, or
// not); 0.95 too of raw handing each message to a handler goroutine
// (prefetch 1), the Subscriber's own cost.
func duelTarget(name string) float64 {
	switch {
	case !strings.HasPrefix(name, "DuelConsume/"), strings.Contains(name, "prefetch=1/"):
		return 0.95
	case strings.HasSuffix(name, "against=raw-batched"), strings.HasSuffix(name, "against=raw-handoff-batched"):
		return 1.0
	}
	return 1.2
}

// verdict weighs an interval [lo, hi] against an at-least target.
func verdict(lo, hi, target float64) string {
	switch {
	case lo >= target:
		return fmt.Sprintf("✅ ≥ %.2f", target)
	case hi < target:
		return fmt.Sprintf("❌ ≥ %.2f", target)
	}
	return fmt.Sprintf("undecided: ≥ %.2f within the interval", target)
}

func main() {
	s, order, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n := 0
	for _, name := range order {
		for _, v := range variants {
			n = max(n, len(s[name][v.ours]["msgs/s"]))
		}
	}
	s.duelTable(order)
	if n == 0 {
		return // a run of duels only
	}
	fmt.Printf("\nMedians of %d run(s). raw = amqp091-go doing the same work; ratio = resilient / raw, the median of the rounds' ratios (each round runs both), and the lowest and highest of them; the CPU ratio is paired the same way.\n\n", n)
	fmt.Println("| case | raw msgs/s | resilient msgs/s | ratio | rounds | target | p50 µs raw / ours | p99 µs raw / ours | allocs/msg raw / ours | B/msg raw / ours | CPU µs/msg raw / ours (ratio ≤ 2) |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, name := range order {
		for _, v := range variants {
			s.row(name, v)
		}
	}
	fmt.Println()
	for _, name := range order {
		if strings.HasPrefix(name, "Publish/") && strings.HasSuffix(name, "/goroutines=1") && s[name]["raw"] != nil && s[name]["resilient"] != nil {
			raw, ours := s.get(name, "raw", "p50-µs"), s.get(name, "resilient", "p50-µs")
			fmt.Printf("- %s, p50 latency vs raw synchronous confirm: %.0f µs / %.0f µs = %.2f %s\n", name, ours, raw, ours/raw, check(ours/raw, 1.15, false))
		}
		if wm := s[name]["watermill-amqp"]; wm != nil && s[name]["resilient"] != nil {
			w, ours := median(wm["msgs/s"]), s.get(name, "resilient", "msgs/s")
			fmt.Printf("- %s, vs watermill-amqp (confirms, pool of 8): %.0f / %.0f msgs/s = %.2f× %s\n", name, ours, w, ours/w, check(ours/w, 2.5, true))
		}
	}
}
