package benchmarks_test

import (
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

var (
	recoveryAway = flag.Duration("recovery.away", 10*time.Second, "how long TestRecovery keeps the broker stopped")
	recoverySVG  = flag.String("recovery.svg", "", "file TestRecovery plots throughput over its run into (SVG)")
)

const (
	recoveryGoroutines = 16
	recoveryBucket     = 100 * time.Millisecond
)

// TestRecovery measures, with the default settings, how long the publisher
// takes from the broker accepting connections again to the first confirmed
// publish, and how much memory it holds while the broker is away under
// steady publishing. 16 goroutines publish 1 KiB messages; the broker's
// application is stopped for -recovery.away (10 s), then started. Every
// confirmed message is then found in the queue, by UUID.
//
// A prober dials the broker every 20 ms while it is away: the first
// handshake that succeeds is when the broker accepts connections again.
//
//	go test ./benchmarks -run TestRecovery -v -args -recovery.svg=docs/recovery.svg
func TestRecovery(t *testing.T) {
	brokertest.Need(t)
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := pub.Close(); err != nil {
			t.Error(err)
		}
	}()
	q := brokertest.Name("recovery")
	brokertest.DeleteQueues(t, q)

	start := time.Now()
	var run timeline
	run.start = start
	stop := make(chan struct{})
	var confirmed brokertest.IDs
	var failures atomic.Int64
	var wg sync.WaitGroup
	for range recoveryGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				msg := newMessage(1 << 10)
				if err := pub.Publish(q, msg); err != nil {
					t.Errorf("Publish: %v", err)
					failures.Add(1)
					return
				}
				confirmed.Add(msg.UUID)
				run.confirmed(time.Now())
			}
		}()
	}
	mem := sampleHeap(stop, &wg)

	run.await(t, 6000)
	steadyHeap := mem.peak()
	run.mark("stop_app")
	brokertest.StopApp(t)
	stopped := run.stopped()
	mem.reset()
	time.Sleep(*recoveryAway) // the fault itself: the broker stays away this long
	awayHeap := mem.peak()
	awayGoroutines := runtime.NumGoroutine()
	run.mark("start_app")
	accepted := make(chan time.Time, 1)
	go probe(accepted)
	brokertest.StartApp(t)
	acceptedAt := <-accepted
	run.markAt("broker accepts", acceptedAt)
	first := run.firstAfterStop(t)
	run.markAt("first confirm", first)
	run.await(t, 6000)
	close(stop)
	wg.Wait()

	recovery := first.Sub(acceptedAt)
	t.Logf("broker stopped at +%v, accepting connections again at +%v; first confirm %v after that",
		stopped.Sub(start).Round(time.Millisecond), acceptedAt.Sub(start).Round(time.Millisecond), recovery.Round(time.Millisecond))
	t.Logf("heap in use: %.1f MiB publishing steadily, at most %.1f MiB while the broker was away (%d goroutines publishing, %d goroutines in the process)",
		mib(steadyHeap), mib(awayHeap), recoveryGoroutines, awayGoroutines)
	// Nothing queues while the broker is away: each caller waits in its
	// own Publish with its own message. Allow for the GC's slack.
	if grown := int64(awayHeap) - int64(steadyHeap); grown > 16<<20 {
		t.Errorf("the heap grew by %.1f MiB while the broker was away", mib(uint64(grown)))
	}
	if *recoverySVG != "" {
		if err := os.WriteFile(*recoverySVG, run.svg(), 0o644); err != nil {
			t.Error(err)
		}
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, q, confirmed.All()))
}

