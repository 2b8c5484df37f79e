package conformance_test

import (
	"path/filepath"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// watermill's conformance suite, with our publisher and watermill-amqp's
// subscriber on the same config. Its TestReconnect runs apart, in
// TestConformanceReconnect.
func restartCommand(t *testing.T) []string {
	script, err := filepath.Abs("../scripts/restart-broker.sh")
	if err != nil {
		t.Fatal(err)
	}
	return []string{script}
}

func pubSub(t *testing.T, pubCfg, subCfg amqp.Config) (message.Publisher, message.Subscriber) {
	logger := watermill.NopLogger{}
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: pubCfg}, logger)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := amqp.NewSubscriber(subCfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}

// features are what RabbitMQ durable queues give: at-least-once (not
// exactly-once), in order, persistent. TestReconnect runs apart, in
// TestConformanceReconnect, which adds RestartServiceCommand.
func features() tests.Features {
	return tests.Features{
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
		GenerateTopicFunc:                   topicName,
	}
}

// newPair makes the publisher and subscriber of one conformance test, each
// on its config: pubSub (watermill-amqp's subscriber) or resilientPubSub
// (ours).
type newPair func(t *testing.T, pubCfg, subCfg amqp.Config) (message.Publisher, message.Subscriber)

func durableQueueSuite(t *testing.T, pair newPair) {
	tests.TestPubSub(t, features(), func(t *testing.T) (message.Publisher, message.Subscriber) {
		cfg := amqp.NewDurableQueueConfig(brokertest.URI())
		return pair(t, cfg, cfg)
	}, nil)
}

func durablePubSubSuite(t *testing.T, pair newPair) {
	f := features()
	f.ConsumerGroups = true
	tests.TestPubSub(t, f, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return pair(t, amqp.NewDurablePubSubConfig(brokertest.URI(), nil),
			amqp.NewDurablePubSubConfig(brokertest.URI(), amqp.GenerateQueueNameTopicNameWithSuffix("test")))
	}, func(t *testing.T, consumerGroup string) (message.Publisher, message.Subscriber) {
		return pair(t, amqp.NewDurablePubSubConfig(brokertest.URI(), nil),
			amqp.NewDurablePubSubConfig(brokertest.URI(), amqp.GenerateQueueNameConstant(conformancePrefix+consumerGroup)))
	})
}

func TestConformanceDurableQueue(t *testing.T)  { durableQueueSuite(t, pubSub) }
func TestConformanceDurablePubSub(t *testing.T) { durablePubSubSuite(t, pubSub) }
