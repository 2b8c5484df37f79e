package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// Subscriber returns the function to set as the core.Config.OnEvent of
// a Subscriber: it records the subscriber's events in the subscriber series,
// labelled subscriber_name=name, and sets its connection state to
// connecting.
func (p *Prometheus) Subscriber(name string) func(core.Event) {
	v := p.sub
	m := &subscriberMetrics{
		delivered:   v.delivered.WithLabelValues(name),
		redelivered: v.redelivered.WithLabelValues(name),
		acked:       v.acked.WithLabelValues(name),
		nacked:      v.nacked.WithLabelValues(name),
		reattaches:  v.reattaches.WithLabelValues(name),
		conn:        newConnection(v.conn, labelSubscriberName, name),
	}
	return m.observe
}

// subscriberMetrics are the series of one named subscriber, resolved once.
type subscriberMetrics struct {
	delivered, redelivered prometheus.Counter
	acked, nacked          prometheus.Counter
	reattaches             prometheus.Counter
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
		m.acked.Add(float64(e.Messages))
	case core.MessageNacked:
		m.nacked.Add(float64(e.Messages))
	case core.ConsumerReattached:
		m.reattaches.Inc()
	default:
		m.conn.observe(e)
	}
}
