package conformance_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/core"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// watermill's conformance suite with our publisher and our subscriber, on
// the same configs as the suites with watermill-amqp's subscriber.
func resilientPubSub(t *testing.T, pubCfg, subCfg amqp.Config) (message.Publisher, message.Subscriber) {
	return ours(t,
		func() (*core.Publisher, error) { return resilient.NewPublisher(resilient.Config{AMQP: pubCfg}, nil) },
		func() (*core.Subscriber, error) { return resilient.NewSubscriber(resilient.Config{AMQP: subCfg}, nil) })
}

// ours starts a publisher and a subscriber through a door, and closes both
// when the test ends: the harness leaves some subscribers open (e.g. when a
// test ends on its own context), and both Close calls are idempotent.
func ours(t *testing.T, newPub func() (*core.Publisher, error), newSub func() (*core.Subscriber, error)) (message.Publisher, message.Subscriber) {
	pub, err := newPub()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	sub, err := newSub()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return pub, sub
}

func TestConformanceResilientDurableQueue(t *testing.T) {
	durableQueueSuite(t, v2Door(resilientPubSub))
}
func TestConformanceResilientDurablePubSub(t *testing.T) {
	durablePubSubSuite(t, v2Door(resilientPubSub))
}
