package benchmarks_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// BenchmarkEndToEnd: the time from the start of a publish to the handler
// having the message (p50-µs, p99-µs), with 1 and 16 goroutines publishing
// 1 KiB messages and waiting for each confirm, one consumer at prefetch 100
// acking each (msgs/s is handled messages per second).
//
//   - raw: amqp091-go publishing on confirm-mode channels and consuming
//     with Ack per delivery, each delivery unmarshaled into a watermill
//     message first (unmarshal), the work the Subscriber does.
//   - resilient: the Publisher, and the Subscriber (default AckBatch) read
//     as a Router reads.
func BenchmarkEndToEnd(b *testing.B) {
	for _, goroutines := range []int{1, 16} {
		prefix := fmt.Sprintf("e2e/goroutines=%d", goroutines)
		b.Run(prefix+"/impl=raw", func(b *testing.B) { benchEndToEnd(b, goroutines, rawPipe) })
		b.Run(prefix+"/impl=resilient", func(b *testing.B) { benchEndToEnd(b, goroutines, resilientPipe) })
	}
}

// A pipe publishes into a queue and hands what arrives to got, which
// returns false once it has had enough.
type pipe func(b *testing.B, q string, goroutines int, got func(body []byte) bool) (publish func(worker int, msg *message.Message) error, stop func())

func benchEndToEnd(b *testing.B, goroutines int, open pipe) {
	q := queue(b)
	var m measurement
	var received atomic.Int64
	done := make(chan struct{})
	latencies := make([]time.Duration, 0, b.N)
	publish, stop := open(b, q, goroutines, func(body []byte) bool {
		latencies = append(latencies, time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(body)))))
		if received.Add(1) == int64(b.N) {
			close(done)
			return false
		}
		return true
	})
	defer stop()
	m.begin(b)
	var next atomic.Int64
	errs := make(chan error, goroutines)
	for w := range goroutines {
		go func() {
			for next.Add(1) <= int64(b.N) {
				msg := newMessage(1 << 10)
				binary.BigEndian.PutUint64(msg.Payload, uint64(time.Now().UnixNano()))
				if err := publish(w, msg); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	select {
	case <-done:
	case err := <-errs:
		b.Fatal(err)
	case <-time.After(10 * time.Minute):
		b.Fatalf("%d of %d handled in 10 min", received.Load(), b.N)
	}
	m.record(latencies)
	m.end(b)
}

// rawPipe: amqp091-go, a confirm-mode channel per 4 publishers (as the
// publish benchmarks), one consuming channel.
func rawPipe(b *testing.B, q string, goroutines int, got func([]byte) bool) (func(int, *message.Message) error, func()) {
	conn := brokertest.Dial(b)
	chans := confirmChannels(b, conn)
	consumer, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := consumer.Qos(100, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := consumer.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range deliveries {
			payload := d.Body
			if msg, err := unmarshal.Unmarshal(d); err == nil {
				payload = msg.Payload
			} else {
				b.Error(err) // the publisher marshaled it: not expected
			}
			more := got(payload)
			_ = d.Ack(false)
			if !more {
				return
			}
		}
	}()
	ctx, cancel := rawDeadline()
	publish := func(w int, msg *message.Message) error {
		pub, err := marshal(msg)
		if err != nil {
			return err
		}
		return publishConfirmed(ctx, chans[w%len(chans)], q, pub)
	}
	return publish, func() { cancel(); _ = conn.Close() }
}

// resilientPipe: the Publisher and the Subscriber, through the v2 door.
func resilientPipe(b *testing.B, q string, goroutines int, got func([]byte) bool) (func(int, *message.Message) error, func()) {
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI()), Channels: *channels}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Consume.Qos.PrefetchCount = 100
	sub, err := resilient.NewSubscriber(resilient.Config{AMQP: cfg}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, q)
	if err != nil {
		b.Fatal(err)
	}
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		for msg := range msgs {
			more := got(msg.Payload)
			msg.Ack()
			if !more {
				return
			}
		}
	}()
	publish := func(_ int, msg *message.Message) error { return pub.Publish(q, msg) }
	return publish, func() {
		cancel()
		<-handled
		_ = sub.Close()
		_ = pub.Close()
	}
}
