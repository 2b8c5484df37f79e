package resilient_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// quorumConfig is a durable queue config whose queues are quorum queues.
func quorumConfig() amqp.Config {
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Queue.Arguments = amqp091.Table{"x-queue-type": "quorum"}
	return cfg
}

// On a quorum queue, a handler that Nacks gets the message again, with the
// broker's redelivery count in its metadata (the count is an integer header
// that watermill-amqp's marshaler refuses: such a message used to come back
// for ever without reaching the handler). Global QoS, which quorum queues
// refuse by closing the connection, is applied per consumer.
func TestQuorumQueueRedeliveryReachesTheHandler(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("quorum-nack")
	brokertest.DeleteQueues(t, queue)
	cfg := quorumConfig()
	cfg.Consume.Qos = amqp.QosConfig{PrefetchCount: 10, Global: true}
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg})
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: cfg})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	out, ids := newMessages(20)
	if err := pub.Publish(queue, out...); err != nil {
		t.Fatal(err)
	}
	r := newReceived()
	var mu sync.Mutex
	counts := make(map[string]string)
	go func() {
		for msg := range msgs {
			mu.Lock()
			_, again := counts[msg.UUID]
			counts[msg.UUID] = msg.Metadata.Get("x-delivery-count")
			mu.Unlock()
			if !again {
				msg.Nack()
				continue
			}
			r.add(msg)
			msg.Ack()
		}
	}()
	r.AwaitAll(t, ids)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if counts[id] != "1" {
			t.Fatalf("%s redelivered with x-delivery-count %q, want \"1\"", id, counts[id])
		}
	}
	if st := sub.Status(); st != resilient.StateConnected {
		t.Fatalf("subscriber %s: global QoS must not cost the connection", st)
	}
	r.tally(t, ids)
}
