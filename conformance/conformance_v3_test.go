package conformance_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/core"
	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

// watermill's conformance suite through the watermill-amqp v3 door: our
// publisher and subscriber on v3's configs, as those of v2 through package
// resilient.
func v3Door() door {
	return door{
		queue: func(t *testing.T) (message.Publisher, message.Subscriber) {
			cfg := amqp.NewDurableQueueConfig(brokertest.URI())
			return v3Pair(t, cfg, cfg)
		},
		pubSub: func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			queue := amqp.GenerateQueueNameTopicNameWithSuffix("test")
			if group != "" {
				queue = amqp.GenerateQueueNameConstant(conformancePrefix + group)
			}
			return v3Pair(t, amqp.NewDurablePubSubConfig(brokertest.URI(), nil), amqp.NewDurablePubSubConfig(brokertest.URI(), queue))
		},
	}
}

func v3Pair(t *testing.T, pubCfg, subCfg amqp.Config) (message.Publisher, message.Subscriber) {
	return ours(t,
		func() (*core.Publisher, error) {
			return resilientv3.NewPublisher(resilientv3.Config{AMQP: pubCfg}, nil)
		},
		func() (*core.Subscriber, error) {
			return resilientv3.NewSubscriber(resilientv3.Config{AMQP: subCfg}, nil)
		})
}

func TestConformanceResilientV3DurableQueue(t *testing.T)  { durableQueueSuite(t, v3Door()) }
func TestConformanceResilientV3DurablePubSub(t *testing.T) { durablePubSubSuite(t, v3Door()) }
