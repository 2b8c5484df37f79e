package resilientv3_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

// UUIDInMessageIDOnly through the v3 door, as through v2's (resilient's
// TestUUIDInMessageIDOnlyRoundTrip): no UUID header in the queue, and this
// library's subscriber hands out every message with its UUID and its
// metadata.
func TestUUIDInMessageIDOnlyRoundTripV3(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("lean-v3")
	brokertest.DeleteQueues(t, queue)
	pub := leanPublisherV3(t)
	sub, err := resilientv3.NewSubscriber(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	brokertest.RequireLeanRoundTrip(t, pub, sub, queue, queue, func(sent *message.Message) string { return sent.UUID })
}

// And watermill-amqp v3's own subscriber: every message with an empty UUID,
// its metadata intact.
func TestUUIDInMessageIDOnlyStockSubscriberV3(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("lean-stock-v3")
	brokertest.DeleteQueues(t, queue)
	pub := leanPublisherV3(t)
	stock, err := amqp.NewSubscriber(amqp.NewDurableQueueConfig(brokertest.URI()), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer stock.Close()
	brokertest.RequireLeanRoundTrip(t, pub, stock, queue, queue, func(*message.Message) string { return "" })
}

func leanPublisherV3(t *testing.T) *resilientv3.Publisher {
	pub, err := resilientv3.NewPublisher(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI()), UUIDInMessageIDOnly: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pub.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return pub
}
