package resilient_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

var newMessages = brokertest.Messages

// The call shape of someone switching from amqp.NewPublisher: the queue is
// declared by the publisher, so messages published before any subscriber
// exists are kept, persistent, with their UUID as message_id.
func TestPublishDurableQueueBeforeAnySubscriber(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("durable")
	brokertest.DeleteQueues(t, queue)
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	msgs, ids := newMessages(100)
	msgs[0].Metadata.Set("key", "value")
	if err := pub.Publish(queue, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("the publisher did not declare the durable queue: %v", err)
	}
	if q.Messages != 100 {
		t.Fatalf("queue holds %d messages, want 100", q.Messages)
	}
	d, ok, err := ch.Get(queue, false)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if d.MessageId != ids[0] || d.DeliveryMode != amqp091.Persistent || d.Headers["key"] != "value" {
		t.Fatalf("message_id %q (want %q), delivery mode %d (want persistent), headers %v", d.MessageId, ids[0], d.DeliveryMode, d.Headers)
	}
	_ = d.Nack(false, true)
	ch.Close()
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, ids))
}

// Many goroutines, one publisher: every nil is a message in the queue.
func TestPublishConcurrently(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("concurrent")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	const goroutines, perGoroutine = 32, 100
	var sent brokertest.IDs
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perGoroutine; i++ {
				msgs, ids := newMessages(1 + i%3)
				if err := pub.Publish(queue, msgs...); err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				sent.Add(ids...)
			}
		}()
	}
	wg.Wait()
	r := brokertest.Drain(t, queue, sent.All())
	brokertest.RequireNoneLost(t, r)
	if r.Duplicates != 0 || r.Unexpected != 0 {
		t.Fatalf("without faults there must be no duplicates: %s", r)
	}
}

func TestCloseIsIdempotentAndRefusesNewPublishes(t *testing.T) {
	brokertest.Need(t)
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	msgs, _ := newMessages(1)
	if err := pub.Publish("anything", msgs...); !errors.Is(err, resilient.ErrClosed) || !resilient.IsPermanent(err) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
	if pub.Status() != resilient.StateClosed {
		t.Fatalf("status %s, want closed", pub.Status())
	}
}

// Close waits for the publishes in progress to be confirmed.
func TestCloseWaitsForInFlightPublishes(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("close-wait")
	brokertest.DeleteQueues(t, queue)
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var sent brokertest.IDs
	var wg sync.WaitGroup
	started := make(chan struct{})
	var once sync.Once
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msgs, ids := newMessages(50)
				once.Do(func() { close(started) })
				err := pub.Publish(queue, msgs...)
				if errors.Is(err, resilient.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Publish: %v", err)
					return
				}
				sent.Add(ids...)
			}
		}()
	}
	<-started
	if err := pub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, sent.All()))
}

func TestStateChangesAreReported(t *testing.T) {
	brokertest.Need(t)
	var mu sync.Mutex
	var states []resilient.State
	pub, err := resilient.NewPublisher(resilient.Config{
		AMQP: amqp.NewDurableQueueConfig(brokertest.URI()),
		OnStateChange: func(c resilient.StateChange) {
			mu.Lock()
			states = append(states, c.To)
			mu.Unlock()
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.WaitConnected(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !pub.IsConnected() {
		t.Fatal("not connected after WaitConnected")
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []resilient.State{resilient.StateConnected, resilient.StateClosed}
	if fmt.Sprint(states) != fmt.Sprint(want) {
		t.Fatalf("states %v, want %v", states, want)
	}
}

var _ = time.Second
