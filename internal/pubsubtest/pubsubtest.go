// Package pubsubtest builds the publishers and subscribers of the broker
// tests, one way for every package: through the watermill-amqp v2 door,
// on a durable queue config at brokertest.URI() unless the config names a
// broker, with every state change recorded (and logged), closed when the
// test ends.
package pubsubtest

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// Publisher starts a publisher with cfg and, unless cfg.RetryOnFailedConnect,
// waits until it is connected. The test's end closes it and fails the test
// if Close reports messages left unconfirmed; unless the test closed it
// itself, to check what Close returns.
func Publisher(t testing.TB, cfg resilient.Config) (*resilient.Publisher, *brokertest.States) {
	t.Helper()
	states := prepare(t, &cfg, "publisher")
	pub, err := resilient.NewPublisher(cfg, watermill.NewStdLogger(false, false))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() {
		if pub.Status() == resilient.StateClosed {
			return // closed by the test, which checked the result
		}
		if err := pub.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if !cfg.RetryOnFailedConnect {
		states.Await("connected")
	}
	return pub, states
}

// Subscriber is Publisher's twin.
func Subscriber(t testing.TB, cfg resilient.Config) (*resilient.Subscriber, *brokertest.States) {
	t.Helper()
	states := prepare(t, &cfg, "subscriber")
	sub, err := resilient.NewSubscriber(cfg, watermill.NewStdLogger(false, false))
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	t.Cleanup(func() {
		if err := sub.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if !cfg.RetryOnFailedConnect {
		states.Await("connected")
	}
	return sub, states
}

// prepare fills in the broker, and records cfg's state changes (keeping the
// test's own OnStateChange, called first).
func prepare(t testing.TB, cfg *resilient.Config, who string) *brokertest.States {
	if cfg.AMQP.Connection.AmqpURI == "" {
		cfg.AMQP = amqp.NewDurableQueueConfig(brokertest.URI())
	}
	states, record := brokertest.NewStates(t)
	own := cfg.OnStateChange
	cfg.OnStateChange = func(c resilient.StateChange) {
		if own != nil {
			own(c)
		}
		t.Logf("%s state %s -> %s %v", who, c.From, c.To, c.Err)
		record(c.To.String())
	}
	return states
}
