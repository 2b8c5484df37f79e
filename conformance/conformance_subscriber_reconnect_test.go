//go:build !race

package conformance_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// watermill's TestReconnect (10,000 messages from 100 goroutines, two broker
// restarts) with our publisher and our subscriber. Built without -race: the
// harness itself races (its collector goroutine appends to the slice that
// the test then reads, pubsub/tests/test_pubsub.go:1086 and :1120).
func TestConformanceResilientReconnect(t *testing.T) {
	f := features()
	f.RestartServiceCommand = restartCommand(t)
	tests.TestReconnect(t, tests.TestContext{TestID: tests.NewTestID(), Features: f}, func(t *testing.T) (message.Publisher, message.Subscriber) {
		cfg := amqp.NewDurableQueueConfig(brokertest.URI())
		pub, sub := resilientPubSub(t, cfg, cfg)
		g := &publishGate{published: make(map[string]time.Time), changed: make(chan struct{})}
		return &gatedPublisher{Publisher: pub, gate: g}, &gatedSubscriber{Subscriber: sub, gate: g}
	})
}
