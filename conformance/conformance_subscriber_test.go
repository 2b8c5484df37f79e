package conformance_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// watermill's conformance suite with our publisher and our subscriber, on
// the same configs as the suites with watermill-amqp's subscriber.
func resilientPubSub(t *testing.T, pubCfg, subCfg amqp.Config) (message.Publisher, message.Subscriber) {
	logger := watermill.NopLogger{}
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: pubCfg}, logger)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := resilient.NewSubscriber(resilient.Config{AMQP: subCfg}, logger)
	if err != nil {
		t.Fatal(err)
	}
	// The harness leaves some subscribers open (e.g. when a test ends on
	// its own context); both Close calls are idempotent.
	t.Cleanup(func() {
		_ = sub.Close()
		_ = pub.Close()
	})
	return pub, sub
}

func TestConformanceResilientDurableQueue(t *testing.T) {
	durableQueueSuite(t, v2Door(resilientPubSub))
}
func TestConformanceResilientDurablePubSub(t *testing.T) {
	durablePubSubSuite(t, v2Door(resilientPubSub))
}
