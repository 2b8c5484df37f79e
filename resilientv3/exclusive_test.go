package resilientv3_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/core"
	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

// An exclusive queue config through the v3 door, as through v2's
// (resilient's TestExclusiveQueueConfig): published while no subscriber
// holds the queue, a permanent ErrUnroutable naming Queue.Exclusive at
// once; while one does, delivered; a second subscriber fails at once.
func TestExclusiveQueueConfigV3(t *testing.T) {
	brokertest.Need(t)
	cfg := amqp.NewNonDurableQueueConfig(brokertest.URI())
	cfg.Queue.Exclusive = true
	topic := brokertest.Name("exclusive-v3")
	pub, err := resilientv3.NewPublisher(resilientv3.Config{AMQP: cfg, PublishTimeout: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	err = pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("early")))
	if !errors.Is(err, core.ErrUnroutable) || !core.IsPermanent(err) || !strings.Contains(err.Error(), "Queue.Exclusive") {
		t.Fatalf("publish before any subscriber: %v", err)
	}
	sub, err := resilientv3.NewSubscriber(resilientv3.Config{AMQP: cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	msgs, err := sub.Subscribe(t.Context(), topic)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	m := message.NewMessage(watermill.NewUUID(), []byte("kept"))
	if err := pub.Publish(topic, m); err != nil {
		t.Fatalf("publish while the subscriber holds the queue: %v", err)
	}
	select {
	case got := <-msgs:
		got.Ack()
		if got.UUID != m.UUID {
			t.Fatalf("got %s, want %s", got.UUID, m.UUID)
		}
	case <-time.After(time.Minute):
		t.Fatal("not delivered in a minute")
	}
	other, err := resilientv3.NewSubscriber(resilientv3.Config{AMQP: cfg}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Subscribe(t.Context(), topic); !errors.Is(err, core.ErrPreconditionFailed) || !strings.Contains(err.Error(), "Queue.Exclusive") {
		t.Fatalf("a second subscriber: %v", err)
	}
}
