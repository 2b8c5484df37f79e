package metrics_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// consume subscribes to queue with onEvent and records in arrivals every
// message it acks, until the test ends.
func consume(t testing.TB, queue string, onEvent func(resilient.Event), arrivals *brokertest.Arrivals) *resilient.Subscriber {
	t.Helper()
	// watermill-amqp's prefetch of 1 makes a consumer far slower than
	// the publishers under test: the backlog would take minutes to drain.
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Consume.Qos.PrefetchCount = 256
	sub, _ := pubsubtest.Subscriber(t, resilient.Config{AMQP: cfg, OnEvent: onEvent})
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
