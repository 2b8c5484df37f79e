package resilient_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// received counts what a subscription handed out, by UUID.
type received struct {
	*brokertest.Arrivals
	phantoms atomic.Int64 // messages without UUID or payload
}

func newReceived() *received { return &received{Arrivals: brokertest.NewArrivals()} }

func (r *received) add(msg *message.Message) {
	if msg.UUID == "" || len(msg.Payload) == 0 {
		r.phantoms.Add(1)
	}
	r.Add(msg.UUID)
}

// tally reports what was received against ids, and fails on a loss or a
// phantom.
func (r *received) tally(t *testing.T, ids []string) {
	t.Helper()
	res, phantoms := r.Tally(ids), r.phantoms.Load()
	t.Logf("published %d, handled %d, lost %d, duplicated %d, phantom %d", len(ids), res.Got, len(res.Lost), res.Duplicates, phantoms)
	if len(res.Lost) > 0 || phantoms > 0 {
		t.Fatalf("lost %d, phantom %d", len(res.Lost), phantoms)
	}
}

// consumeAll acks everything it receives (after hold, if set, returns).
func consumeAll(msgs <-chan *message.Message, r *received, hold func(*message.Message)) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for msg := range msgs {
			if hold != nil {
				hold(msg)
			}
			r.add(msg)
			msg.Ack()
		}
	}()
	return done
}

// consumeUnderFaults publishes from many goroutines into a queue that a
// Subscriber consumes, runs fault, then checks by UUID that the handler
// got every confirmed message, and no phantom.
func consumeUnderFaults(t *testing.T, tune func(*resilient.Config), hold func(*message.Message), fault func(*brokertest.Load, *brokertest.States, *received)) {
	t.Helper()
	queue := brokertest.Name("sub-fault")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}
	cfg.AMQP.Consume.Qos.PrefetchCount = 64
	if tune != nil {
		tune(&cfg)
	}
	sub, states := pubsubtest.Subscriber(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	r := newReceived()
	done := consumeAll(msgs, r, hold)
	load := brokertest.StartLoad(t, pub, 4, queue)
	load.WaitProgress(200)
	fault(load, states, r)
	load.WaitProgress(200)
	load.Stop()
	ids := load.Confirmed.All()
	r.AwaitAll(t, ids)
	cancel()
	<-done // the output channel closes when ctx ends
	r.tally(t, ids)
}

// firstAfter returns how long after since the subscription handed out its
// first message after since, waiting for one if need be.
func firstAfter(t *testing.T, r *received, since time.Time) time.Duration {
	t.Helper()
	return r.FirstAfter(t, since).Sub(since).Round(time.Millisecond)
}

func TestSubscriberForcedConnectionCloses(t *testing.T) {
	brokertest.Need(t)
	consumeUnderFaults(t, nil, nil, func(load *brokertest.Load, states *brokertest.States, r *received) {
		for i := 0; i < 3; i++ {
			load.WaitProgress(200)
			brokertest.CloseAllConnections(t)
			lost := states.Await("reconnecting")
			states.Await("connected")
			t.Logf("close %d: first message handled %s after the subscriber's connection dropped", i+1, firstAfter(t, r, lost))
		}
	})
}

func TestSubscriberBrokerRestart(t *testing.T) {
	brokertest.Need(t)
	consumeUnderFaults(t, nil, nil, func(load *brokertest.Load, states *brokertest.States, r *received) {
		brokertest.StopApp(t)
		states.Await("reconnecting")
		brokertest.StartApp(t) // returns once the broker accepts work
		up := time.Now()
		reconnected := states.Await("connected")
		t.Logf("reconnected %s after start_app returned (negative: before await_startup did); first message handled %s after the reconnect",
			reconnected.Sub(up).Round(time.Millisecond), firstAfter(t, r, reconnected))
	})
}

// The broker closes the channel (PRECONDITION_FAILED, consumer_timeout)
// while the handler holds a message: the subscriber consumes again on a new
// channel, does not send the held message's ack there (its delivery tag
// belongs to the dead channel), and the broker delivers it again.
func TestSubscriberChannelClosedInFlight(t *testing.T) {
	brokertest.Need(t)
	// The broker closing the channel is a ConsumerLost event.
	interrupted := make(chan struct{})
	var lost sync.Once
	onLost := func(cfg *resilient.Config) {
		cfg.OnEvent = func(e resilient.Event) {
			if e.Kind == resilient.ConsumerLost {
				lost.Do(func() { close(interrupted) })
			}
		}
	}
	// The broker checks consumer_timeout on each channel tick (60 s by
	// default); both are read by channels opened from now on.
	restoreTick := setBrokerEnv(t, "channel_tick_interval", "500")
	restoreTimeout := setBrokerEnv(t, "consumer_timeout", "2000")
	restore := func() { restoreTimeout(); restoreTick() }

	var heldID atomic.Value
	held := func() string { id, _ := heldID.Load().(string); return id }
	var holdOnce sync.Once
	armed := make(chan struct{})
	hold := func(msg *message.Message) {
		select {
		case <-armed:
		default:
			return
		}
		holdOnce.Do(func() {
			heldID.Store(msg.UUID)
			t.Logf("handler holds %s until the broker closes the channel", msg.UUID)
			<-interrupted
		})
	}
	var r0 *received
	consumeUnderFaults(t, onLost, hold, func(load *brokertest.Load, states *brokertest.States, r *received) {
		r0 = r
		close(armed)
		<-interrupted
		closed := time.Now()
		r.AwaitCount(t, held(), 2)
		t.Logf("recovered: the held message delivered again %s after the broker closed the channel; first message after the close handed out %s after it",
			time.Since(closed).Round(time.Millisecond), firstAfter(t, r, closed))
		restore() // no more timeouts: the rest must flow
	})
	if n := r0.Count(held()); n < 2 {
		t.Fatalf("the message held across the channel's death was handled %d time(s), want it delivered again", n)
	}
}

