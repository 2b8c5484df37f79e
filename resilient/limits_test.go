package resilient_test

// Configurations and broker limits that real deployments have (issue 16):
// a vhost deleted under waiting callers, exclusive and auto-delete queues,
// channel_max, queue policies that drop, permissions changed mid-run.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/health"
	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// ownVhost adds a vhost for the test, guest allowed everything on it, and
// returns its name and the broker's URI on it.
func ownVhost(t *testing.T) (string, string) {
	t.Helper()
	vhost := brokertest.Name("vhost")
	brokertest.Ctl(t, "add_vhost", vhost)
	t.Cleanup(func() { _, _ = brokertest.CtlErr("delete_vhost", vhost) })
	brokertest.Ctl(t, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
	u, err := url.Parse(brokertest.URI())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + vhost
	return vhost, u.String()
}

// The vhost is deleted while calls wait for the reconnect: every waiting
// call learns it when dialing turns permanent, as a fresh call does, with
// a permanent ErrNotFound, not a time-out with a stale cause at the end of
// its PublishTimeout. The bound is the first waiter's return (the moment
// the publisher decides): the others follow within a small fraction of
// PublishTimeout, which is what they waited for before the fix.
func TestVhostDeletedWhileCallsWait(t *testing.T) {
	brokertest.Need(t)
	vhost, uri := ownVhost(t)
	const publishTimeout = time.Minute
	pub, states := pubsubtest.Publisher(t, resilient.Config{
		AMQP: amqp.NewDurableQueueConfig(uri), PublishTimeout: publishTimeout,
		Reconnect: resilient.Backoff{InitialWait: 300 * time.Millisecond, MaxWait: time.Second},
	})
	queue := brokertest.Name("vhost-gone")
	if err := pub.Publish(queue, newMessage()); err != nil {
		t.Fatal(err)
	}
	brokertest.Ctl(t, "delete_vhost", vhost)
	lost := states.Await("reconnecting")

	const waiters = 16
	type result struct {
		err error
		at  time.Time
	}
	results := make(chan result, waiters)
	var wg sync.WaitGroup
	for range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := pub.Publish(queue, newMessage())
			results <- result{err, time.Now()}
		}()
	}
	wg.Wait()
	close(results)
	var first, last time.Time
	for r := range results {
		if !errors.Is(r.err, resilient.ErrNotFound) || !resilient.IsPermanent(r.err) {
			t.Errorf("a waiting call returned %v after %s, want a permanent ErrNotFound", r.err, r.at.Sub(lost).Round(time.Millisecond))
		}
		if first.IsZero() || r.at.Before(first) {
			first = r.at
		}
		if r.at.After(last) {
			last = r.at
		}
	}
	t.Logf("waiters returned %s to %s after the loss", first.Sub(lost).Round(time.Millisecond), last.Sub(lost).Round(time.Millisecond))
	if spread := last.Sub(first); spread > publishTimeout/10 {
		t.Errorf("the last waiter returned %s after the first: not woken when dialing turned permanent", spread)
	}
	start := time.Now()
	if err := pub.Publish(queue, newMessage()); !errors.Is(err, resilient.ErrNotFound) {
		t.Errorf("a fresh call: %v, want ErrNotFound", err)
	} else if d := time.Since(start); d > publishTimeout/10 {
		t.Errorf("a fresh call waited %s", d)
	}
}

func newMessage() *message.Message {
	msgs, _ := newMessages(1)
	return msgs[0]
}

// An exclusive queue config (Queue.Exclusive), as watermill-amqp's pair
// uses it: the queue is the subscriber's, and the publisher never declares
// it (the connection that declares an exclusive queue owns it: 405
// RESOURCE_LOCKED for every other). Published while a subscriber holds it,
// a message arrives; published while none does, it fails at once with a
// permanent ErrUnroutable naming the setting, rather than being confirmed
// and dropped, or retried to the deadline. A second subscriber's Subscribe
// fails at once with a permanent error naming the setting.
func TestExclusiveQueueConfig(t *testing.T) {
	brokertest.Need(t)
	cfg := amqp.NewNonDurableQueueConfig(brokertest.URI())
	cfg.Queue.Exclusive = true
	topic := brokertest.Name("exclusive")
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, PublishTimeout: time.Minute})

	early := newMessage()
	start := time.Now()
	err := pub.Publish(topic, early)
	if !errors.Is(err, resilient.ErrUnroutable) || !resilient.IsPermanent(err) || !strings.Contains(err.Error(), "Queue.Exclusive") {
		t.Fatalf("publish before any subscriber: %v, want a permanent ErrUnroutable naming Queue.Exclusive", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("publish before any subscriber took %s: want it at once", d)
	}

	sub, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: cfg})
	msgs, err := sub.Subscribe(t.Context(), topic)
	if err != nil {
		t.Fatalf("Subscribe after the publisher's first call: %v", err)
	}
	r := newReceived()
	consumeAll(msgs, r, nil)
	batch, ids := newMessages(20)
	if err := pub.Publish(topic, batch...); err != nil {
		t.Fatalf("publish while the subscriber holds the queue: %v", err)
	}
	r.AwaitAll(t, ids)
	r.tally(t, ids)

	other, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: cfg})
	start = time.Now()
	_, err = other.Subscribe(t.Context(), topic)
	if !resilient.IsPermanent(err) || !errors.Is(err, resilient.ErrPreconditionFailed) || !strings.Contains(err.Error(), "Queue.Exclusive") {
		t.Fatalf("a second subscriber: %v, want a permanent ErrPreconditionFailed naming Queue.Exclusive", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the second Subscribe took %s: want it at once", d)
	}
}

