package resilient_test

import (
	"context"
	"strconv"
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

// ackEvents sums the MessageAcked events of a subscriber, and the largest
// one: acks sent as one basic.ack with multiple set come as one event.
type ackEvents struct {
	mu      sync.Mutex
	total   int
	largest int
	changed chan struct{}
}

func newAckEvents() *ackEvents { return &ackEvents{changed: make(chan struct{}, 1)} }

func (a *ackEvents) on(e resilient.Event) {
	if e.Kind != resilient.MessageAcked {
		return
	}
	a.mu.Lock()
	a.total += e.Messages
	a.largest = max(a.largest, e.Messages)
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// await waits until n acks were sent.
func (a *ackEvents) await(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		a.mu.Lock()
		total := a.total
		a.mu.Unlock()
		if total >= n {
			return
		}
		select {
		case <-a.changed:
		case <-deadline:
			t.Fatalf("%d of %d acks sent in 30 s", total, n)
		}
	}
}

// unacked is how many messages of queue the broker holds as delivered and
// not acked.
func unacked(t *testing.T, queue string) int {
	t.Helper()
	for _, line := range strings.Split(brokertest.Ctl(t, "list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == queue {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("list_queues: %q", line)
			}
			return n
		}
	}
	t.Fatalf("queue %s not listed", queue)
	return 0
}

// backlog is a fresh queue (named from prefix, deleted after the test)
// holding n messages, confirmed, and their UUIDs in order.
func backlog(t *testing.T, prefix string, n int) (queue string, ids []string) {
	t.Helper()
	queue = brokertest.Name(prefix)
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	in, ids := newMessages(n)
	if err := pub.Publish(queue, in...); err != nil {
		t.Fatal(err)
	}
	return queue, ids
}

// subscribe subscribes a Subscriber of cfg (its AMQP a durable queue's,
// at prefetch) to queue, until cancel or the test's end.
func subscribe(t *testing.T, cfg resilient.Config, prefetch int, queue string) (msgs <-chan *message.Message, cancel context.CancelFunc) {
	t.Helper()
	cfg.AMQP = amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.AMQP.Consume.Qos.PrefetchCount = prefetch
	sub, _ := pubsubtest.Subscriber(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	return msgs, cancel
}

// consumeAcking subscribes to queue with prefetch and AckBatchWait wait,
// hands every message to r and acks it, and counts the acks sent.
func consumeAcking(t *testing.T, queue string, prefetch int, wait time.Duration, r *received) *ackEvents {
	t.Helper()
	acks := newAckEvents()
	msgs, _ := subscribe(t, resilient.Config{AckBatchWait: wait, OnEvent: acks.on}, prefetch, queue)
	consumeAll(msgs, r, nil)
	return acks
}

// A backlog is acked in batches (one basic.ack with multiple set for many
// deliveries), every message once, nothing redelivered.
func TestSubscriberBatchesAcks(t *testing.T) {
	brokertest.Need(t)
	queue, ids := backlog(t, "sub-ackbatch", 500)
	r := newReceived()
	acks := consumeAcking(t, queue, 100, 0, r)
	r.AwaitAll(t, ids)
	acks.await(t, len(ids))
	r.tally(t, ids)
	acks.mu.Lock()
	defer acks.mu.Unlock()
	if acks.total != len(ids) || acks.largest < 2 {
		t.Fatalf("%d acks sent, at most %d at once: want %d, some together", acks.total, acks.largest, len(ids))
	}
	t.Logf("%d acks, up to %d in one basic.ack", acks.total, acks.largest)
}

// With the batch's time bound out of the way (an hour), acks held for a
// handler that then goes idle are sent at once, not when the bound runs
// out: the broker holds nothing unacked.
func TestSubscriberSendsHeldAcksWhenIdle(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("sub-ackidle")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	r := newReceived()
	acks := consumeAcking(t, queue, 100, time.Hour, r)
	in, ids := newMessages(3) // fewer than a batch
	if err := pub.Publish(queue, in...); err != nil {
		t.Fatal(err)
	}
	r.AwaitAll(t, ids)
	acks.await(t, len(ids)) // sent, well within the hour
	// The broker reads the ack frame on its own time: poll it, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for n := unacked(t, queue); n != 0; n = unacked(t, queue) {
		if time.Now().After(deadline) {
			t.Fatalf("the broker still holds %d unacked 10 s after the acks went", n)
		}
		time.Sleep(100 * time.Millisecond) // polling the broker, which tells no one
	}
	r.tally(t, ids)
}

// Nacks among batched acks: a nack goes after the acks held before it, and
// no multiple ack ever covers a nacked delivery. Every seventh message is
// nacked (requeued) the first time and must come back; all the others are
// acked once and must not.
func TestSubscriberBatchedAcksAroundNacks(t *testing.T) {
	brokertest.Need(t)
	queue, ids := backlog(t, "sub-acknack", 300)
	nackFirst := make(map[string]bool, len(ids))
	for i, id := range ids {
		nackFirst[id] = i%7 == 0
	}
	msgs, cancel := subscribe(t, resilient.Config{}, 100, queue)
	seen := make(map[string]int, len(ids))
	for handled := 0; handled < len(ids); {
		select {
		case msg := <-msgs:
			seen[msg.UUID]++
			if nackFirst[msg.UUID] && seen[msg.UUID] == 1 {
				msg.Nack()
				continue
			}
			msg.Ack()
			handled++
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d handled in 30 s", handled, len(ids))
		}
	}
	cancel()
	for range msgs {
	}
	for i, id := range ids {
		want := 1
		if nackFirst[id] {
			want = 2
		}
		if seen[id] != want {
			t.Fatalf("message %d seen %d times, want %d (nacked first: %v)", i, seen[id], want, nackFirst[id])
		}
	}
	if r := brokertest.Drain(t, queue, nil); r.Got != 0 {
		t.Fatalf("queue holds %d messages, want none", r.Got)
	}
}
