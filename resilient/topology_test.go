package resilient_test

import (
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// countingBuilder counts the topology declarations.
type countingBuilder struct {
	amqp.DefaultTopologyBuilder
	builds atomic.Int32
}

func (b *countingBuilder) BuildTopology(ch *amqp091.Channel, queue, exchange string, cfg amqp.Config, logger watermill.LoggerAdapter) error {
	b.builds.Add(1)
	return b.DefaultTopologyBuilder.BuildTopology(ch, queue, exchange, cfg, logger)
}

// Topology is declared once per topic per connection, not per publish, and
// again on the next connection: a queue an operator deleted comes back.
func TestTopologyDeclaredOncePerConnection(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("topology")
	brokertest.DeleteQueues(t, queue)
	builder := &countingBuilder{}
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.TopologyBuilder = builder
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg})

	var sent brokertest.IDs
	publish := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			msgs, ids := newMessages(2)
			if err := pub.Publish(queue, msgs...); err != nil {
				t.Fatal(err)
			}
			sent.Add(ids...)
		}
	}
	publish(50)
	if n := builder.builds.Load(); n != 1 {
		t.Fatalf("declared %d times on one connection, want 1", n)
	}

	// An operator deletes the queue (losing what it held) and drops the
	// connections: the next publish declares it again.
	conn := brokertest.Dial(t)
	ch, _ := conn.Channel()
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	brokertest.CloseAllConnections(t)
	if err := pub.WaitConnected(t.Context()); err != nil {
		t.Fatal(err)
	}
	sent = brokertest.IDs{}
	publish(50)
	if n := builder.builds.Load(); n < 2 {
		t.Fatalf("declared %d times over two connections, want 2", n)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, sent.All()))
}

// FailoverURIs: the first broker is unreachable, the next one is used.
func TestFailoverURIs(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("failover")
	brokertest.DeleteQueues(t, queue)
	cfg := amqp.NewDurableQueueConfig("amqp://guest:guest@127.0.0.1:1/")
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, FailoverURIs: []string{brokertest.URI()}})
	msgs, ids := newMessages(10)
	if err := pub.Publish(queue, msgs...); err != nil {
		t.Fatal(err)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, ids))
}
