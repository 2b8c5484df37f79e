package benchmarks_test

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

var sizes = []struct {
	name  string
	bytes int
}{{"100B", 100}, {"1KiB", 1 << 10}, {"64KiB", 64 << 10}}

// channels is how many confirm-mode channels raw amqp091-go shares between
// its goroutines, and how many the publisher has (Config.Channels): by
// default the publisher's default.
var channels = flag.Int("bench.channels", 4, "confirm-mode channels (4, the publisher default), for raw amqp091-go and the publisher alike")

// BenchmarkPublish: N goroutines, each publishing one message at a time and
// waiting for its confirm.
//
//   - raw: amqp091-go, PublishWithDeferredConfirmWithContext over
//     -bench.channels shared confirm-mode channels (default 4), each goroutine waiting for
//     its own confirm. With one goroutine this is a synchronous confirm.
//   - resilient: Publisher.Publish(topic, msg) with the default Config
//     (but for Channels, from -bench.channels).
//   - raw-owned: amqp091-go in the publisher's shape, each channel owned
//     by one goroutine that callers hand their messages to
//     (benchRawOwned).
//   - watermill-amqp: its Publisher in its best confirmed configuration
//     (ConfirmDelivery, a pool of 8 channels), at 64 goroutines only.
//   - raw-lean and resilient-lean, at leanSize and 16 goroutines or more:
//     raw sending the minimal message (marshalLean), the publisher with
//     UUIDInMessageIDOnly, which sends the same.
func BenchmarkPublish(b *testing.B) {
	for _, size := range sizes {
		for _, goroutines := range []int{1, 16, 64, 256} {
			prefix := fmt.Sprintf("size=%s/goroutines=%d", size.name, goroutines)
			b.Run(prefix+"/impl=raw", func(b *testing.B) {
				benchRaw(b, size.bytes, goroutines, marshal)
			})
			b.Run(prefix+"/impl=resilient", func(b *testing.B) {
				benchResilient(b, size.bytes, goroutines, false)
			})
			b.Run(prefix+"/impl=raw-owned", func(b *testing.B) {
				benchRawOwned(b, size.bytes, goroutines)
			})
			if size.bytes == leanSize && goroutines > 1 {
				b.Run(prefix+"/impl=raw-lean", func(b *testing.B) {
					benchRaw(b, size.bytes, goroutines, marshalLean)
				})
				b.Run(prefix+"/impl=resilient-lean", func(b *testing.B) {
					benchResilient(b, size.bytes, goroutines, true)
				})
			}
			if goroutines == 64 && size.bytes == 1<<10 {
				b.Run(prefix+"/impl=watermill-amqp", func(b *testing.B) {
					cfg := amqp.NewDurableQueueConfig(brokertest.URI())
					cfg.Publish.ConfirmDelivery = true
					cfg.Publish.ChannelPoolSize = 8
					pub, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
					if err != nil {
						b.Fatal(err)
					}
					defer pub.Close()
					q := queue(b)
					concurrently(b, goroutines, func(int) error {
						return pub.Publish(q, newMessage(size.bytes))
					})
				})
			}
		}
	}
}

// leanSize is the message size of the lean-wire cases (raw-lean,
// resilient-lean).
const leanSize = 1 << 10

func benchResilient(b *testing.B, size, goroutines int, lean bool) {
	pub := newResilient(b, lean)
	q := queue(b)
	concurrently(b, goroutines, func(int) error {
		return pub.Publish(q, newMessage(size))
	})
}

func benchRaw(b *testing.B, size, goroutines int, marshal func(*message.Message) (amqp091.Publishing, error)) {
	conn := brokertest.Dial(b)
	defer conn.Close()
	chans := confirmChannels(b, conn)
	q := queue(b)
	ctx, cancel := rawDeadline()
	defer cancel()
	concurrently(b, goroutines, func(w int) error {
		pub, err := marshal(newMessage(size))
		if err != nil {
			return err
		}
		return publishConfirmed(ctx, chans[w%len(chans)], q, pub)
	})
}

// confirmChannels opens -bench.channels confirm-mode channels on conn, for
// raw amqp091-go's goroutines to share.
func confirmChannels(b *testing.B, conn *amqp091.Connection) []*amqp091.Channel {
	chans := make([]*amqp091.Channel, *channels)
	for i := range chans {
		var err error
		if chans[i], err = conn.Channel(); err != nil {
			b.Fatal(err)
		}
		if err := chans[i].Confirm(false); err != nil {
			b.Fatal(err)
		}
	}
	return chans
}

// rawMandatory has raw amqp091-go publish with the mandatory flag, as the
// publisher does to a queue it declares itself (so that a queue deleted
// under it is no silent loss): run the suite with and without it to see
// what the flag costs the broker, apart from the publisher.
var rawMandatory = flag.Bool("bench.raw-mandatory", false, "raw amqp091-go publishes mandatory, as the publisher does to its own queue")

