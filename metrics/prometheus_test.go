package metrics_test

import (
	"context"
	"strings"
	"testing"

	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/resilientmq/watermill-rabbitmq/metrics"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// Two NewPrometheus on one registry, and one name made twice, share the
// registered collectors rather than panic or fail.
func TestRegisteringTwiceReuses(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err != nil {
		t.Fatal(err)
	}
	b, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err != nil {
		t.Fatalf("second NewPrometheus on the same registry: %v", err)
	}
	a.Publisher("orders")(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 2})
	b.Publisher("orders")(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 3})
	a.Publisher("orders")(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 1})
	b.Subscriber("orders")(resilient.Event{Kind: resilient.MessageDelivered, Messages: 1})
	a.Subscriber("orders")(resilient.Event{Kind: resilient.MessageDelivered, Messages: 1})

	s := gather(t, reg)
	if v := s[series("app_rmq_publisher_messages_confirmed_total", "publisher_name", "orders")]; v != 6 {
		t.Errorf("confirmed = %v, want 6 (one series shared)", v)
	}
	if v := s[series("app_rmq_subscriber_messages_delivered_total", "subscriber_name", "orders")]; v != 2 {
		t.Errorf("delivered = %v, want 2 (one series shared)", v)
	}
	// Another namespace on the same registry is another set of series.
	if _, err := metrics.NewPrometheus(reg, "other", "rmq"); err != nil {
		t.Fatal(err)
	}
}

// A name held by a collector with other labels is an error, not a panic.
func TestRegisterConflictIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "app", Subsystem: "rmq", Name: "publisher_messages_confirmed_total", Help: "someone else's",
	}, []string{"topic"}))
	_, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err == nil || !strings.Contains(err.Error(), "app_rmq_publisher_messages_confirmed_total") {
		t.Fatalf("NewPrometheus over a conflicting collector: %v, want an error naming app_rmq_publisher_messages_confirmed_total", err)
	}
}

// The series pass Prometheus's own lint (names, units, help).
func TestSeriesLint(t *testing.T) {
	m, reg := newMetrics(t)
	pub, sub := m.Publisher("p"), m.Subscriber("s")
	for _, e := range []resilient.Event{
		{Kind: resilient.PublishStarted, Messages: 1},
		{Kind: resilient.MessagesConfirmed, Messages: 1},
		{Kind: resilient.MessagesNacked, Messages: 1},
		{Kind: resilient.MessagesReturned, Messages: 1},
		{Kind: resilient.MessagesResent, Messages: 1},
		{Kind: resilient.MessagesFailed, Messages: 1, Err: resilient.ErrNacked},
		{Kind: resilient.PublishDone, Messages: 1, Duration: 1},
		{Kind: resilient.Reconnected, Duration: 1},
	} {
		pub(e)
		sub(e)
	}
	for _, e := range []resilient.Event{
		{Kind: resilient.MessageDelivered, Messages: 1, Redelivered: true},
		{Kind: resilient.MessageAcked, Messages: 1},
		{Kind: resilient.MessageNacked, Messages: 1},
		{Kind: resilient.ConsumerReattached},
	} {
		sub(e)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d series, lint clean", n)
}

// nopPubSub is a message.Publisher and message.Subscriber for watermill's
// metrics builder to decorate.
type nopPubSub struct{}

func (nopPubSub) Publish(string, ...*message.Message) error { return nil }
func (nopPubSub) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return make(chan *message.Message), nil
}
func (nopPubSub) Close() error { return nil }

// publish_time_seconds and subscriber_messages_received_total are
// watermill's components/metrics series, name, help and labels: whichever
// registers first, the other takes the same collector (Prometheus refuses a
// name with other labels or help), so watermill's dashboards read ours.
func TestWatermillSeriesAreOneCollector(t *testing.T) {
	for _, watermillFirst := range []bool{true, false} {
		reg := prometheus.NewRegistry()
		builder := wmetrics.NewPrometheusMetricsBuilder(reg, "app", "rmq")
		decorate := func() {
			if _, err := builder.DecoratePublisher(nopPubSub{}); err != nil {
				t.Fatalf("watermill's DecoratePublisher: %v", err)
			}
			if _, err := builder.DecorateSubscriber(nopPubSub{}); err != nil {
				t.Fatalf("watermill's DecorateSubscriber: %v", err)
			}
		}
		if watermillFirst {
			decorate()
		}
		m, err := metrics.NewPrometheus(reg, "app", "rmq")
		if err != nil {
			t.Fatalf("NewPrometheus (watermill's first: %v): %v", watermillFirst, err)
		}
		if !watermillFirst {
			decorate()
		}
		m.Publisher("orders")(resilient.Event{Kind: resilient.PublishDone, Messages: 1, Handler: "h"})
		m.Subscriber("orders")(resilient.Event{Kind: resilient.MessageNacked, Messages: 1, Handler: "h"})
		s := gather(t, reg)
		for _, k := range []string{
			series("app_rmq_publish_time_seconds_count", "handler_name", "h", "publisher_name", "orders", "success", "true"),
			series("app_rmq_subscriber_messages_received_total", "acked", "nacked", "handler_name", "h", "subscriber_name", "orders"),
		} {
			if s[k] != 1 {
				t.Errorf("watermill's first: %v: %s = %v, want 1", watermillFirst, k, s[k])
			}
		}
	}
}
