package metrics_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resilientmq/watermill-rabbitmq/metrics"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

func newMetrics(t testing.TB) (*metrics.Prometheus, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func TestPublisherSeries(t *testing.T) {
	m, reg := newMetrics(t)
	on := m.Publisher("orders")
	other := m.Publisher("audit")

	on(resilient.Event{Kind: resilient.PublishStarted, Messages: 3})
	on(resilient.Event{Kind: resilient.PublishStarted, Messages: 2})
	s := gather(t, reg)
	if got := s[series("app_rmq_publisher_messages_in_flight", "publisher_name", "orders")]; got != 5 {
		t.Errorf("in flight during two calls = %v, want 5", got)
	}

	on(resilient.Event{Kind: resilient.MessagesNacked, Messages: 1})
	on(resilient.Event{Kind: resilient.MessagesResent, Messages: 1})
	on(resilient.Event{Kind: resilient.MessagesReturned, Messages: 1})
	on(resilient.Event{Kind: resilient.MessagesResent, Messages: 1})
	on(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 3})
	on(resilient.Event{Kind: resilient.PublishDone, Messages: 3, Duration: 4 * time.Millisecond})
	on(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 1})
	notConfirmed := fmt.Errorf("publish timeout: %w", resilient.ErrNotConfirmed)
	on(resilient.Event{Kind: resilient.MessagesFailed, Messages: 1, Err: notConfirmed})
	on(resilient.Event{Kind: resilient.PublishDone, Messages: 2, Duration: 2 * time.Second, Err: notConfirmed})
	// Rejected before sending: started, failed and done at once.
	tooLarge := fmt.Errorf("body of 200 MiB: %w", resilient.ErrMessageTooLarge)
	on(resilient.Event{Kind: resilient.PublishStarted, Messages: 4})
	on(resilient.Event{Kind: resilient.MessagesFailed, Messages: 4, Err: tooLarge})
	on(resilient.Event{Kind: resilient.PublishDone, Messages: 4, Err: tooLarge})
	// The output of a Router handler: watermill's handler_name.
	on(resilient.Event{Kind: resilient.PublishStarted, Messages: 1})
	on(resilient.Event{Kind: resilient.PublishDone, Messages: 1, Duration: time.Millisecond, Handler: "enrich"})
	other(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 7})

	s = gather(t, reg)
	want := map[string]float64{
		series("app_rmq_publisher_messages_in_flight", "publisher_name", "orders"): 0,
		// watermill's publish_time_seconds: its names, its labels, its values.
		series("app_rmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "orders", "success", "true"):  1,
		series("app_rmq_publish_time_seconds_sum", "handler_name", "<no handler>", "publisher_name", "orders", "success", "true"):    0.004,
		series("app_rmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "orders", "success", "false"): 2,
		series("app_rmq_publish_time_seconds_sum", "handler_name", "<no handler>", "publisher_name", "orders", "success", "false"):   2,
		series("app_rmq_publish_time_seconds_count", "handler_name", "enrich", "publisher_name", "orders", "success", "true"):        1,
		series("app_rmq_publisher_messages_confirmed_total", "publisher_name", "orders"):                                             4,
		series("app_rmq_publisher_messages_nacked_total", "publisher_name", "orders"):                                                1,
		series("app_rmq_publisher_messages_returned_total", "publisher_name", "orders"):                                              1,
		series("app_rmq_publisher_messages_resent_total", "publisher_name", "orders"):                                                2,
		series("app_rmq_publisher_messages_failed_total", "class", "not_confirmed", "publisher_name", "orders"):                      1,
		series("app_rmq_publisher_messages_failed_total", "class", "message_too_large", "publisher_name", "orders"):                  4,
		series("app_rmq_publisher_messages_confirmed_total", "publisher_name", "audit"):                                              7,
		series("app_rmq_publisher_connection_state", "publisher_name", "orders", "state", "connecting"):                              1,
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	// The publisher side has nothing of the subscriber's.
	if s.family("app_rmq_subscriber_connection_state") {
		t.Error("a publisher made subscriber series")
	}
}

// The hot events cost no allocation.
func TestPublisherHotPathAllocatesNothing(t *testing.T) {
	m, _ := newMetrics(t)
	on := m.Publisher("orders")
	hot := []resilient.Event{
		{Kind: resilient.PublishStarted, Messages: 10},
		{Kind: resilient.MessagesConfirmed, Messages: 10},
		{Kind: resilient.MessagesNacked, Messages: 1},
		{Kind: resilient.MessagesResent, Messages: 1},
		{Kind: resilient.MessagesReturned, Messages: 1},
		{Kind: resilient.PublishDone, Messages: 10, Duration: time.Millisecond},
		{Kind: resilient.PublishDone, Messages: 10, Duration: time.Millisecond, Handler: "enrich"},
		{Kind: resilient.PublishDone, Messages: 10, Err: resilient.ErrNacked},
		{Kind: resilient.StateChanged, State: resilient.StateConnected},
		{Kind: resilient.Reconnected, Duration: time.Second},
	}
	for _, e := range hot {
		if n := testing.AllocsPerRun(100, func() { on(e) }); n != 0 {
			t.Errorf("%s: %v allocations per event", e.Kind, n)
		}
	}
}

func BenchmarkPublisherEvents(b *testing.B) {
	m, _ := newMetrics(b)
	on := m.Publisher("orders")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			on(resilient.Event{Kind: resilient.PublishStarted, Messages: 1})
			on(resilient.Event{Kind: resilient.MessagesConfirmed, Messages: 1})
			on(resilient.Event{Kind: resilient.PublishDone, Messages: 1, Duration: time.Millisecond})
		}
	})
}
