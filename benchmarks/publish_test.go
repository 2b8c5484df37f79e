// Package benchmarks compares, in one run and against the real broker, the
// resilient publisher with raw amqp091-go doing the same work: N goroutines,
// each publishing one 1 KiB persistent message to a durable queue and
// waiting for its confirm. Both send the same bytes: a watermill message
// marshaled by watermill-amqp's DefaultMarshaler, its UUID as message_id.
//
//	go test ./benchmarks -run '^$' -bench . -benchtime 20000x -count 5 | tee new.txt
//	benchstat new.txt
package benchmarks_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

const rawChannels = 4 // as many confirm-mode channels as the publisher's default lanes

var payload = make([]byte, 1024)

// run calls publish b.N times from goroutines goroutines and reports msgs/s.
func run(b *testing.B, goroutines int, publish func(worker int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	b.ResetTimer()
	for w := 0; w < goroutines; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := publish(w); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// queue declares a durable queue for one benchmark and deletes it after.
func queue(b *testing.B, ch *amqp091.Channel) string {
	name := brokertest.Name("bench")
	if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = ch.QueueDelete(name, false, false, false) })
	return name
}

func BenchmarkPublish(b *testing.B) {
	conn := brokertest.Dial(b)
	defer conn.Close()
	admin, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	for _, goroutines := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("raw/goroutines=%d", goroutines), func(b *testing.B) {
			q := queue(b, admin)
			channels := make([]*amqp091.Channel, rawChannels)
			for i := range channels {
				if channels[i], err = conn.Channel(); err != nil {
					b.Fatal(err)
				}
				if err := channels[i].Confirm(false); err != nil {
					b.Fatal(err)
				}
				defer channels[i].Close()
			}
			run(b, goroutines, func(w int) error {
				// The same bytes on the wire as the publisher sends: watermill's
				// headers, the UUID as message_id, persistent.
				msg := message.NewMessage(watermill.NewUUID(), payload)
				pub, err := amqp.DefaultMarshaler{}.Marshal(msg)
				if err != nil {
					return err
				}
				pub.MessageId = msg.UUID
				dc, err := channels[w%rawChannels].PublishWithDeferredConfirmWithContext(context.Background(), "", q, false, false, pub)
				if err != nil {
					return err
				}
				if ok, err := dc.WaitContext(context.Background()); !ok || err != nil {
					return fmt.Errorf("not confirmed: %v", err)
				}
				return nil
			})
		})
		b.Run(fmt.Sprintf("resilient/goroutines=%d", goroutines), func(b *testing.B) {
			q := queue(b, admin)
			pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			b.ReportAllocs()
			run(b, goroutines, func(int) error {
				return pub.Publish(q, message.NewMessage(watermill.NewUUID(), payload))
			})
		})
	}
}