// noGuard has the publisher publish to its own queue without the mandatory
// flag (Config.NoQueueDeletionGuard): with and without it, and with
// -bench.raw-mandatory, the four combinations tell the flag's cost to the
// broker apart from the publisher's own.
var noGuard = flag.Bool("bench.no-guard", false, "the publisher runs with NoQueueDeletionGuard (no mandatory flag on its own queue)")

// publishConfirmed publishes pub to queue q on ch (mandatory as
// -bench.raw-mandatory says) and waits for its confirm.
func publishConfirmed(ctx context.Context, ch *amqp091.Channel, q string, pub amqp091.Publishing) error {
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, *rawMandatory, false, pub)
	if err != nil {
		return err
	}
	if ok, err := dc.WaitContext(ctx); !ok || err != nil {
		return fmt.Errorf("not confirmed: %v", err)
	}
	return nil
}

// rawDeadline bounds a raw case's waits for confirms: amqp091-go waits for
// one for ever, and a development run once hung an hour on raw
// goroutines=64 (the broker never confirmed one message). A case fails
// rather than hanging the suite; the bound costs nothing per message.
func rawDeadline() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Minute)
}

// batchSize is how many messages one Publish call carries, and window how
// many unconfirmed messages raw amqp091-go keeps in flight (the publisher's
// default MaxInFlight).
const batchSize, window = 1000, 512

// BenchmarkBatch: one goroutine publishing batchSize messages at a time.
//
//   - raw: amqp091-go on one confirm-mode channel, pipelining: it keeps up
//     to window messages unconfirmed, waits for the oldest when the window
//     is full, and for all at the end of a batch.
//   - resilient: one Publisher.Publish(topic, batch...) call per batch.
//   - raw-lean and resilient-lean, at leanSize: the same, raw sending the
//     minimal message, the publisher with UUIDInMessageIDOnly.
func BenchmarkBatch(b *testing.B) {
	for _, size := range sizes {
		prefix := fmt.Sprintf("size=%s/batch=%d", size.name, batchSize)
		b.Run(prefix+"/impl=raw", func(b *testing.B) {
			benchRawBatch(b, size.bytes, marshal)
		})
		b.Run(prefix+"/impl=resilient", func(b *testing.B) {
			benchResilientBatch(b, size.bytes, false)
		})
		if size.bytes == leanSize {
			b.Run(prefix+"/impl=raw-lean", func(b *testing.B) {
				benchRawBatch(b, size.bytes, marshalLean)
			})
			b.Run(prefix+"/impl=resilient-lean", func(b *testing.B) {
				benchResilientBatch(b, size.bytes, true)
			})
		}
	}
}

func benchRawBatch(b *testing.B, size int, marshal func(*message.Message) (amqp091.Publishing, error)) {
	conn := brokertest.Dial(b)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	q := queue(b)
	ctx, cancel := rawDeadline()
	defer cancel()
	inBatches(b, batchSize, rawBatcher(ctx, ch, q, size, marshal))
}

// rawBatcher publishes batches of n messages to q on the confirm-mode
// channel ch, pipelining: it keeps up to window messages unconfirmed, waits
// for the oldest when the window is full, and for all at the end of a
// batch.
func rawBatcher(ctx context.Context, ch *amqp091.Channel, q string, size int, marshal func(*message.Message) (amqp091.Publishing, error)) func(n int) error {
	pending := make([]*amqp091.DeferredConfirmation, 0, window)
	await := func(dc *amqp091.DeferredConfirmation) error {
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			return fmt.Errorf("not confirmed: %v", err)
		}
		return nil
	}
	return func(n int) error {
		for range n {
			if len(pending) == window {
				if err := await(pending[0]); err != nil {
					return err
				}
				pending = pending[1:]
			}
			pub, err := marshal(newMessage(size))
			if err != nil {
				return err
			}
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, *rawMandatory, false, pub)
			if err != nil {
				return err
			}
			if len(pending) == cap(pending) {
				pending = append(make([]*amqp091.DeferredConfirmation, 0, window), pending...)
			}
			pending = append(pending, dc)
		}
		for _, dc := range pending {
			if err := await(dc); err != nil {
				return err
			}
		}
		pending = pending[:0]
		return nil
	}
}

func benchResilientBatch(b *testing.B, size int, lean bool) {
	inBatches(b, batchSize, resilientBatcher(newResilient(b, lean), queue(b), size))
}

// resilientBatcher publishes batches of n messages to q in one Publish
// call each.
func resilientBatcher(pub *resilient.Publisher, q string, size int) func(n int) error {
	return func(n int) error {
		msgs := make([]*message.Message, n)
		for i := range msgs {
			msgs[i] = newMessage(size)
		}
		return pub.Publish(q, msgs...)
	}
}

// newResilient is the publisher with its default settings, but for
// -bench.channels, and UUIDInMessageIDOnly when lean.
func newResilient(b *testing.B, lean bool) *resilient.Publisher {
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI()), Channels: *channels, UUIDInMessageIDOnly: lean,
		NoQueueDeletionGuard: *noGuard}
	pub, err := resilient.NewPublisher(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := pub.Close(); err != nil {
			b.Error(err)
		}
	})
	return pub
}