// brokerChannelMax sets the broker's channel_max for new connections, and
// restores what it was when the test ends.
func brokerChannelMax(t *testing.T, n int) { brokerSetting(t, "channel_max", n) }

func setChannelMax(t *testing.T, n int) { setBrokerSetting(t, "channel_max", n) }

// brokerSetting sets an integer setting of the broker's (read by each new
// connection: channel_max, frame_max), and restores what it was when the
// test ends.
func brokerSetting(t *testing.T, key string, n int) {
	t.Helper()
	was := strings.TrimSpace(brokertest.Ctl(t, "eval", "{ok, N} = application:get_env(rabbit, "+key+"), N."))
	if _, err := strconv.Atoi(was); err != nil {
		t.Fatalf("%s: %q", key, was)
	}
	t.Cleanup(func() { brokertest.Ctl(t, "eval", "application:set_env(rabbit, "+key+", "+was+").") })
	setBrokerSetting(t, key, n)
}

func setBrokerSetting(t *testing.T, key string, n int) {
	t.Helper()
	brokertest.Ctl(t, "eval", fmt.Sprintf("application:set_env(rabbit, %s, %d).", key, n))
}

// subscribeTopics subscribes to each topic and consumes into r; it returns
// the topics whose Subscribe succeeded and the errors of the others.
func subscribeTopics(t *testing.T, sub *resilient.Subscriber, topics []string, r *received) (ok []string, errs []error) {
	t.Helper()
	for _, topic := range topics {
		msgs, err := sub.Subscribe(t.Context(), topic)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", topic, err))
			continue
		}
		ok = append(ok, topic)
		consumeAll(msgs, r, nil)
	}
	return ok, errs
}

// publishToEach publishes one message to each topic and returns their IDs.
func publishToEach(t *testing.T, pub *resilient.Publisher, topics []string) []string {
	t.Helper()
	var ids []string
	for _, topic := range topics {
		m := newMessage()
		if err := pub.Publish(topic, m); err != nil {
			t.Fatalf("publish to %s: %v", topic, err)
		}
		ids = append(ids, m.UUID)
	}
	return ids
}

func topicNames(prefix string, n int) []string {
	topics := make([]string, n)
	for i := range topics {
		topics[i] = brokertest.Name(fmt.Sprintf("%s-%d", prefix, i))
	}
	return topics
}

// More subscriptions on one Subscriber than the broker's channel_max
// allows (each holds a channel): every Subscribe either returns a
// subscription that handles what is published to it, or fails at once
// with ErrChannelLimit (transient); none is silent. With channel_max 12,
// and the small cases 2 and 1.
func TestSubscriptionsBeyondChannelMax(t *testing.T) {
	brokertest.Need(t)
	for _, max := range []int{12, 2, 1} {
		t.Run(fmt.Sprintf("channel_max=%d", max), func(t *testing.T) {
			brokerChannelMax(t, max)
			cfg := resilient.Config{AMQP: amqp.NewDurablePubSubConfig(brokertest.URI(), func(topic string) string { return topic + "_q" })}
			sub, _ := pubsubtest.Subscriber(t, cfg)
			r := newReceived()
			topics := topicNames("chmax", max+4)
			ok, errs := subscribeTopics(t, sub, topics, r)
			t.Logf("%d subscribed, %d refused", len(ok), len(errs))
			for _, err := range errs {
				if !errors.Is(err, resilient.ErrChannelLimit) || resilient.IsPermanent(err) {
					t.Errorf("Subscribe: %v, want a transient ErrChannelLimit", err)
				}
			}
			if len(ok) == 0 || len(errs) == 0 {
				t.Fatalf("%d of %d subscribed under channel_max %d", len(ok), len(topics), max)
			}
			if h := sub.Health(); h.Degraded != nil {
				t.Errorf("degraded, though every subscription that Subscribe returned attached: %v", h.Degraded)
			}
			setChannelMax(t, 2047) // the publisher: not the point here
			pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg.AMQP})
			ids := publishToEach(t, pub, ok)
			r.AwaitAll(t, ids)
			r.tally(t, ids)
		})
	}
}

