package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// Publisher returns the function to set as the core.Config.OnEvent of a
// Publisher: it records the publisher's events in the publisher series,
// labelled publisher_name=name (publish_time_seconds also handler_name, of
// the Router handler whose output a call published, and success), and sets its connection state to connecting.
func (p *Prometheus) Publisher(name string) func(core.Event) {
	v := p.pub
	m := &publisherMetrics{
		publishTime: publishTimes(v.publishTime, name),
		inFlight:    v.inFlight.WithLabelValues(name),
		confirmed:   v.confirmed.WithLabelValues(name),
		nacked:      v.nacked.WithLabelValues(name),
		returned:    v.returned.WithLabelValues(name),
		resent:      v.resent.WithLabelValues(name),
		failed:      v.failed.MustCurryWith(prometheus.Labels{labelPublisherName: name}),
		conn:        newConnection(v.conn, labelPublisherName, name),
	}
	return m.observe
}

// publisherMetrics are the series of one named publisher, resolved once.
type publisherMetrics struct {
	publishTime *byHandler[prometheus.Observer]
	inFlight    prometheus.Gauge
	confirmed   prometheus.Counter
	nacked      prometheus.Counter
	returned    prometheus.Counter
	resent      prometheus.Counter
	failed      *prometheus.CounterVec // curried with the name
	conn        *connection
}

func (m *publisherMetrics) observe(e core.Event) {
	n := float64(e.Messages)
	switch e.Kind {
	case core.PublishStarted:
		m.inFlight.Add(n)
	case core.PublishDone:
		times := m.publishTime.get(e.Handler)
		if e.Err == nil {
			times[0].Observe(e.Duration.Seconds())
		} else {
			times[1].Observe(e.Duration.Seconds())
		}
		m.inFlight.Sub(n) // every call reports PublishStarted first
	case core.MessagesConfirmed:
		m.confirmed.Add(n)
	case core.MessagesNacked:
		m.nacked.Add(n)
	case core.MessagesReturned:
		m.returned.Add(n)
	case core.MessagesResent:
		m.resent.Add(n)
	case core.MessagesFailed:
		m.failed.WithLabelValues(class(e.Err)).Add(n)
	default:
		m.conn.observe(e)
	}
}
