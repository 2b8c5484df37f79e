package benchmarks_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// BenchmarkConsumeQuorum: a quorum queue preloaded with b.N 1 KiB messages
// (not timed), then consumed at the given prefetch, timed from the first
// delivery (see BenchmarkConsume).
//
//   - raw: amqp091-go, Qos(prefetch), Consume, each delivery unmarshaled
//     (unmarshal) and acked on its own, Ack(false).
//   - resilient: Subscriber.Subscribe with Consume.Qos.PrefetchCount =
//     prefetch, msg.Ack() per message, read from the channel as a Router
//     reads it (one at a time), acks in batches (the default AckBatch).
//   - resilient-unbatched: the same with AckBatch 1, each ack at once (the
//     figures of "Running on a cluster").
//
// On a cluster, point AMQP_URI at one of its nodes: the queue's leader is
// that node (client-local), its followers the other two.
func BenchmarkConsumeQuorum(b *testing.B) {
	for _, prefetch := range []int{1, 16, 64, 256} {
		prefix := fmt.Sprintf("quorum/prefetch=%d", prefetch)
		b.Run(prefix+"/impl=raw", func(b *testing.B) { benchRawConsume(b, quorumArgs, prefetch, 1) })
		b.Run(prefix+"/impl=resilient", func(b *testing.B) { benchConsume(b, quorumArgs, prefetch, 0) })
		b.Run(prefix+"/impl=resilient-unbatched", func(b *testing.B) { benchConsume(b, quorumArgs, prefetch, 1) })
	}
}

// BenchmarkConsume: a classic durable queue preloaded with b.N 1 KiB
// messages (not timed), then consumed at prefetch 1, 100 and 500. Each side
// is timed from its first delivery: what comes before (the raw consumer's
// Consume; the Subscriber's connection, declarations, Qos and Consume) is
// paid once per subscription, and at prefetch 1 it weighed several percent
// of a 10,000-message run.
//
//   - raw: amqp091-go, Qos(prefetch), Consume, each delivery unmarshaled
//     (unmarshal) and acked on its own, Ack(false).
//   - raw-batched: the same, acking with multiple set every ackEvery
//     deliveries (the subscriber's default batch, at most half the
//     prefetch), and once none is ready (asked twice, with a yield
//     between): the way the subscriber batches.
//   - resilient: Subscriber.Subscribe with Consume.Qos.PrefetchCount =
//     prefetch and the default AckBatch, msg.Ack() per message, read as a
//     Router reads (one at a time).
//   - resilient-unbatched: the same with AckBatch 1 (each ack at once).
func BenchmarkConsume(b *testing.B) {
	for _, prefetch := range []int{1, 100, 500} {
		prefix := fmt.Sprintf("classic/prefetch=%d", prefetch)
		ackEvery := min(32, prefetch/2) // the subscriber's default AckBatch, capped as it caps it
		b.Run(prefix+"/impl=raw", func(b *testing.B) { benchRawConsume(b, nil, prefetch, 1) })
		b.Run(prefix+"/impl=raw-batched", func(b *testing.B) { benchRawConsume(b, nil, prefetch, ackEvery) })
		b.Run(prefix+"/impl=resilient", func(b *testing.B) { benchConsume(b, nil, prefetch, 0) })
		b.Run(prefix+"/impl=resilient-unbatched", func(b *testing.B) { benchConsume(b, nil, prefetch, 1) })
	}
}

// benchRawConsume consumes b.N preloaded messages (queue arguments args)
// with amqp091-go, as consumeRaw does.
func benchRawConsume(b *testing.B, args amqp091.Table, prefetch, ackEvery int) {
	q := preloaded(b, args, b.N)
	var m measurement
	consumeRaw(b, q, prefetch, ackEvery, b.N, timing{func() { m.begin(b) }, func() { m.end(b) }})
}

// timing is told when a consumer's timed part begins (its first delivery
// taken: see BenchmarkConsume) and when it ends (its last message acked).
type timing struct{ begin, end func() }

// consumeRaw consumes n messages from q with amqp091-go, on a connection of
// its own, at prefetch, unmarshaling each with watermill-amqp's
// DefaultMarshaler, acking every ackEvery deliveries with multiple set (1:
// each on its own), and whenever no delivery is ready.
func consumeRaw(tb testing.TB, q string, prefetch, ackEvery, n int, t timing) {
	conn, ch, deliveries := rawConsumer(tb, q, prefetch)
	defer conn.Close()
	acks := &rawAcks{tb: tb, ch: ch, deliveries: deliveries, every: ackEvery}
	for i := 0; i < n; i++ {
		d := acks.take(i, n)
		if i == 0 {
			t.begin()
		}
		// The same work as the subscriber's: the watermill message a
		// handler would get (as raw publishing marshals one).
		if _, err := unmarshal.Unmarshal(*d); err != nil {
			tb.Fatal(err)
		}
		acks.ack(d, i == n-1)
	}
	t.end()
}

// rawAcks takes a raw consumer's deliveries and acks them as the
// Subscriber's AckBatch does: while another delivery is ready, up to every
// acks are held back, then sent as one with multiple set; when none is
// ready, at once (every 1: each on its own).
type rawAcks struct {
	tb         testing.TB
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	every      int
	held       int
	next       *amqp091.Delivery // taken while looking for one ready
}

// take returns the next delivery, i of n being taken already.
func (r *rawAcks) take(i, n int) *amqp091.Delivery {
	if d := r.next; d != nil {
		r.next = nil
		return d
	}
	d, ok := <-r.deliveries
	if !ok {
		r.tb.Fatalf("deliveries ended after %d of %d", i, n)
	}
	return &d
}

