package metrics_test

import (
	"strings"
	"testing"

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
		Namespace: "app", Subsystem: "rmq", Name: "publish_total", Help: "someone else's",
	}, []string{"topic"}))
	_, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err == nil || !strings.Contains(err.Error(), "app_rmq_publish_total") {
		t.Fatalf("NewPrometheus over a conflicting collector: %v, want an error naming app_rmq_publish_total", err)
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
