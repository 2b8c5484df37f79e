package benchmarks_test

import (
	"context"
	"flag"
	"fmt"
	"math"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// duelSlice is how long one turn of a duel lasts, about: its message count
// is set from raw's rate in a warm-up turn.
var duelSlice = flag.Duration("bench.duel.slice", 500*time.Millisecond, "how long one turn of BenchmarkDuel lasts, about")

// BenchmarkDuel: raw amqp091-go and the publisher, each connected for the
// whole case, publish 1 KiB messages in turns to one queue, the same
// number of messages per turn. One op is one pair of turns: raw first in
// one pair, the publisher first in the next, so that a drift of the
// machine (the broker's disk, its collector, a neighbour on the two cores)
// falls on both sides of a pair's ratio, and a steady one on both sides
// alike. Run it with -benchtime Nx for N pairs: on the 2-core development
// machine, 30 pairs gave an interval of about ±0.04 around the median
// ratio, 100 pairs about ±0.03.
//
// Cases: N goroutines each publishing one message at a time and waiting for
// its confirm, and one goroutine publishing batches of batchSize, as in
// BenchmarkPublish and BenchmarkBatch (raw shares -bench.channels
// confirm-mode channels, the publisher has as many lanes); wire=full sends
// the DefaultMarshaler's bytes, wire=lean the minimal message (the publisher
// with UUIDInMessageIDOnly).
//
// It reports, per case:
//   - ratio: the median of the pairs' ratios (the publisher's msgs/s over
//     raw's), and ratio-lo, ratio-hi, the distribution-free 95 % interval
//     of that median (medianInterval): a verdict against a target holds
//     only when the whole interval is on one side of it;
//   - raw-msgs/s and msgs/s: the median turn of each side;
//   - cpu-ratio: the median of the pairs' ratios of CPU time per message
//     (the whole process's: the side not publishing is idle);
//   - raw-p50-µs, p50-µs, raw-p99-µs, p99-µs: over every call of every
//     turn (a batch per call in the batch cases).
//
// The queue is purged after every turn, untimed, so that each turn starts
// on an empty queue. Without it, the queue grown by the turns before
// stalled the broker at random for up to hundreds of milliseconds, more
// often the longer it was, and one pair's ratio ranged from 0.4 to 2.6
// (RabbitMQ 3.10.8, persistent and transient messages alike); purged, 0.8
// to 1.1. BenchmarkPublish's cases, each on a queue of its own that grows
// for its 2 s, carry that noise.
//
// A turn ends when its last message is confirmed, so its last calls run
// with fewer goroutines than the rest: both sides pay that tail, a
// latency's worth in a turn of -bench.duel.slice.
func BenchmarkDuel(b *testing.B) {
	const size = 1 << 10
	for _, goroutines := range []int{1, 16, 64, 256} {
		for _, lean := range []bool{false, true} {
			if lean && goroutines == 1 {
				continue // as BenchmarkPublish: the lean wire at 16 goroutines and more
			}
			b.Run(fmt.Sprintf("size=1KiB/goroutines=%d/wire=%s", goroutines, wireName(lean)), func(b *testing.B) {
				duel(b, duelPublishers(b, size, lean), goroutines, 1)
			})
		}
	}
	for _, lean := range []bool{false, true} {
		b.Run(fmt.Sprintf("size=1KiB/batch=%d/wire=%s", batchSize, wireName(lean)), func(b *testing.B) {
			duel(b, duelBatchers(b, size, lean), 1, batchSize)
		})
	}
}

func wireName(lean bool) string {
	if lean {
		return "lean"
	}
	return "full"
}

func marshalerFor(lean bool) func(*message.Message) (amqp091.Publishing, error) {
	if lean {
		return marshalLean
	}
	return marshal
}

// duelists are the two sides of a duel, publishing to one queue.
type duelists struct {
	raw, ours publishFunc
	// purge empties the queue, between turns.
	purge func() error
}

// publishFunc is one call of one side of a duel: worker (of the turn's
// goroutines) publishes n messages and waits for their confirms.
type publishFunc func(worker, n int) error

// duelQueue is a queue for one case, deleted after it, and the function
// that purges it, on a channel of conn.
func duelQueue(b *testing.B, conn *amqp091.Connection) (string, func() error) {
	q := queue(b)
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	return q, func() error {
		_, err := ch.QueuePurge(q, false)
		return err
	}
}

// duelPublishers are raw amqp091-go and the publisher, each sending one
// message per call, as benchRaw and benchResilient send theirs.
func duelPublishers(b *testing.B, size int, lean bool) duelists {
	var conn *amqp091.Connection
	labelled(0, func() { conn = brokertest.Dial(b) })
	b.Cleanup(func() { conn.Close() })
	chans := confirmChannels(b, conn)
	q, purge := duelQueue(b, conn)
	ctx, cancel := rawDeadline()
	b.Cleanup(cancel)
	marshal := marshalerFor(lean)
	var pub *resilient.Publisher
	labelled(1, func() { pub = newResilient(b, lean) })
	return duelists{
		raw: func(worker, _ int) error {
			msg, err := marshal(newMessage(size))
			if err != nil {
				return err
			}
			return publishConfirmed(ctx, chans[worker%len(chans)], q, msg)
		},
		ours:  func(int, int) error { return pub.Publish(q, newMessage(size)) },
		purge: purge,
	}
}

// duelBatchers are raw amqp091-go pipelining on one channel and the
// publisher with one call per batch, as in BenchmarkBatch.
func duelBatchers(b *testing.B, size int, lean bool) duelists {
	var conn *amqp091.Connection
	labelled(0, func() { conn = brokertest.Dial(b) })
	b.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	q, purge := duelQueue(b, conn)
	ctx, cancel := rawDeadline()
	b.Cleanup(cancel)
	var pub *resilient.Publisher
	labelled(1, func() { pub = newResilient(b, lean) })
	raw, ours := rawBatcher(ctx, ch, q, size, marshalerFor(lean)), resilientBatcher(pub, q, size)
	return duelists{
		raw:   func(_, n int) error { return raw(n) },
		ours:  func(_, n int) error { return ours(n) },
		purge: purge,
	}
}

// duel runs b.N pairs of turns of d's raw and ours, each call of either
// publishing perCall messages from one of goroutines goroutines, and
// reports as BenchmarkDuel says.
func duel(b *testing.B, d duelists, goroutines, perCall int) {
	sides := [2]publishFunc{d.raw, d.ours}
	var lat [2][]time.Duration
	play := func(side, messages int) turn {
		var t turn
		var err error
		labelled(side, func() { t, err = runTurn(goroutines, perCall, messages, sides[side], &lat[side]) })
		if err == nil {
			err = d.purge()
		}
		if err != nil {
			b.Fatal(err)
		}
		return t
	}
	// A warm-up turn each (connections, channels, the queue's first
	// writes), not counted; raw's sets the turns' length.
	warmUp := roundUp(max(200, goroutines*8), perCall)
	first := play(0, warmUp)
	play(1, warmUp)
	messages := roundUp(max(warmUp, int(first.rate*duelSlice.Seconds())), perCall)
	lat = [2][]time.Duration{}

	turns := [2][]turn{}
	b.ResetTimer()
	for pair := range b.N {
		for _, side := range turnOrder(pair) {
			turns[side] = append(turns[side], play(side, messages))
		}
	}
	b.StopTimer()
	reportDuel(b, turns)
	for side, prefix := range [2]string{"raw-", ""} {
		slices.Sort(lat[side])
		b.ReportMetric(quantile(lat[side], 0.50), prefix+"p50-µs")
		b.ReportMetric(quantile(lat[side], 0.99), prefix+"p99-µs")
	}
}

// reportDuel reports the ratios of b.N pairs of turns, turns[0] raw's and
// turns[1] ours, as BenchmarkDuel says.
func reportDuel(b *testing.B, turns [2][]turn) {
	ratios, cpuRatios := make([]float64, b.N), make([]float64, b.N)
	for i := range b.N {
		ratios[i] = turns[1][i].rate / turns[0][i].rate
		cpuRatios[i] = float64(turns[1][i].cpuPerMsg) / float64(turns[0][i].cpuPerMsg)
	}
	b.Logf("pairs' ratios in order (odd pairs: ours first): %.3f", ratios)
	slices.Sort(ratios)
	lo, hi := medianInterval(ratios)
	b.ReportMetric(medianOf(ratios), "ratio")
	b.ReportMetric(lo, "ratio-lo")
	b.ReportMetric(hi, "ratio-hi")
	b.ReportMetric(medianOf(cpuRatios), "cpu-ratio")
	b.ReportMetric(float64(b.N), "pairs")
	rates := func(ts []turn) []float64 {
		r := make([]float64, len(ts))
		for i, t := range ts {
			r[i] = t.rate
		}
		return r
	}
	b.ReportMetric(medianOf(rates(turns[0])), "raw-msgs/s")
	b.ReportMetric(medianOf(rates(turns[1])), "msgs/s")
	b.ReportMetric(0, "ns/op") // a pair's wall time says nothing
}

// labelled runs f with the pprof label side=raw (side 0) or side=ours
// (1). The goroutines f starts carry it too (amqp091-go's reader, the
// publisher's lanes, a turn's callers), so that a -cpuprofile of a duel
// splits by side: go tool pprof -tagfocus side=ours.
func labelled(side int, f func()) {
	pprof.Do(context.Background(), pprof.Labels("side", [2]string{"raw", "ours"}[side]), func(context.Context) { f() })
}

// turnOrder is the order of pair's turns, raw (0) and ours (1): raw first
// in even pairs, ours first in odd ones, so that a drift of the machine
// within pairs falls on both sides alike.
func turnOrder(pair int) [2]int {
	if pair%2 == 1 {
		return [2]int{1, 0}
	}
	return [2]int{0, 1}
}

// runTurn publishes messages messages with publish, perCall per call, from
// goroutines goroutines, appending each call's latency to lat.
func runTurn(goroutines, perCall, messages int, publish publishFunc, lat *[]time.Duration) (turn, error) {
	calls := int64(messages / perCall)
	var claimed atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	m := meter{messages: messages}
	m.begin()
	for worker := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, calls/int64(goroutines)+1)
			var err error
			for err == nil && claimed.Add(1) <= calls {
				t := time.Now()
				if err = publish(worker, perCall); err == nil {
					local = append(local, time.Since(t))
				}
			}
			mu.Lock()
			*lat = append(*lat, local...)
			if firstErr == nil {
				firstErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	m.end()
	return m.measured, firstErr
}

func roundUp(n, multiple int) int { return (n + multiple - 1) / multiple * multiple }

func medianOf(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// medianInterval is a 95 % confidence interval for the median of the
// population sorted was drawn from, distribution-free: the order
// statistics x(j) and x(n+1-j), for the largest j with P(B < j) ≤ 2.5 %,
// B binomial(n, ½) (the count of draws below the median). With fewer than
// six draws no j qualifies, and the interval is the whole range.
func medianInterval(sorted []float64) (lo, hi float64) {
	n := len(sorted)
	if n == 0 {
		return math.NaN(), math.NaN()
	}
	j, below := 0, 0.0
	p := math.Pow(0.5, float64(n)) // P(B = 0)
	for k := 0; k < n; k++ {
		if below+p > 0.025 {
			break
		}
		below += p
		j = k + 1
		p *= float64(n-k) / float64(k+1) // P(B = k+1)
	}
	if j == 0 {
		return sorted[0], sorted[n-1]
	}
	return sorted[j-1], sorted[n-j]
}

func TestMedianInterval(t *testing.T) {
	sorted := func(n int) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = float64(i + 1) // x(i) = i, 1-based
		}
		return v
	}
	// The order statistics of the usual tables of the sign test's interval.
	for _, c := range []struct{ n, lo, hi int }{{5, 1, 5}, {6, 1, 6}, {9, 2, 8}, {10, 2, 9}, {20, 6, 15}, {30, 10, 21}} {
		lo, hi := medianInterval(sorted(c.n))
		if lo != float64(c.lo) || hi != float64(c.hi) {
			t.Errorf("n=%d: interval x(%v)..x(%v), want x(%d)..x(%d)", c.n, lo, hi, c.lo, c.hi)
		}
	}
}