// setBrokerEnv sets the rabbit application's key to value (an Erlang term)
// until the returned function (also a cleanup) restores what it was.
func setBrokerEnv(t *testing.T, key, value string) (restore func()) {
	t.Helper()
	was := strings.TrimSpace(brokertest.Ctl(t, "eval", "application:get_env(rabbit, "+key+")."))
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if v, ok := strings.CutPrefix(was, "{ok,"); ok {
				brokertest.Ctl(t, "eval", "application:set_env(rabbit, "+key+", "+strings.TrimSuffix(v, "}")+").")
			} else { // undefined; never unset a key the broker needs
				brokertest.Ctl(t, "eval", "application:unset_env(rabbit, "+key+").")
			}
		})
	}
	t.Cleanup(restore)
	brokertest.Ctl(t, "eval", "application:set_env(rabbit, "+key+", "+value+").")
	return restore
}

// Nack requeues: the message comes again. With NoRequeueOnNack it is dropped
// (dead-lettered when the queue says so).
func TestSubscriberNack(t *testing.T) {
	brokertest.Need(t)
	for _, noRequeue := range []bool{false, true} {
		t.Run(map[bool]string{false: "requeue", true: "no-requeue"}[noRequeue], func(t *testing.T) {
			queue := brokertest.Name("sub-nack")
			brokertest.DeleteQueues(t, queue)
			cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}
			cfg.AMQP.Consume.NoRequeueOnNack = noRequeue
			sub, _ := pubsubtest.Subscriber(t, cfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			msgs, err := sub.Subscribe(ctx, queue)
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := pubsubtest.Publisher(t, resilient.Config{})
			in, ids := newMessages(2)
			if err := pub.Publish(queue, in...); err != nil {
				t.Fatal(err)
			}
			first := <-msgs
			if first.UUID != ids[0] || string(first.Payload) != string(in[0].Payload) {
				t.Fatalf("got %s %q, want %s", first.UUID, first.Payload, ids[0])
			}
			first.Nack()
			next := <-msgs
			next.Ack()
			if noRequeue {
				if next.UUID != ids[1] {
					t.Fatalf("after a nack without requeue got %s, want the second message", next.UUID)
				}
				cancel()
				for range msgs {
				}
				if r := brokertest.Drain(t, queue, nil); r.Got != 0 {
					t.Fatalf("queue holds %d messages, want none", r.Got)
				}
				return
			}
			// Requeued at its place, or after the second: either way it comes back.
			got := []string{next.UUID}
			if next.UUID != ids[0] {
				again := <-msgs
				again.Ack()
				got = append(got, again.UUID)
			}
			if !containsStr(got, ids[0]) {
				t.Fatalf("nacked message not redelivered: got %v", got)
			}
		})
	}
}

// An ack or nack the handler gave before the subscription's context ended
// is sent, not dropped with the channel: dropped, the broker would deliver a
// handled message again. Each round acks (or nacks without requeue) and
// cancels at once, so that both are ready when the subscription looks.
func TestVerdictBeforeCancelIsSent(t *testing.T) {
	brokertest.Need(t)
	// At prefetch 1 each ack goes at once; at 64 it is held (AckBatch),
	// and goes as the consumer stops.
	for _, prefetch := range []int{1, 64} {
		t.Run("prefetch="+strconv.Itoa(prefetch), func(t *testing.T) { verdictBeforeCancel(t, prefetch) })
	}
}

