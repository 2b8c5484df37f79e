package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// states are the values of the state label, indexed by core.State.
var states = [...]core.State{
	core.StateConnecting,
	core.StateConnected,
	core.StateBlocked,
	core.StateReconnecting,
	core.StateClosed,
}

// lossCauses start at 0 on every name: the classes core.ErrorClass
// gives a lost connection.
var lossCauses = []string{"broker", "network", "heartbeat", "other"}

// connectionVecs are the connection series of one side.
type connectionVecs struct {
	state      *prometheus.GaugeVec     // name, state
	reconnects *prometheus.CounterVec   // name, cause
	recovery   *prometheus.HistogramVec // name
	refused    *prometheus.CounterVec   // name
}

func (r *registrar) connection(side, nameLabel string) connectionVecs {
	return connectionVecs{
		state: r.gauge(side+"_connection_state",
			"1 for the connection's current state, 0 for the others.", nameLabel, labelState),
		reconnects: r.counter(side+"_reconnects_total",
			"Connections lost (each starts a reconnect), by error class of the cause.", nameLabel, labelCause),
		recovery: r.histogram(side+"_reconnect_duration_seconds",
			"Seconds from the loss of a connection to the next one up.", ReconnectBuckets, nameLabel),
		refused: r.counter(side+"_channels_refused_total",
			"Channels a lane or a subscription could not open under the broker's channel_max (each refusal reported once while it lasts).", nameLabel),
	}
}

// connection records the connection events of one named component.
type connection struct {
	states     [len(states)]prometheus.Gauge
	reconnects *prometheus.CounterVec // curried with the name
	recovery   prometheus.Observer
	refused    prometheus.Counter
}

// newConnection resolves the series of name and, unless they show a state
// other than closed (a component already runs under name), sets its state to
// connecting, where a new Publisher or Subscriber starts.
func newConnection(v connectionVecs, nameLabel, name string) *connection {
	c := &connection{
		reconnects: v.reconnects.MustCurryWith(prometheus.Labels{nameLabel: name}),
		recovery:   v.recovery.WithLabelValues(name),
		refused:    v.refused.WithLabelValues(name),
	}
	for i, s := range states {
		c.states[i] = v.state.WithLabelValues(name, s.String())
	}
	for _, cause := range lossCauses {
		c.reconnects.WithLabelValues(cause)
	}
	if current, ok := c.state(); !ok || current == core.StateClosed {
		c.setState(core.StateConnecting)
	}
	return c
}

// state returns the state whose gauge is 1, if any.
func (c *connection) state() (core.State, bool) {
	for i, g := range c.states {
		var m dto.Metric
		if g.Write(&m) == nil && m.GetGauge().GetValue() == 1 {
			return states[i], true
		}
	}
	return 0, false
}

// observe records e if it is a connection event, and reports whether it was.
func (c *connection) observe(e core.Event) bool {
	switch e.Kind {
	case core.StateChanged:
		c.setState(e.State)
	case core.ConnectionLost:
		c.reconnects.WithLabelValues(class(e.Err)).Inc()
	case core.Reconnected:
		c.recovery.Observe(e.Duration.Seconds())
	case core.ChannelRefused:
		c.refused.Inc()
	default:
		return false
	}
	return true
}

// setState sets the gauge of s to 1 and the others to 0. A state this
// package does not know leaves every gauge at 0.
func (c *connection) setState(s core.State) {
	for i, g := range c.states {
		if states[i] == s {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}
