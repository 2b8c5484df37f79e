// Package benchmarks compares, in one process and one run, against the real
// broker, the resilient publisher with raw amqp091-go doing the same work,
// and with watermill-amqp's own publisher. Every case sends the same bytes:
// a watermill message marshaled by watermill-amqp's DefaultMarshaler, its
// UUID as message_id, persistent, to a durable classic queue, and waits for
// the broker's confirm. The lean cases (impl=raw-lean, resilient-lean)
// send the same without the header table: the publisher with
// UUIDInMessageIDOnly.
//
// One benchmark op is one message, so allocs/op and B/op are per message.
// Each case also reports msgs/s, the latency of a Publish call (p50-µs,
// p99-µs) and the client's CPU time per message (cpu-µs/msg, user+system
// of the whole process, from getrusage).
//
//	make bench            # runs the suite and prints the comparison table
//	go test ./benchmarks -run '^$' -bench . -count 3 | go run ./benchmarks/benchtable
package benchmarks_test

import (
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

func TestMain(m *testing.M) {
	brokertest.Main(m, nil)
}

// newMessage is the message every case sends.
func newMessage(size int) *message.Message {
	return message.NewMessage(watermill.NewUUID(), make([]byte, size))
}

// marshal turns msg into the bytes the publisher would send, for the raw
// client.
func marshal(msg *message.Message) (amqp091.Publishing, error) {
	pub, err := amqp.DefaultMarshaler{}.Marshal(msg)
	pub.MessageId = msg.UUID
	return pub, err
}

// marshalLean turns msg into the minimal message, for the raw client: its
// body and its UUID as message_id, persistent, as marshal's but without a
// header table. The publisher with UUIDInMessageIDOnly sends the same bytes
// for a message without metadata.
func marshalLean(msg *message.Message) (amqp091.Publishing, error) {
	return amqp091.Publishing{Body: msg.Payload, MessageId: msg.UUID, DeliveryMode: amqp091.Persistent}, nil
}

// measurement records what a case cost: per-call latencies, and the
// rate and the process's CPU time per message (its meter).
type measurement struct {
	meter
	mu        sync.Mutex
	latencies []time.Duration
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// turn is what a span of messages cost: a duel's turn, or a case.
type turn struct {
	rate      float64 // messages per second
	cpuPerMsg time.Duration
}

// meter measures a span of messages messages: started when begin is
// called, done when end is.
type meter struct {
	messages int
	start    time.Time
	cpu      time.Duration
	measured turn
}

func (m *meter) begin() { m.start, m.cpu = time.Now(), cpuTime() }

func (m *meter) end() {
	elapsed, spent := time.Since(m.start), cpuTime()-m.cpu
	m.measured = turn{rate: float64(m.messages) / elapsed.Seconds(), cpuPerMsg: spent / time.Duration(m.messages)}
}

// quantile is the q-quantile of sorted durations, in µs.
func quantile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(q*float64(len(sorted)-1))].Nanoseconds()) / 1e3
}

func (m *measurement) begin(b *testing.B) {
	b.ReportAllocs()
	m.latencies = make([]time.Duration, 0, b.N)
	b.ResetTimer()
	m.meter.messages = b.N
	m.meter.begin()
}

func (m *measurement) record(l []time.Duration) {
	m.mu.Lock()
	m.latencies = append(m.latencies, l...)
	m.mu.Unlock()
}

// end reports the metrics for the case's b.N messages.
func (m *measurement) end(b *testing.B) {
	m.meter.end()
	b.StopTimer()
	b.ReportMetric(m.measured.rate, "msgs/s")
	b.ReportMetric(float64(m.measured.cpuPerMsg)/1e3, "cpu-µs/msg")
	if len(m.latencies) > 0 {
		slices.Sort(m.latencies)
		b.ReportMetric(quantile(m.latencies, 0.50), "p50-µs")
		b.ReportMetric(quantile(m.latencies, 0.99), "p99-µs")
	}
	// ns/op is wall time per message over all goroutines: msgs/s says it
	// more plainly.
	b.ReportMetric(0, "ns/op")
}

// concurrently calls publish b.N times in all from goroutines goroutines,
// timing each call.
func concurrently(b *testing.B, goroutines int, publish func(worker int) error) {
	var m measurement
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	m.begin(b)
	for w := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, b.N/goroutines+1)
			defer func() { m.record(local) }()
			for next.Add(1) <= int64(b.N) {
				t := time.Now()
				if err := publish(w); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				local = append(local, time.Since(t))
			}
		}()
	}
	wg.Wait()
	m.end(b)
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
}

// inBatches calls publish with batches of up to size messages until b.N
// messages were sent, timing each call.
func inBatches(b *testing.B, size int, publish func(n int) error) {
	var m measurement
	m.begin(b)
	local := make([]time.Duration, 0, b.N/size+1)
	for sent := 0; sent < b.N; sent += size {
		t := time.Now()
		if err := publish(min(size, b.N-sent)); err != nil {
			b.Fatal(err)
		}
		local = append(local, time.Since(t))
	}
	m.record(local)
	m.end(b)
}

// queue declares a durable queue for one case and deletes it after.
func queue(b *testing.B) string {
	conn := brokertest.Dial(b)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	name := brokertest.Name("bench")
	if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	brokertest.DeleteQueues(b, name)
	return name
}
