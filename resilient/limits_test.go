package resilient_test

// Configurations and broker limits that real deployments have (issue 16):
// a vhost deleted under waiting callers, exclusive and auto-delete queues,
// channel_max, queue policies that drop, permissions changed mid-run.

import (
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

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