// A running subscription that cannot attach again, because the new
// connection's channel_max is lower than the subscriptions it must carry,
// says so: a ChannelRefused event per subscription left out, Health
// Degraded (readiness fails), and it keeps trying: once channels are to be
// had again, every subscription consumes, and nothing published is lost.
func TestSubscriptionsReattachUnderChannelMax(t *testing.T) {
	brokertest.Need(t)
	brokerChannelMax(t, 2047)
	events, onEvent := newEventQueue(resilient.ChannelRefused, resilient.ConsumerReattached)
	pubsub := amqp.NewDurablePubSubConfig(brokertest.URI(), func(topic string) string { return topic + "_q" })
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: pubsub, OnEvent: onEvent,
		Reconnect: resilient.Backoff{InitialWait: 100 * time.Millisecond, MaxWait: 500 * time.Millisecond}})
	r := newReceived()
	topics := topicNames("reattach", 16)
	ok, errs := subscribeTopics(t, sub, topics, r)
	if len(errs) > 0 {
		t.Fatalf("Subscribe: %v", errs)
	}

	setChannelMax(t, 12)
	brokertest.CloseAllConnections(t)
	for range 16 - 12 {
		e := events.await(t, resilient.ChannelRefused)
		if !errors.Is(e.Err, resilient.ErrChannelLimit) {
			t.Fatalf("ChannelRefused with %v", e.Err)
		}
	}
	h := sub.Health()
	if !errors.Is(h.Degraded, resilient.ErrChannelLimit) {
		t.Fatalf("health while 4 subscriptions cannot attach: %+v", h)
	}
	if err := health.NewChecker(0).Add("subscriber", sub).Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "degraded") {
		t.Errorf("readiness while degraded: %v", err)
	}
	t.Logf("degraded: %v", h.Degraded)

	setChannelMax(t, 2047)
	drain(events)
	brokertest.CloseAllConnections(t)
	for range 16 {
		events.await(t, resilient.ConsumerReattached)
	}
	if h := sub.Health(); h.Degraded != nil {
		t.Errorf("still degraded once every subscription attached: %v", h.Degraded)
	}
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: pubsub})
	ids := publishToEach(t, pub, ok)
	r.AwaitAll(t, ids)
	r.tally(t, ids)
}

func drain(q eventQueue) {
	for {
		select {
		case <-q:
		default:
			return
		}
	}
}

// The publisher under the smallest channel_max: with 2, one lane and one
// channel for declarations (none for a pulse), and everything confirmed
// arrives; with 1, the lane holds the only channel, and a Publish that must
// declare its topology fails at once with ErrChannelLimit (a stated
// limit), rather than waiting for its deadline.
func TestPublisherUnderSmallChannelMax(t *testing.T) {
	brokertest.Need(t)
	t.Run("channel_max=2", func(t *testing.T) {
		brokerChannelMax(t, 2)
		queue := brokertest.Name("chmax2")
		brokertest.DeleteQueues(t, queue)
		pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())})
		msgs, ids := newMessages(200)
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := pub.Publish(queue, msgs[i*50:(i+1)*50]...); err != nil {
					t.Errorf("publish: %v", err)
				}
			}()
		}
		wg.Wait()
		brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, ids))
	})
	t.Run("channel_max=1", func(t *testing.T) {
		brokerChannelMax(t, 1)
		queue := brokertest.Name("chmax1")
		brokertest.DeleteQueues(t, queue)
		pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI()), PublishTimeout: time.Minute})
		start := time.Now()
		err := pub.Publish(queue, newMessage())
		if !errors.Is(err, resilient.ErrChannelLimit) {
			t.Fatalf("publish: %v, want ErrChannelLimit", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %s: want it at once", d)
		}
		t.Log(err)
	})
}

