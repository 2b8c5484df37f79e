package resilient_test

import (
	"context"
	"errors"
	"strings"
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

// watermill-amqp's non-durable configs declare transient (non-durable,
// non-exclusive) queues: deprecated in RabbitMQ 4.0, refused from 4.3 on
// (and earlier with deprecated_features.permit.transient_nonexcl_queues =
// false), by closing the whole connection. Where the broker takes them they
// work; where it refuses them, Subscribe, and Publish with a queue config
// (whose publisher declares the queue), fail at once with ErrConfig naming
// Queue.Durable; a pub/sub config's publisher declares no queue, and works.
func TestNonDurableConfigs(t *testing.T) {
	brokertest.Need(t)
	refused := brokerRefusesTransientQueues(t)
	t.Logf("the broker refuses transient queues: %v", refused)
	for name, cfgFor := range map[string]func(string) amqp.Config{
		"NewNonDurableQueueConfig": amqp.NewNonDurableQueueConfig,
		"NewNonDurablePubSubConfig": func(uri string) amqp.Config {
			return amqp.NewNonDurablePubSubConfig(uri, amqp.GenerateQueueNameTopicNameWithSuffix("sub"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := cfgFor(brokertest.URI())
			topic := brokertest.Name("transient")
			brokertest.DeleteQueues(t, topic, topic+"_sub")
			pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg})
			sub, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: cfg})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			msgs, err := sub.Subscribe(ctx, topic)
			if refused {
				if !errors.Is(err, resilient.ErrConfig) || !resilient.IsPermanent(err) || !strings.Contains(err.Error(), "Queue.Durable") {
					t.Fatalf("Subscribe: %v, want a permanent ErrConfig naming Queue.Durable", err)
				}
				t.Log(err)
				out, ids := newMessages(3)
				err = pub.Publish(topic, out...)
				if !strings.Contains(name, "PubSub") { // a queue config: the publisher declares the queue too
					requirePublishError(t, err, resilient.ErrConfig, ids)
					if !strings.Contains(err.Error(), "Queue.Durable") {
						t.Fatalf("Publish: %v does not name Queue.Durable", err)
					}
				} else if err != nil {
					t.Fatalf("Publish to a pub/sub exchange, no queue declared: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			out, ids := newMessages(20)
			if err := pub.Publish(topic, out...); err != nil {
				t.Fatal(err)
			}
			r := newReceived()
			for range ids {
				msg := <-msgs
				r.add(msg)
				msg.Ack()
			}
			r.tally(t, ids)
		})
	}
}

// brokerRefusesTransientQueues declares a transient non-exclusive queue on
// a connection of its own, and tells whether the broker refused it.
func brokerRefusesTransientQueues(t *testing.T) bool {
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	probe := brokertest.Name("transient-probe")
	_, err = ch.QueueDeclare(probe, false, true, false, false, nil)
	if err == nil {
		_, _ = ch.QueueDelete(probe, false, false, false)
		return false
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) && strings.Contains(ae.Reason, "transient_nonexcl_queues") {
		return true
	}
	t.Fatalf("declaring a transient queue: %v", err)
	return false
}
