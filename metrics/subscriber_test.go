package metrics_test

import (
	"testing"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

func TestSubscriberSeries(t *testing.T) {
	m, reg := newMetrics(t)
	on := m.Subscriber("orders")
	for range 5 {
		on(resilient.Event{Kind: resilient.MessageDelivered, Messages: 1})
	}
	on(resilient.Event{Kind: resilient.MessageDelivered, Messages: 1, Redelivered: true})
	for range 4 {
		on(resilient.Event{Kind: resilient.MessageAcked, Messages: 1})
	}
	on(resilient.Event{Kind: resilient.MessageNacked, Messages: 1})
	on(resilient.Event{Kind: resilient.MessageAcked, Messages: 1, Handler: "enrich"}) // consumed by a Router's handler
	on(resilient.Event{Kind: resilient.ConsumerReattached})
	on(resilient.Event{Kind: resilient.ConsumerReattached})
	on(resilient.Event{Kind: resilient.DeliveryLimitReached, Messages: 1})
	on(resilient.Event{Kind: resilient.ChannelRefused})

	s := gather(t, reg)
	want := map[string]float64{
		series("app_rmq_subscriber_messages_delivered_total", "subscriber_name", "orders"):   6,
		series("app_rmq_subscriber_messages_redelivered_total", "subscriber_name", "orders"): 1,
		// watermill's subscriber_messages_received_total: its names, its labels.
		series("app_rmq_subscriber_messages_received_total", "acked", "acked", "handler_name", "<no handler>", "subscriber_name", "orders"):  4,
		series("app_rmq_subscriber_messages_received_total", "acked", "nacked", "handler_name", "<no handler>", "subscriber_name", "orders"): 1,
		series("app_rmq_subscriber_messages_received_total", "acked", "acked", "handler_name", "enrich", "subscriber_name", "orders"):        1,
		series("app_rmq_subscriber_reattaches_total", "subscriber_name", "orders"):                                                           2,
		series("app_rmq_subscriber_messages_delivery_limit_reached_total", "subscriber_name", "orders"):                                      1,
		series("app_rmq_subscriber_channels_refused_total", "subscriber_name", "orders"):                                                     1,
		series("app_rmq_subscriber_connection_state", "state", "connecting", "subscriber_name", "orders"):                                    1,
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if s.family("app_rmq_publish_time_seconds") || s.family("app_rmq_publisher_connection_state") {
		t.Error("a subscriber made publisher series")
	}
}

func TestSubscriberHotPathAllocatesNothing(t *testing.T) {
	m, _ := newMetrics(t)
	on := m.Subscriber("orders")
	for _, e := range []resilient.Event{
		{Kind: resilient.MessageDelivered, Messages: 1, Redelivered: true},
		{Kind: resilient.MessageAcked, Messages: 1},
		{Kind: resilient.MessageNacked, Messages: 1},
		{Kind: resilient.MessageAcked, Messages: 1, Handler: "enrich"},
		{Kind: resilient.ConsumerReattached},
	} {
		if n := testing.AllocsPerRun(100, func() { on(e) }); n != 0 {
			t.Errorf("%s: %v allocations per event", e.Kind, n)
		}
	}
}
