package metrics_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

func TestConnectionSeries(t *testing.T) {
	for _, side := range []string{"publisher", "subscriber"} {
		t.Run(side, func(t *testing.T) {
			m, reg := newMetrics(t)
			on, label := m.Publisher, "publisher_name"
			if side == "subscriber" {
				on, label = m.Subscriber, "subscriber_name"
			}
			emit := on("orders")
			state := func(s samples, st string) float64 {
				return s[series("app_rmq_"+side+"_connection_state", label, "orders", "state", st)]
			}
			cause := func(s samples, c string) (float64, bool) {
				v, ok := s[series("app_rmq_"+side+"_reconnects_total", "cause", c, label, "orders")]
				return v, ok
			}

			s := gather(t, reg)
			for _, st := range []string{"connecting", "connected", "blocked", "reconnecting", "closed"} {
				want := 0.0
				if st == "connecting" {
					want = 1
				}
				if got := state(s, st); got != want {
					t.Errorf("new %s: state %s = %v, want %v", side, st, got, want)
				}
			}
			for _, c := range []string{"broker", "network", "heartbeat", "other"} {
				if v, ok := cause(s, c); !ok || v != 0 {
					t.Errorf("cause %s = %v (present %v), want 0 from the start", c, v, ok)
				}
			}

			steps := []struct {
				e    resilient.Event
				want string // the state then
			}{
				{resilient.Event{Kind: resilient.StateChanged, State: resilient.StateConnected}, "connected"},
				{resilient.Event{Kind: resilient.StateChanged, State: resilient.StateBlocked}, "blocked"},
				{resilient.Event{Kind: resilient.StateChanged, State: resilient.StateConnected}, "connected"},
				{resilient.Event{Kind: resilient.ConnectionLost, Err: &amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'", Server: true}}, "connected"},
				{resilient.Event{Kind: resilient.StateChanged, State: resilient.StateReconnecting}, "reconnecting"},
				{resilient.Event{Kind: resilient.Reconnected, Duration: 3 * time.Second}, "reconnecting"},
				{resilient.Event{Kind: resilient.StateChanged, State: resilient.StateConnected}, "connected"},
				{resilient.Event{Kind: resilient.ConnectionLost, Err: &amqp091.Error{Code: 501, Reason: "read tcp 127.0.0.1:5672: i/o timeout"}}, "connected"},
				{resilient.Event{Kind: resilient.ConnectionLost, Err: &amqp091.Error{Code: 501, Reason: "EOF"}}, "connected"},
				{resilient.Event{Kind: resilient.Reconnected, Duration: 500 * time.Millisecond}, "connected"},
				{resilient.Event{Kind: resilient.StateChanged, State: resilient.StateClosed}, "closed"},
			}
			for _, step := range steps {
				emit(step.e)
				s := gather(t, reg)
				for _, st := range []string{"connecting", "connected", "blocked", "reconnecting", "closed"} {
					want := 0.0
					if st == step.want {
						want = 1
					}
					if got := state(s, st); got != want {
						t.Errorf("after %s %v: state %s = %v, want %v", step.e.Kind, step.e.State, st, got, want)
					}
				}
			}
			s = gather(t, reg)
			for c, want := range map[string]float64{"broker": 1, "heartbeat": 1, "network": 1, "other": 0} {
				if v, _ := cause(s, c); v != want {
					t.Errorf("reconnects{cause=%s} = %v, want %v", c, v, want)
				}
			}
			if n := s[series("app_rmq_"+side+"_reconnect_duration_seconds_count", label, "orders")]; n != 2 {
				t.Errorf("reconnect duration count = %v, want 2", n)
			}
			if sum := s[series("app_rmq_"+side+"_reconnect_duration_seconds_sum", label, "orders")]; sum != 3.5 {
				t.Errorf("reconnect duration sum = %v, want 3.5", sum)
			}
		})
	}
}

// The class and cause labels stay within a fixed set, whatever the error
// says: no error text, URI or password reaches the registry.
func TestLabelsAreBounded(t *testing.T) {
	m, reg := newMetrics(t)
	pub, sub := m.Publisher("p"), m.Subscriber("s")
	secret := fmt.Errorf("dial amqp://admin:hunter2@10.0.0.7:5672/prod: %w", fmt.Errorf("something new"))
	pub(resilient.Event{Kind: resilient.MessagesFailed, Messages: 1, Err: secret})
	pub(resilient.Event{Kind: resilient.MessagesFailed, Messages: 1}) // no error given
	pub(resilient.Event{Kind: resilient.ConnectionLost, Err: secret})
	sub(resilient.Event{Kind: resilient.ConnectionLost, Err: secret})
	pub(resilient.Event{Kind: resilient.StateChanged, State: resilient.State(99)})
	pub(resilient.Event{Kind: resilient.EventKind(99), Err: secret})
	sub(resilient.Event{Kind: resilient.PublishStarted, Messages: 1}) // not a subscriber's

	s := gather(t, reg)
	for k := range s {
		for _, bad := range []string{"hunter2", "admin", "10.0.0.7", "something", "unknown"} {
			if strings.Contains(k, bad) {
				t.Errorf("series %s has %q", k, bad)
			}
		}
	}
	if v := s[series("app_rmq_publisher_messages_failed_total", "class", "other", "publisher_name", "p")]; v != 2 {
		t.Errorf("failed{class=other} = %v, want 2", v)
	}
	if v := s.sum("app_rmq_subscriber_reconnects_total", "cause", "other"); v != 1 {
		t.Errorf("subscriber reconnects{cause=other} = %v, want 1", v)
	}
	if v := s.sum("app_rmq_publisher_connection_state"); v != 0 {
		t.Errorf("after an unknown state, %v state gauges at 1, want none", v)
	}
}

// A name made again while its component runs keeps its state; after the
// component closed, it starts again at connecting.
func TestNameMadeAgainKeepsALiveState(t *testing.T) {
	m, reg := newMetrics(t)
	state := func() string {
		s := gather(t, reg)
		for _, st := range []string{"connecting", "connected", "blocked", "reconnecting", "closed"} {
			if s[series("app_rmq_publisher_connection_state", "publisher_name", "orders", "state", st)] == 1 {
				return st
			}
		}
		return "none"
	}
	m.Publisher("orders")(resilient.Event{Kind: resilient.StateChanged, State: resilient.StateConnected})
	m.Publisher("orders")
	if st := state(); st != "connected" {
		t.Errorf("made again while connected: state %s, want connected", st)
	}
	m.Publisher("orders")(resilient.Event{Kind: resilient.StateChanged, State: resilient.StateClosed})
	m.Publisher("orders")
	if st := state(); st != "connecting" {
		t.Errorf("made again after closed: state %s, want connecting", st)
	}
}
