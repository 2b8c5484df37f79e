package metrics_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// newPublisher starts a publisher to the test broker with onEvent, closed
// when the test ends.
func newPublisher(t testing.TB, onEvent func(resilient.Event)) *resilient.Publisher {
	t.Helper()
	pub, err := resilient.NewPublisher(resilient.Config{
		AMQP:           amqp.NewDurableQueueConfig(brokertest.URI()),
		PublishTimeout: 2 * time.Minute, // ride through a broker restart
		OnEvent:        onEvent,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return pub
}

// newSubscriber starts a subscriber to the test broker with onEvent,
// closed when the test ends.
func newSubscriber(t testing.TB, onEvent func(resilient.Event)) *resilient.Subscriber {
	t.Helper()
	sub, err := resilient.NewSubscriber(resilient.Config{
		AMQP:    amqp.NewDurableQueueConfig(brokertest.URI()),
		OnEvent: onEvent,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// consume subscribes to queue with onEvent and records in arrivals every
// message it acks, until the test ends.
func consume(t testing.TB, queue string, onEvent func(resilient.Event), arrivals *brokertest.Arrivals) *resilient.Subscriber {
	t.Helper()
	sub := newSubscriber(t, onEvent)
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for msg := range msgs {
			arrivals.Add(msg.UUID)
			msg.Ack()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = sub.Close()
		wg.Wait()
	})
	return sub
}

// awaitScrape scrapes url until ok says so, for up to two minutes, and
// returns the scrape that satisfied it.
func awaitScrape(t testing.TB, client *http.Client, url, what string, ok func(samples) bool) samples {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s := scrape(t, client, url)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited two minutes for %s", what)
		}
		<-tick.C
	}
}
