//go:build !race

package conformance_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// watermill's TestReconnect: 10,000 messages from 100 goroutines while the
// broker restarts twice, consumed by watermill-amqp's subscriber and by ours.
// Built without -race, and run apart by scripts/test.sh, for races outside
// this module: watermill-amqp's subscriber races on its connection flag
// during reconnects, and the harness itself races (its collector goroutine
// appends to the slice the test then reads, pubsub/tests/test_pubsub.go:1086
// and :1120).
func TestConformanceReconnect(t *testing.T)            { reconnectSuite(t, v2Door(pubSub)) }
func TestConformanceResilientReconnect(t *testing.T)   { reconnectSuite(t, v2Door(resilientPubSub)) }
func TestConformanceResilientV3Reconnect(t *testing.T) { reconnectSuite(t, v3Door()) }

func reconnectSuite(t *testing.T, d door) {
	brokertest.Need(t)
	f := features()
	// The harness restarts the broker twice: at a third and at half of its
	// messages (pubsub/tests/test_pubsub.go:1061).
	f.RestartServiceCommand = restartCommand(t, 2)
	tests.TestReconnect(t, tests.TestContext{TestID: tests.NewTestID(), Features: f}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		pub, sub := d.queue(t)
		g := &publishGate{published: make(map[string]time.Time), changed: make(chan struct{})}
		return &gatedPublisher{Publisher: pub, gate: g}, &gatedSubscriber{Subscriber: sub, gate: g, closing: make(chan struct{})}
	})
}

// publishGate works around a race in the harness of TestReconnect: it
// records a message as sent only after Publish returned and it handed the
// message to a collecting goroutine, but asserts as soon as the subscriber
// received the last message. A confirming publisher returns after the
// broker persisted the message, which is often after the broker delivered
// it to an online consumer, so the harness can assert before recording the
// last message. The gate hands a received message on only once its Publish
// returned, plus a grace for the harness's own collector to run.
type publishGate struct {
	mu        sync.Mutex
	published map[string]time.Time
	changed   chan struct{}
}

const harnessGrace = 20 * time.Millisecond

func (g *publishGate) markPublished(msgs []*message.Message) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range msgs {
		g.published[m.UUID] = time.Now()
	}
	close(g.changed)
	g.changed = make(chan struct{})
}

// wait returns once the Publish of uuid returned harnessGrace ago.
func (g *publishGate) wait(ctx context.Context, uuid string) {
	for {
		g.mu.Lock()
		at, ok := g.published[uuid]
		changed := g.changed
		g.mu.Unlock()
		if ok {
			if d := time.Until(at.Add(harnessGrace)); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

type gatedPublisher struct {
	message.Publisher
	gate *publishGate
}

func (p *gatedPublisher) Publish(topic string, msgs ...*message.Message) error {
	err := p.Publisher.Publish(topic, msgs...)
	if err == nil {
		p.gate.markPublished(msgs)
	}
	return err
}

type gatedSubscriber struct {
	message.Subscriber
	gate      *publishGate
	closing   chan struct{} // closed by Close: the forwarders end
	closeOnce sync.Once
}

func (s *gatedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	in, err := s.Subscriber.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	// The harness may stop reading and close the subscriber without
	// cancelling ctx: Close ends the forwarder too (a delivery it held then
	// goes back to the queue, unacked).
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.closing:
		case <-ctx.Done():
		}
		cancel()
	}()
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		defer cancel()
		for msg := range in {
			s.gate.wait(ctx, msg.UUID)
			select {
			case out <- msg:
			case <-ctx.Done():
				msg.Nack()
				return
			}
		}
	}()
	return out, nil
}

func (s *gatedSubscriber) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	return s.Subscriber.Close()
}
