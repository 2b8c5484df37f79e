package resilient_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// With UUIDInMessageIDOnly, through the v2 door, the messages lie in the
// queue without the UUID header (without any header table when they have
// no metadata), and this library's subscriber hands out every one with its
// UUID and its metadata.
func TestUUIDInMessageIDOnlyRoundTrip(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("lean")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{UUIDInMessageIDOnly: true})
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{})
	brokertest.RequireLeanRoundTrip(t, pub, sub, queue, queue, func(sent *message.Message) string { return sent.UUID })
}

// What watermill-amqp's own subscriber makes of the same messages, as the
// README says: every one with an empty UUID, its metadata intact. Hence
// UUIDInMessageIDOnly is off by default.
func TestUUIDInMessageIDOnlyStockSubscriber(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("lean-stock")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{UUIDInMessageIDOnly: true})
	stock, err := amqp.NewSubscriber(amqp.NewDurableQueueConfig(brokertest.URI()), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer stock.Close()
	brokertest.RequireLeanRoundTrip(t, pub, stock, queue, queue, func(*message.Message) string { return "" })
}
