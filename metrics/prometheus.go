package metrics

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The labels watermill's components/metrics gives its series, and ours.
const (
	labelHandlerName    = "handler_name"
	labelPublisherName  = "publisher_name"
	labelSubscriberName = "subscriber_name"
	labelSuccess        = "success"
	labelAcked          = "acked"
	noHandler           = "<no handler>" // watermill's value outside a Router
	labelClass          = "class"
	labelCause          = "cause"
	labelState          = "state"
)

// Buckets of the histograms, in seconds.
var (
	// PublishBuckets spans a confirm on a local broker (1 ms) to a publish
	// that waited for a long reconnect (60 s).
	PublishBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	// ReconnectBuckets spans a redial after a dropped connection (0.1 s)
	// to a broker restart or failover that took minutes (5 min).
	ReconnectBuckets = []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
)

// Prometheus makes OnEvent functions that record a Publisher's or a
// Subscriber's events in Prometheus series registered on one registry. It is
// safe for concurrent use.
type Prometheus struct {
	pub publisherVecs
	sub subscriberVecs
}

type publisherVecs struct {
	publishTime *prometheus.HistogramVec // watermill's
	inFlight    *prometheus.GaugeVec
	confirmed   *prometheus.CounterVec
	nacked      *prometheus.CounterVec
	returned    *prometheus.CounterVec
	resent      *prometheus.CounterVec
	failed      *prometheus.CounterVec
	conn        connectionVecs
}

type subscriberVecs struct {
	received    *prometheus.CounterVec // watermill's
	delivered   *prometheus.CounterVec
	redelivered *prometheus.CounterVec
	reattaches  *prometheus.CounterVec
	pastLimit   *prometheus.CounterVec
	conn        connectionVecs
}

// NewPrometheus registers the series on registry (nil: prometheus's
// DefaultRegisterer) under namespace and subsystem, reusing those already
// registered there, e.g. by an earlier NewPrometheus with the same
// namespace and subsystem. It fails when another collector already holds one
// of the names with other labels.
func NewPrometheus(registry prometheus.Registerer, namespace, subsystem string) (*Prometheus, error) {
	if registry == nil {
		registry = prometheus.DefaultRegisterer
	}
	r := registrar{reg: registry, namespace: namespace, subsystem: subsystem}
	p := &Prometheus{
		pub: publisherVecs{
			// Name, help and labels as watermill's components/metrics has them.
			publishTime: r.histogram("publish_time_seconds", "The time that a publishing attempt (success or not) took in seconds",
				PublishBuckets, labelHandlerName, labelPublisherName, labelSuccess),
			inFlight:  r.gauge("publisher_messages_in_flight", "Messages in Publish calls in progress.", labelPublisherName),
			confirmed: r.counter("publisher_messages_confirmed_total", "Messages the broker confirmed.", labelPublisherName),
			nacked:    r.counter("publisher_messages_nacked_total", "Messages the broker nacked.", labelPublisherName),
			returned:  r.counter("publisher_messages_returned_total", "Messages the publisher's own queue returned (declared again, re-sent).", labelPublisherName),
			resent:    r.counter("publisher_messages_resent_total", "Messages sent again after a nack, a return, or the loss of their channel or connection.", labelPublisherName),
			failed:    r.counter("publisher_messages_failed_total", "Messages that failed for good, by error class.", labelPublisherName, labelClass),
			conn:      r.connection("publisher", labelPublisherName),
		},
		sub: subscriberVecs{
			// Name, help and labels as watermill's components/metrics has them.
			received: r.counter("subscriber_messages_received_total", "The total number of messages received by the subscriber",
				labelHandlerName, labelSubscriberName, labelAcked),
			delivered:   r.counter("subscriber_messages_delivered_total", "Messages handed to the subscriber's reader, redeliveries included.", labelSubscriberName),
			redelivered: r.counter("subscriber_messages_redelivered_total", "Messages handed to the reader that the broker had delivered before.", labelSubscriberName),
			reattaches:  r.counter("subscriber_reattaches_total", "Times a subscription consumed again: after losing its channel or connection, or ending a consumer itself (silent for 5 heartbeats, a gap in delivery tags, leaving a node).", labelSubscriberName),
			pastLimit: r.counter("subscriber_messages_delivery_limit_reached_total",
				"Messages sent back to a quorum queue past its delivery limit: the broker drops or dead-letters them.", labelSubscriberName),
			conn: r.connection("subscriber", labelSubscriberName),
		},
	}
	if err := errors.Join(r.errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// registrar registers collectors, or takes those already registered, and
// collects what went wrong.
type registrar struct {
	reg                  prometheus.Registerer
	namespace, subsystem string
	errs                 []error
}

func (r *registrar) counter(name, help string, labels ...string) *prometheus.CounterVec {
	return register(r, name, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: r.namespace, Subsystem: r.subsystem, Name: name, Help: help,
	}, labels))
}

func (r *registrar) gauge(name, help string, labels ...string) *prometheus.GaugeVec {
	return register(r, name, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: r.namespace, Subsystem: r.subsystem, Name: name, Help: help,
	}, labels))
}

func (r *registrar) histogram(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return register(r, name, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: r.namespace, Subsystem: r.subsystem, Name: name, Help: help, Buckets: buckets,
	}, labels))
}

// register registers c, or returns the collector registered before it
// under the same name and labels (as watermill's metrics builder does).
func register[C prometheus.Collector](r *registrar, name string, c C) C {
	err := r.reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	r.errs = append(r.errs, fmt.Errorf("metrics: register %s: %w", prometheus.BuildFQName(r.namespace, r.subsystem, name), err))
	return c // unregistered, but usable: the caller sees the error
}