// probe dials until the broker completes a handshake, and sends when.
func probe(accepted chan<- time.Time) {
	for {
		conn, err := amqp091.DialConfig(brokertest.URI(), amqp091.Config{Dial: amqp091.DefaultDial(time.Second)})
		if err == nil {
			accepted <- time.Now()
			_ = conn.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// timeline counts confirmed publishes per bucket of time, and marks events.
type timeline struct {
	start    time.Time
	mu       sync.Mutex
	buckets  []int
	total    int
	progress []chan struct{}
	marks    []mark
	// stoppedAt is when the broker was down for sure; firstConfirm the
	// first confirm after it.
	stoppedAt, firstConfirm time.Time
}

type mark struct {
	name string
	at   time.Time
}

func (tl *timeline) confirmed(at time.Time) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	i := int(at.Sub(tl.start) / recoveryBucket)
	for len(tl.buckets) <= i {
		tl.buckets = append(tl.buckets, 0)
	}
	tl.buckets[i]++
	tl.total++
	if !tl.stoppedAt.IsZero() && tl.firstConfirm.IsZero() && at.After(tl.stoppedAt) {
		tl.firstConfirm = at
	}
	for _, c := range tl.progress {
		close(c)
	}
	tl.progress = tl.progress[:0]
}

func (tl *timeline) mark(name string) { tl.markAt(name, time.Now()) }

func (tl *timeline) markAt(name string, at time.Time) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.marks = append(tl.marks, mark{name, at})
}

// await waits for n more confirmed publishes.
func (tl *timeline) await(t *testing.T, n int) {
	t.Helper()
	tl.mu.Lock()
	target := tl.total + n
	tl.mu.Unlock()
	deadline := time.After(2 * time.Minute)
	for {
		tl.mu.Lock()
		if tl.total >= target {
			tl.mu.Unlock()
			return
		}
		c := make(chan struct{})
		tl.progress = append(tl.progress, c)
		tl.mu.Unlock()
		select {
		case <-c:
		case <-deadline:
			t.Fatalf("fewer than %d publishes confirmed in 2 minutes", n)
		}
	}
}

// stopped records that the broker is down from now on.
func (tl *timeline) stopped() time.Time {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.stoppedAt = time.Now()
	return tl.stoppedAt
}

// firstAfterStop waits for the first publish confirmed after stopped, and
// returns when it was confirmed.
func (tl *timeline) firstAfterStop(t *testing.T) time.Time {
	t.Helper()
	tl.await(t, 1)
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.firstConfirm
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// heapSampler records the peak of live heap objects, every 20 ms.
type heapSampler struct {
	mu  sync.Mutex
	max uint64
}

func sampleHeap(stop <-chan struct{}, wg *sync.WaitGroup) *heapSampler {
	h := &heapSampler{}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			h.mu.Lock()
			h.max = max(h.max, sample[0].Value.Uint64())
			h.mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return h
}

func (h *heapSampler) peak() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.max
}

// reset starts a new peak and returns the old one.
func (h *heapSampler) reset() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.max
	h.max = 0
	return old
}

// svg plots confirmed messages per second over the run, with its marks.
func (tl *timeline) svg() []byte {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	const width, height, left, bottom, top = 900.0, 320.0, 60.0, 40.0, 20.0
	buckets := tl.buckets[:max(0, len(tl.buckets)-1)] // the last one is partial
	peak := 1
	for _, n := range buckets {
		peak = max(peak, n)
	}
	perSecond := float64(time.Second / recoveryBucket)
	yMax := math.Ceil(float64(peak)*perSecond*1.1/1000) * 1000
	seconds := float64(len(buckets)) * recoveryBucket.Seconds()
	x := func(s float64) float64 { return left + s/seconds*(width-left-10) }
	y := func(v float64) float64 { return height - bottom - v/yMax*(height-bottom-top) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="14">Confirmed publishes per second, %d goroutines, 1 KiB, broker application stopped and started (default settings)</text>`+"\n", left, recoveryGoroutines)
	for i := 0; i <= 4; i++ {
		v := yMax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%.0f</text>`+"\n",
			left, width-10, y(v), y(v), left-4, y(v)+4, v)
	}
	for s := 0; s <= int(seconds); s += 2 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%ds</text>`+"\n", x(float64(s)), height-bottom+16, s)
	}
	b.WriteString(`<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="`)
	for i, n := range buckets {
		fmt.Fprintf(&b, "%.1f,%.1f ", x((float64(i)+0.5)*recoveryBucket.Seconds()), y(float64(n)*perSecond))
	}
	b.WriteString("\"/>\n")
	for i, m := range tl.marks {
		at := x(m.at.Sub(tl.start).Seconds())
		label, anchor := at+3, "start"
		if at > width-160 {
			label, anchor = at-3, "end"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#d62728" stroke-dasharray="4 3"/><text x="%.1f" y="%.0f" fill="#d62728" text-anchor="%s">%s</text>`+"\n",
			at, at, top, height-bottom, label, top+14+float64(i)*14, anchor, m.name)
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
