package resilient_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
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

// unreadableMarshaler reads nothing: every delivery fails to unmarshal.
type unreadableMarshaler struct{ amqp.DefaultMarshaler }

func (unreadableMarshaler) Unmarshal(amqp091.Delivery) (*message.Message, error) {
	return nil, errors.New("cannot read this one")
}

// A quorum queue drops a message (or dead-letters it) once it went back to
// the queue past its delivery limit, and tells no one: the subscriber says
// so, with an event and a log line, when it sends such a message back (the
// handler's Nack, or its own for a message its Marshaler cannot read). A
// dead-letter exchange keeps the message. With no x-delivery-limit, the
// limit is RabbitMQ 4's default of 20; RabbitMQ 3.x has none, and no event
// comes however often the message goes back.
func TestDeliveryLimitMadeVisible(t *testing.T) {
	brokertest.Need(t)
	for _, c := range []struct {
		name       string
		limit      any // x-delivery-limit; nil: the broker's default
		unreadable bool
	}{
		{"handler nacks, x-delivery-limit 2, dead-lettered", int32(2), false},
		{"unreadable, x-delivery-limit 1, dead-lettered", int32(1), true},
		{"handler nacks, the broker's default limit, dropped", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			queue, dlq := brokertest.Name("limit"), brokertest.Name("limit-dlq")
			brokertest.DeleteQueues(t, queue, dlq)
			cfg := quorumConfig()
			if c.limit != nil {
				cfg.Queue.Arguments["x-delivery-limit"] = c.limit
				cfg.Queue.Arguments["x-dead-letter-exchange"] = ""
				cfg.Queue.Arguments["x-dead-letter-routing-key"] = dlq
				conn := brokertest.Dial(t)
				ch, _ := conn.Channel()
				if _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); err != nil {
					t.Fatal(err)
				}
				_ = conn.Close()
			}
			pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg})
			subCfg := cfg
			if c.unreadable {
				subCfg.Marshaler = unreadableMarshaler{}
			}
			events := make(chan resilient.Event, 16)
			var nacked atomic.Int32
			sub, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: subCfg, OnEvent: func(e resilient.Event) {
				switch e.Kind {
				case resilient.DeliveryLimitReached:
					events <- e
				case resilient.MessageNacked:
					nacked.Add(1)
				}
			}})
			major := brokerMajor(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			msgs, err := sub.Subscribe(ctx, queue)
			if err != nil {
				t.Fatal(err)
			}
			out, ids := newMessages(1)
			if err := pub.Publish(queue, out...); err != nil {
				t.Fatal(err)
			}

			if c.limit == nil && major < 4 {
				// No limit: the message keeps coming back; acked at last.
				for n := 1; ; n++ {
					msg := <-msgs
					if n <= 25 {
						msg.Nack()
						continue
					}
					msg.Ack()
					break
				}
				select {
				case e := <-events:
					t.Fatalf("RabbitMQ %d: %v, though it has no delivery limit", major, e.Err)
				default:
				}
				t.Logf("RabbitMQ %d: 25 nacks, no delivery limit, no event", major)
				return
			}
			go func() {
				for msg := range msgs {
					msg.Nack()
				}
			}()
			var e resilient.Event
			select {
			case e = <-events:
			case <-time.After(2 * time.Minute):
				t.Fatalf("no DeliveryLimitReached after %d nacks", nacked.Load())
			}
			t.Logf("RabbitMQ %d, after %d nacks: %v", major, nacked.Load(), e.Err)
			want := int32(defaultDeliveryLimit)
			if c.limit != nil {
				want = c.limit.(int32)
			}
			if got := nacked.Load(); got != want+1 {
				t.Errorf("the event came after %d nacks, want %d (the limit, and the last)", got, want+1)
			}
			if !strings.Contains(e.Err.Error(), ids[0]) {
				t.Errorf("%v does not name the message", e.Err)
			}
			if c.limit != nil {
				// Dead-lettered, not requeued: it reaches the dead-letter
				// queue (the broker dead-letters after the nack, on its
				// own time), and is no longer in its own.
				awaitInQueue(t, dlq, ids[0])
			}
			cancel()
			if err := sub.Close(); err != nil {
				t.Fatal(err)
			}
			conn := brokertest.Dial(t)
			defer conn.Close()
			ch, _ := conn.Channel()
			q, err := ch.QueueDeclarePassive(queue, true, false, false, false, cfg.Queue.Arguments)
			if err != nil || q.Messages != 0 {
				t.Fatalf("the queue holds %d message(s) (%v), want none: the broker requeued it", q.Messages, err)
			}
			select {
			case e := <-events:
				t.Fatalf("a second event: %v", e.Err)
			default:
			}
		})
	}
}

// awaitInQueue consumes queue until the message with id arrives.
func awaitInQueue(t *testing.T, queue, id string) {
	t.Helper()
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for {
		select {
		case d := <-deliveries:
			if d.MessageId == id {
				return
			}
			t.Errorf("unexpected message %s in %s", d.MessageId, queue)
		case <-timeout.C:
			t.Fatalf("%s never reached %s", id, queue)
		}
	}
}

// defaultDeliveryLimit is a quorum queue's delivery limit on RabbitMQ 4.x.
const defaultDeliveryLimit = 20

// brokerMajor is the broker's major version, from its version property.
func brokerMajor(t *testing.T) int {
	conn := brokertest.Dial(t)
	defer conn.Close()
	v, _ := conn.Properties["version"].(string)
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		t.Fatalf("broker version %q", v)
	}
	return n
}
