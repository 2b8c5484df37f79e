package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// byHandler resolves, once per Router handler name, the two series of a
// watermill series (success "true"/"false", or acked "acked"/"nacked") for
// one publisher or subscriber name, so that recording takes no lock and
// allocates nothing after a handler's first message. Handler names are a
// Router's, a fixed set: the cache stays small.
type byHandler[M any] struct {
	resolve func(handler string) [2]M // [0]: success/acked, [1]: failure/nacked
	cache   sync.Map                  // handler name -> *[2]M
}

func (b *byHandler[M]) get(handler string) *[2]M {
	if handler == "" {
		handler = noHandler
	}
	if v, ok := b.cache.Load(handler); ok {
		return v.(*[2]M)
	}
	pair := b.resolve(handler)
	v, _ := b.cache.LoadOrStore(handler, &pair)
	return v.(*[2]M)
}

// publishTimes resolves publish_time_seconds for the publisher name.
func publishTimes(vec *prometheus.HistogramVec, name string) *byHandler[prometheus.Observer] {
	return &byHandler[prometheus.Observer]{resolve: func(handler string) [2]prometheus.Observer {
		return [2]prometheus.Observer{vec.WithLabelValues(handler, name, "true"), vec.WithLabelValues(handler, name, "false")}
	}}
}

// receivedTotals resolves subscriber_messages_received_total for the
// subscriber name.
func receivedTotals(vec *prometheus.CounterVec, name string) *byHandler[prometheus.Counter] {
	return &byHandler[prometheus.Counter]{resolve: func(handler string) [2]prometheus.Counter {
		return [2]prometheus.Counter{vec.WithLabelValues(handler, name, "acked"), vec.WithLabelValues(handler, name, "nacked")}
	}}
}