func verdictBeforeCancel(t *testing.T, prefetch int) {
	const rounds = 40
	queue := brokertest.Name("sub-verdict-cancel")
	brokertest.DeleteQueues(t, queue)
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}
	cfg.AMQP.Consume.NoRequeueOnNack = true
	cfg.AMQP.Consume.Qos.PrefetchCount = prefetch
	sub, _ := pubsubtest.Subscriber(t, cfg)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())})
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		msgs, err := sub.Subscribe(ctx, queue)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		in, ids := newMessages(1)
		if err := pub.Publish(queue, in...); err != nil {
			cancel()
			t.Fatal(err)
		}
		got := <-msgs
		if got.UUID != ids[0] {
			cancel()
			t.Fatalf("round %d: got %s, want %s (a message handled earlier came again)", round, got.UUID, ids[0])
		}
		if round%2 == 0 {
			got.Ack()
		} else {
			got.Nack()
		}
		cancel()
		for range msgs {
		}
	}
	if r := brokertest.Drain(t, queue, nil); r.Got != 0 {
		t.Fatalf("queue holds %d messages after %d rounds, each acked or nacked before its cancel; want none", r.Got, rounds)
	}
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// What the handler did not ack when the subscription ends goes back to the
// queue; Close ends every subscription, is idempotent, and refuses more.
func TestSubscriberCloseReturnsUnacked(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("sub-close")
	brokertest.DeleteQueues(t, queue)
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{})
	msgs, err := sub.Subscribe(context.Background(), queue)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	in, ids := newMessages(5)
	if err := pub.Publish(queue, in...); err != nil {
		t.Fatal(err)
	}
	first := <-msgs
	first.Ack()
	unacked := <-msgs // never acked
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for range msgs { // closed by Close
	}
	if _, err := sub.Subscribe(context.Background(), queue); !errors.Is(err, resilient.ErrClosed) {
		t.Fatalf("Subscribe after Close: %v, want ErrClosed", err)
	}
	r := brokertest.Drain(t, queue, ids[1:])
	brokertest.RequireNoneLost(t, r)
	if r.Unexpected != 0 || unacked.UUID != ids[1] {
		t.Fatalf("the acked message came back (%d unexpected), or order broke (%s)", r.Unexpected, unacked.UUID)
	}
}

// A queue that exists with other arguments: Subscribe fails at once with a
// permanent error, and SubscribeInitialize too.
func TestSubscribePreconditionFailed(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("sub-conflict")
	brokertest.DeleteQueues(t, queue)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil { // not durable
		t.Fatal(err)
	}
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{})
	if _, err := sub.Subscribe(context.Background(), queue); !errors.Is(err, resilient.ErrPreconditionFailed) || !resilient.IsPermanent(err) {
		t.Fatalf("Subscribe: %v, want ErrPreconditionFailed", err)
	}
	if err := sub.SubscribeInitialize(queue); !errors.Is(err, resilient.ErrPreconditionFailed) {
		t.Fatalf("SubscribeInitialize: %v, want ErrPreconditionFailed", err)
	}
	fresh := brokertest.Name("sub-init")
	brokertest.DeleteQueues(t, fresh)
	if err := sub.SubscribeInitialize(fresh); err != nil {
		t.Fatalf("SubscribeInitialize of a new queue: %v", err)
	}
}

// An operator deletes the queue under the consumer: the broker cancels the
// consumer (basic.cancel, the channel stays open). The subscriber declares
// the queue again and consumes from it.
func TestSubscriberQueueDeleted(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("sub-deleted")
	brokertest.DeleteQueues(t, queue)
	consumers, onEvent := newEventQueue(resilient.ConsumerLost, resilient.ConsumerReattached)
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{OnEvent: onEvent})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	r := newReceived()
	done := consumeAll(msgs, r, nil)
	before, beforeIDs := newMessages(5)
	if err := pub.Publish(queue, before...); err != nil {
		t.Fatal(err)
	}
	r.AwaitAll(t, beforeIDs)

	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	if lost := consumers.await(t, resilient.ConsumerLost); lost.Err == nil || !strings.Contains(lost.Err.Error(), "cancelled") {
		t.Fatalf("consumer lost with %v, want it cancelled by the broker", lost.Err)
	}
	consumers.await(t, resilient.ConsumerReattached) // the queue exists again
	after, afterIDs := newMessages(5)
	if err := pub.Publish(queue, after...); err != nil {
		t.Fatal(err)
	}
	r.AwaitAll(t, afterIDs)
	cancel()
	<-done
	r.tally(t, append(beforeIDs, afterIDs...))
}

// A consumer the broker refuses right after consume (NoWait, and the queue
// already consumed exclusively elsewhere): the subscription attaches again
// with a growing pause, not in a tight loop.
func TestSubscriberShortLivedConsumersBackOff(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("exclusive")
	brokertest.DeleteQueues(t, queue)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Consume(queue, "", false, true, false, false, nil); err != nil { // exclusive
		t.Fatal(err)
	}
	var reattached atomic.Int64
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}
	cfg.AMQP.Consume.NoWait = true
	cfg.AMQP.Consume.Exclusive = true
	cfg.OnEvent = func(e resilient.Event) {
		if e.Kind == resilient.ConsumerReattached {
			reattached.Add(1)
		}
	}
	sub, _ := pubsubtest.Subscriber(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := sub.Subscribe(ctx, queue); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	n := reattached.Load()
	t.Logf("%d re-attaches in 2 s", n)
	if n > 15 {
		t.Fatalf("%d re-attaches in 2 s: a tight loop", n)
	}
}
