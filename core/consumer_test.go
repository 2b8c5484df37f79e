package core

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// An attach the broker refuses (its queue declared with other arguments:
// 406 on queue.declare, which closes the channel) is a failed attach, not a
// lost consumer: the subscription tries again, and reports no ConsumerLost
// for a consumer that never started.
func TestRefusedAttachIsNoConsumerLost(t *testing.T) {
	const classQueue = 50
	peer := newScriptedPeer(t)
	peer.onMethod = func(l *peerLink, channel, class, method uint16) bool {
		if class == classQueue && method == 10 { // queue.declare
			l.closeChannel(channel, 406, "PRECONDITION_FAILED - inequivalent arg 'durable'", classQueue, 10)
			return true
		}
		return false
	}
	attempts := make(chan struct{}, 64)
	var mu sync.Mutex
	var lost, declarations int
	w := peerWiring(peer)
	w.BuildTopology = func(ch *amqp091.Channel, _, queue, _ string, _ watermill.LoggerAdapter) error {
		mu.Lock()
		declarations++
		first := declarations == 1
		mu.Unlock()
		if first {
			return nil // Subscribe's own declaration: the queue was fine then
		}
		select {
		case attempts <- struct{}{}:
		default:
		}
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}
	sub, err := NewSubscriber(Config[Wiring]{
		Reconnect: Backoff{InitialWait: 10 * time.Millisecond, MaxWait: 10 * time.Millisecond},
		OnEvent: func(e Event) {
			if e.Kind == ConsumerLost {
				mu.Lock()
				lost++
				mu.Unlock()
			}
		},
	}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() }) // on failure too: it would redial the peer
	peer.next(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := sub.Subscribe(ctx, "q"); err != nil {
		t.Fatal(err)
	}
	for range 3 { // three attaches, each refused
		select {
		case <-attempts:
		case <-time.After(10 * time.Second):
			t.Fatal("the subscription stopped trying to attach")
		}
	}
	cancel()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if lost != 0 {
		t.Fatalf("ConsumerLost reported %d times for a consumer that never started", lost)
	}
}

// A broker that refuses transient (non-durable, non-exclusive) queues
// (RabbitMQ 4.3, or 4.0 with deprecated_features.permit.transient_nonexcl_queues
// = false) closes the whole connection over the declaration, with a 541:
// Subscribe fails with ErrConfig naming Queue.Durable, rather than take it
// for a lost connection and try again for ever.
func TestTransientQueueRefused(t *testing.T) {
	const classQueue = 50
	const refusal = "INTERNAL_ERROR - Feature `transient_nonexcl_queues` is deprecated.\nIts use is not permitted per the configuration (overriding the default, which is permitted):\n    \"deprecated_features.permit.transient_nonexcl_queues = false\"\nIts use will not be permit..."
	peer := newScriptedPeer(t)
	peer.onMethod = func(l *peerLink, channel, class, method uint16) bool {
		if class == classQueue && method == 10 { // queue.declare
			l.closeConnection(541, refusal)
			return true
		}
		return false
	}
	w := peerWiring(peer)
	w.BuildTopology = func(ch *amqp091.Channel, _, queue, _ string, _ watermill.LoggerAdapter) error {
		_, err := ch.QueueDeclare(queue, false, false, false, false, nil)
		return err
	}
	sub, err := NewSubscriber(Config[Wiring]{}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	peer.next(t)
	_, err = sub.Subscribe(context.Background(), "q")
	if !errors.Is(err, ErrConfig) || !IsPermanent(err) || !strings.Contains(err.Error(), "Queue.Durable") {
		t.Fatalf("Subscribe: %v, want a permanent ErrConfig naming Queue.Durable", err)
	}
	t.Log(err)
}
