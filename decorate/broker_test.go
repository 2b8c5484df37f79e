package decorate_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/decorate"
	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// The whole stack on this module's publisher, through connections the
// broker closes under it: the decorators must keep the publisher's promises
// (nothing confirmed is lost) and add no failure of their own.
func TestStackOnResilientPublisherThroughForcedCloses(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("stack")
	brokertest.DeleteQueues(t, queue)
	states, record := brokertest.NewStates(t)
	inner, err := resilient.NewPublisher(resilient.Config{
		AMQP:          amqp.NewDurableQueueConfig(brokertest.URI()),
		OnStateChange: func(c resilient.StateChange) { record(c.To.String()) },
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	states.Await("connected")

	var published, failed atomic.Int64
	var pub message.Publisher = inner
	for _, dec := range []message.PublisherDecorator{
		decorate.Reconnect(decorate.ReconnectConfig{}),
		decorate.Retry(decorate.RetryConfig{}),
		decorate.Timeout(2 * time.Minute),
		decorate.Metrics(func(r decorate.PublishResult) {
			published.Add(int64(r.Messages))
			if r.Err != nil {
				failed.Add(1)
			}
		}),
	} {
		if pub, err = dec(pub); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := pub.(decorate.ConnectionWaiter); !ok {
		t.Fatal("the stack hides the publisher's WaitConnected")
	}

	load := brokertest.StartLoad(t, pub, 8, queue)
	load.WaitProgress(300)
	for range 2 {
		brokertest.CloseAllConnections(t)
		states.Await("reconnecting")
		states.Await("connected")
		load.WaitProgress(300)
	}
	load.Stop()
	if err := pub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("Metrics saw %d messages published, %d failed calls", published.Load(), failed.Load())
	if failed.Load() != 0 || published.Load() < int64(load.Confirmed.Len()) {
		t.Fatalf("Metrics: %d messages, %d failures; the load confirmed %d", published.Load(), failed.Load(), load.Confirmed.Len())
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, load.Confirmed.All()))
}