// ack acks d (the last to consume when last), or holds its ack back while
// another delivery is ready.
func (r *rawAcks) ack(d *amqp091.Delivery, last bool) {
	r.held++
	if r.held < r.every && !last {
		// Asked twice, with a yield between, as the subscriber asks
		// (amqp091-go's goroutine that hands deliveries over may be busy
		// with the next one).
		if got, ok := peekDelivery(r.deliveries); ok {
			r.next = &got
			return
		}
	}
	if err := r.ch.Ack(d.DeliveryTag, r.held > 1); err != nil {
		r.tb.Fatal(err)
	}
	r.held = 0
}

// peekDelivery takes a delivery if one is ready, asking twice with a yield
// between; ok is false when none was.
func peekDelivery(deliveries <-chan amqp091.Delivery) (d amqp091.Delivery, ok bool) {
	for try := 0; ; try++ {
		select {
		case d, open := <-deliveries:
			return d, open
		default:
		}
		if try == 1 {
			return d, false
		}
		runtime.Gosched()
	}
}

// rawConsumer consumes q at prefetch with amqp091-go, on a connection of
// its own, which the caller closes.
func rawConsumer(tb testing.TB, q string, prefetch int) (*amqp091.Connection, *amqp091.Channel, <-chan amqp091.Delivery) {
	conn := brokertest.Dial(tb)
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		tb.Fatal(err)
	}
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return conn, ch, deliveries
}

// consumeRawHandoff consumes n messages from q with amqp091-go the way
// every watermill subscriber hands them over: each delivery, unmarshaled,
// goes to a handler on a goroutine of its own, which acks it, and is acked
// to the broker once the handler's Ack came back; the next is handed over
// only then (watermill's contract). With ackEvery 1, at prefetch 1, it is
// the model's own cost beside raw's, without any of the Subscriber's; with
// more, acks are held back as consumeRaw holds them (up to ackEvery, sent
// at once when no delivery is ready): raw batching the Subscriber's way
// and handing over as any watermill subscriber must.
func consumeRawHandoff(tb testing.TB, q string, prefetch, ackEvery, n int, t timing) {
	conn, ch, deliveries := rawConsumer(tb, q, prefetch)
	defer conn.Close()
	handed := make(chan *message.Message)
	handlerDone := make(chan struct{})
	go func() { // the handler: a Router's, reduced to its Ack
		defer close(handlerDone)
		for msg := range handed {
			msg.Ack()
		}
	}()
	defer func() { close(handed); <-handlerDone }()
	acks := &rawAcks{tb: tb, ch: ch, deliveries: deliveries, every: ackEvery}
	for i := 0; i < n; i++ {
		d := acks.take(i, n)
		if i == 0 {
			t.begin()
		}
		msg, err := unmarshal.Unmarshal(*d)
		if err != nil {
			tb.Fatal(err)
		}
		handed <- msg
		<-msg.Acked()
		acks.ack(d, i == n-1)
	}
	t.end()
}

// benchConsume consumes b.N preloaded messages (queue arguments args)
// through the Subscriber, as consumeSubscribed does.
func benchConsume(b *testing.B, args amqp091.Table, prefetch, ackBatch int) {
	q := preloaded(b, args, b.N)
	var m measurement
	consumeSubscribed(b, args, q, prefetch, ackBatch, b.N, timing{func() { m.begin(b) }, func() { m.end(b) }})
}

// consumeSubscribed consumes n messages from q (declared with args) through
// a Subscriber of its own at prefetch, with AckBatch ackBatch (0: the
// default), acking each as a handler would, read as a Router reads (one at
// a time).
func consumeSubscribed(tb testing.TB, args amqp091.Table, q string, prefetch, ackBatch, n int, t timing) {
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Queue.Arguments = args
	cfg.Consume.Qos.PrefetchCount = prefetch
	sub, err := resilient.NewSubscriber(resilient.Config{AMQP: cfg, AckBatch: ackBatch}, watermill.NopLogger{})
	if err != nil {
		tb.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, q)
	if err != nil {
		tb.Fatal(err)
	}
	first, ok := <-msgs
	if !ok {
		tb.Fatal("messages ended before the first")
	}
	t.begin()
	for i := 0; i < n; i++ {
		msg := first
		if i > 0 {
			if msg, ok = <-msgs; !ok {
				tb.Fatalf("messages ended after %d of %d", i, n)
			}
		}
		msg.Ack()
	}
	t.end()
}

var quorumArgs = amqp091.Table{"x-queue-type": "quorum"}

// unmarshal is what raw consumers turn each delivery into a watermill
// message with: watermill-amqp's DefaultMarshaler, the subscriber's by
// default, so that both sides do the same work (raw publishers marshal
// with it too).
var unmarshal = amqp.DefaultMarshaler{}

// preloaded declares a durable queue with args for one case, deleted
// after it, and fills it with n 1 KiB messages, confirmed.
func preloaded(b *testing.B, args amqp091.Table, n int) string {
	b.Helper()
	conn := brokertest.Dial(b)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	name := brokertest.Name("bench-consume")
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		b.Fatal(err)
	}
	brokertest.DeleteQueues(b, name)
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := rawDeadline()
	defer cancel()
	pending := make([]*amqp091.DeferredConfirmation, 0, window)
	wait := func() {
		for _, dc := range pending {
			if ok, err := dc.WaitContext(ctx); !ok || err != nil {
				b.Fatalf("preload: not confirmed: %v", err)
			}
		}
		pending = pending[:0]
	}
	for i := 0; i < n; i++ {
		pub, err := marshal(newMessage(1 << 10))
		if err != nil {
			b.Fatal(err)
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", name, false, false, pub)
		if err != nil {
			b.Fatal(err)
		}
		if pending = append(pending, dc); len(pending) == window {
			wait()
		}
	}
	wait()
	return name
}
