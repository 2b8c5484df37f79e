package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// Subscriber returns the function to set as the core.Config.OnEvent of
// a Subscriber: it records the subscriber's events in the subscriber series,
// labelled subscriber_name=name (subscriber_messages_received_total also
// handler_name, of the Router handler that consumed the message, and acked:
// "acked" or "nacked", counted when the ack or nack reached the broker), and sets its connection state to
// connecting.
func (p *Prometheus) Subscriber(name string) func(core.Event) {
	v := p.sub
	m := &subscriberMetrics{
		received:    receivedTotals(v.received, name),
		delivered:   v.delivered.WithLabelValues(name),
		redelivered: v.redelivered.WithLabelValues(name),
		reattaches:  v.reattaches.WithLabelValues(name),
		pastLimit:   v.pastLimit.WithLabelValues(name),
		conn:        newConnection(v.conn, labelSubscriberName, name),
	}
	return m.observe
}

// subscriberMetrics are the series of one named subscriber, resolved once.
type subscriberMetrics struct {
	received               *byHandler[prometheus.Counter]
	delivered, redelivered prometheus.Counter
	reattaches             prometheus.Counter
	pastLimit              prometheus.Counter
	conn                   *connection
}

func (m *subscriberMetrics) observe(e core.Event) {
	switch e.Kind {
	case core.MessageDelivered:
		m.delivered.Add(float64(e.Messages))
		if e.Redelivered {
			m.redelivered.Add(float64(e.Messages))
		}
	case core.MessageAcked:
		m.received.get(e.Handler)[0].Add(float64(e.Messages))
	case core.MessageNacked:
		m.received.get(e.Handler)[1].Add(float64(e.Messages))
	case core.ConsumerReattached:
		m.reattaches.Inc()
	case core.DeliveryLimitReached:
		m.pastLimit.Add(float64(e.Messages))
	default:
		m.conn.observe(e)
	}
}
