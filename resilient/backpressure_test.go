package resilient_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// healthyRun is what one sequence of calls to the healthy topic measured.
type healthyRun struct {
	perSecond float64
	p50, p99  time.Duration
}

// measureHealthy makes calls sequential one-message calls to topic and
// returns their latencies.
func measureHealthy(t *testing.T, pub *resilient.Publisher, topic string, calls int) []time.Duration {
	t.Helper()
	lat := make([]time.Duration, 0, calls)
	for range calls {
		s := time.Now()
		if err := pub.Publish(topic, newMessage()); err != nil {
			t.Fatalf("healthy topic: %v", err)
		}
		lat = append(lat, time.Since(s))
	}
	return lat
}

func summarize(lat []time.Duration, elapsed time.Duration) healthyRun {
	slices.Sort(lat)
	return healthyRun{perSecond: float64(len(lat)) / elapsed.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100]}
}

// fillFull starts 64 goroutines publishing to the full queue's topic, each
// call nacked until its context ends, and returns what stops them.
func fillFull(t *testing.T, pub *resilient.Publisher, full string) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				m := newMessage()
				m.SetContext(ctx)
				err := pub.Publish(full, m)
				if err == nil {
					t.Error("a message to the full queue was confirmed")
					return
				}
				if !errors.Is(err, resilient.ErrNotConfirmed) && !errors.Is(err, resilient.ErrNacked) {
					t.Errorf("full queue: %v", err)
					return
				}
			}
		}()
	}
	return func() { cancel(); wg.Wait() }
}

// fanoutTopic declares exchange topic (fanout) bound to a queue of its
// own with args, and deletes both when the test ends.
func fanoutTopic(t *testing.T, ch *amqp091.Channel, args amqp091.Table) string {
	t.Helper()
	topic := brokertest.Name("bp")
	if err := ch.ExchangeDeclare(topic, "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(topic, true, false, false, false, args); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(topic, "", topic, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn := brokertest.Dial(t)
		defer conn.Close()
		c, _ := conn.Channel()
		_, _ = c.QueueDelete(topic, false, false, false)
		_ = c.ExchangeDelete(topic, false, false)
	})
	return topic
}

// Back-pressure is per topic: 64 goroutines publishing to a queue that is
// full and rejects publishes (x-overflow reject-publish: every message
// nacked, re-sent with backoff) cost a healthy topic on the same publisher
// a small fraction of its throughput and latency. The verdict is a ratio of
// the healthy topic's figures with and without the full one, measured on
// the same machine a moment apart, with a generous margin.
func TestFullQueueCostsOtherTopicsLittle(t *testing.T) {
	brokertest.Need(t)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	healthy := fanoutTopic(t, ch, nil)
	full := fanoutTopic(t, ch, amqp091.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm(full, "", false, false, amqp091.Publishing{Body: []byte("fills it")})
	if err != nil || !dc.Wait() {
		t.Fatalf("filling the full queue: %v", err)
	}
	cfg := amqp.NewDurablePubSubConfig(brokertest.URI(), nil)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, PublishTimeout: 10 * time.Minute})

	// Alternated, in rounds, so that what else the machine does weighs on
	// both alike.
	measureHealthy(t, pub, healthy, 50) // warm up: topology declared, lanes open
	var aloneLat, besideLat []time.Duration
	var aloneTime, besideTime time.Duration
	const rounds, calls = 4, 100
	for range rounds {
		start := time.Now()
		aloneLat = append(aloneLat, measureHealthy(t, pub, healthy, calls)...)
		aloneTime += time.Since(start)

		stopFull := fillFull(t, pub, full)
		start = time.Now()
		besideLat = append(besideLat, measureHealthy(t, pub, healthy, calls)...)
		besideTime += time.Since(start)
		stopFull()
	}
	alone, beside := summarize(aloneLat, aloneTime), summarize(besideLat, besideTime)

	t.Logf("healthy topic alone: %.0f calls/s, p50 %s, p99 %s", alone.perSecond, alone.p50, alone.p99)
	t.Logf("beside 64 callers on a full queue: %.0f calls/s, p50 %s, p99 %s", beside.perSecond, beside.p50, beside.p99)
	t.Logf("ratio: throughput %.2f, p50 %.1fx, p99 %.1fx", beside.perSecond/alone.perSecond,
		float64(beside.p50)/float64(alone.p50), float64(beside.p99)/float64(alone.p99))
	// Margins: on a 2-core machine under -race, the 64 callers' own work
	// takes 0.4 to 1.2 of the healthy topic's calls/s and 1.0 to 1.5 times
	// its p50; a lane replaced after every nack took 0.04 to 0.25 and 9.5 to
	// 25 times.
	if beside.perSecond < alone.perSecond/5 {
		t.Errorf("the full queue cut the healthy topic's throughput to %.0f%%", 100*beside.perSecond/alone.perSecond)
	}
	if beside.p50 > 4*alone.p50 {
		t.Errorf("the full queue raised the healthy topic's p50 %.1f times", float64(beside.p50)/float64(alone.p50))
	}
}
