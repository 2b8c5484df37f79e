package e2e_test

// Trace context: watermill metadata travels as AMQP headers and back, so a
// W3C traceparent set on publish reaches the handler, re-sends included.

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// traceparent is a W3C trace context header for message i, unique to it.
func traceparent(i int) string {
	return fmt.Sprintf("00-%032x-%016x-01", 0xabc000+i, 0x1000+i)
}

// Every message carries its own traceparent (and tracestate) in metadata;
// the link is reset in the middle of the call, so many messages are sent
// again on the next connection. Each one reaches the resilient Subscriber's
// handler with its own trace context, the re-sent ones included.
func TestTraceContextAcrossAResend(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	queue := brokertest.Name("trace")
	brokertest.DeleteQueues(t, queue)
	var resent atomic.Int64
	pub, states := faultPublisher(t, uri, func(c *resilient.Config) {
		c.OnEvent = func(e resilient.Event) {
			if e.Kind == resilient.MessagesResent {
				resent.Add(int64(e.Messages))
			}
		}
	})
	defer closePublisher(t, pub)
	sub, err := resilient.NewSubscriber(resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	const n = 3000
	msgs := make([]*message.Message, n)
	want := make(map[string]string, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte("traced"))
		msgs[i].Metadata.Set("traceparent", traceparent(i))
		msgs[i].Metadata.Set("tracestate", "vendor=value")
		want[msgs[i].UUID] = traceparent(i)
	}
	// Reset the link once the call is under way: the messages in flight
	// and those after them are sent again after the reconnect.
	var sentBytes atomic.Int64
	link.OnUpstream(func(chunk []byte) bool {
		total := sentBytes.Add(int64(len(chunk)))
		return total > 256<<10 && total-int64(len(chunk)) <= 256<<10
	})
	if err := pub.Publish(queue, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	link.OnUpstream(nil)
	states.Await("reconnecting")
	if resent.Load() == 0 {
		t.Fatal("nothing was re-sent: the test did not test a re-send")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	arrived := brokertest.NewArrivals()
	var wrong atomic.Int64
	go func() {
		for msg := range out {
			if msg.Metadata.Get("traceparent") != want[msg.UUID] || msg.Metadata.Get("tracestate") != "vendor=value" {
				wrong.Add(1)
			}
			arrived.Add(msg.UUID)
			msg.Ack()
		}
	}()
	ids := make([]string, 0, n)
	for _, m := range msgs {
		ids = append(ids, m.UUID)
	}
	arrived.AwaitAll(t, ids)
	cancel()
	t.Logf("%d messages, %d of them re-sent after a reset; %s", n, resent.Load(), arrived.Tally(ids))
	if n := wrong.Load(); n > 0 {
		t.Fatalf("%d messages reached the handler without their own trace context", n)
	}
}