// A user whose permissions are cleared while it publishes and consumes,
// then set again. RabbitMQ checks them when a connection (or channel)
// opens: once the connections are closed, every call fails with a
// permanent ErrAccessRefused (no call waits for its deadline, none returns
// a stale cause); once the permission is back, both resume, and every
// confirmed message is handled.
func TestPermissionsChangedMidRun(t *testing.T) {
	brokertest.Need(t)
	uri := limitedUser(t, ".*", ".*", ".*")
	user := "resilient-test-" + strings.ToLower(t.Name())
	queue := brokertest.Name("perms")
	brokertest.DeleteQueues(t, queue)
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), PublishTimeout: time.Minute,
		Reconnect: resilient.Backoff{InitialWait: 100 * time.Millisecond, MaxWait: 500 * time.Millisecond}}
	pub, _ := pubsubtest.Publisher(t, cfg)
	sub, _ := pubsubtest.Subscriber(t, cfg)
	msgs, err := sub.Subscribe(t.Context(), queue)
	if err != nil {
		t.Fatal(err)
	}
	r := newReceived()
	consumeAll(msgs, r, nil)

	var mu sync.Mutex
	var confirmed []string
	var refused, other []error
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				m := newMessage()
				err := pub.Publish(queue, m)
				mu.Lock()
				switch {
				case err == nil:
					confirmed = append(confirmed, m.UUID)
				case errors.Is(err, resilient.ErrAccessRefused) && resilient.IsPermanent(err):
					refused = append(refused, err)
				default:
					other = append(other, err)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond) // pace the calls that fail at once
				}
			}
		}()
	}
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(confirmed), len(refused)
	}
	awaitCount := func(what string, done func() bool) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); !done(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never happened", what)
			}
		}
	}
	awaitCount("100 confirms", func() bool { n, _ := counts(); return n >= 100 })

	brokertest.Ctl(t, "clear_permissions", "-p", "/", user)
	brokertest.CloseAllConnections(t)
	awaitCount("a refusal", func() bool { _, n := counts(); return n >= 20 })
	if h := sub.Health(); h.State == resilient.StateConnected {
		t.Errorf("the subscriber is connected without permissions: %+v", h)
	}

	brokertest.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
	before, _ := counts()
	awaitCount("100 confirms after the permission is back", func() bool { n, _ := counts(); return n >= before+100 })
	stop()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d confirmed, %d refused (first: %v), %d other", len(confirmed), len(refused), refused[0], len(other))
	for _, err := range other {
		t.Errorf("neither confirmed nor a permanent ErrAccessRefused: %v", err)
	}
	r.AwaitAll(t, confirmed)
	r.tally(t, confirmed)
}

// The smallest frame_max AMQP allows (4096): bodies of 100 KiB go, split
// into frames, and are confirmed and kept; a message whose headers do not
// fit one frame fails alone, at once, with ErrMessageTooLarge.
func TestFrameMaxMinimum(t *testing.T) {
	brokertest.Need(t)
	brokerSetting(t, "frame_max", 4096)
	queue := brokertest.Name("frame-min")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())})
	msgs, ids := newMessages(21)
	for _, m := range msgs {
		m.Payload = make([]byte, 100<<10)
	}
	msgs[10].Metadata.Set("big", strings.Repeat("x", 5000))
	err := pub.Publish(queue, msgs...)
	requirePublishError(t, err, resilient.ErrMessageTooLarge, ids[10:11])
	t.Log(err)
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, append(ids[:10:10], ids[11:]...)))
}

// An auto-delete queue config (Queue.AutoDelete): the queue goes when its
// last consumer does. The publisher declares it (no connection owns an
// auto-delete queue), so a message published before any subscriber, or
// after the last one left and the broker deleted the queue, is kept: it
// comes back from the deleted queue, which is declared again, and the next
// subscriber gets it.
func TestAutoDeleteQueueConfig(t *testing.T) {
	brokertest.Need(t)
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Queue.AutoDelete = true
	topic := brokertest.Name("auto-delete")
	brokertest.DeleteQueues(t, topic)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, PublishTimeout: time.Minute})
	for round := range 2 {
		msgs, ids := newMessages(5)
		if err := pub.Publish(topic, msgs...); err != nil {
			t.Fatalf("round %d, publish with no subscriber: %v", round, err)
		}
		sub, err := resilient.NewSubscriber(resilient.Config{AMQP: cfg}, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := sub.Subscribe(t.Context(), topic)
		if err != nil {
			t.Fatalf("round %d, Subscribe: %v", round, err)
		}
		r := newReceived()
		done := consumeAll(out, r, nil)
		r.AwaitAll(t, ids)
		if err := sub.Close(); err != nil { // its queue goes with its consumer
			t.Fatal(err)
		}
		<-done
		r.tally(t, ids)
	}
}
