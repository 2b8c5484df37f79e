// Package conformance_test runs watermill's conformance suite
// (pubsub/tests) with the resilient publisher and watermill-amqp's
// subscriber against the real broker.
package conformance_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"go.uber.org/goleak"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// conformancePrefix starts every topic and consumer group of the suite, so
// that its queues and exchanges (the harness deletes none) are swept.
const conformancePrefix = "conformance-"

func topicName(tctx tests.TestContext) string {
	return conformancePrefix + string(tctx.TestID)
}

// The harness leaves some subscribers of watermill-amqp open and never closes
// the channel its TestReconnect collector ranges over: those goroutines, and
// the amqp091-go connections under them, are not ours. The publisher's own
// leak-freedom is checked without exceptions in ../resilient and at the root.
func TestMain(m *testing.M) {
	brokertest.Main(m, []string{conformancePrefix},
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill/pubsub/tests.TestReconnect.func2"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill/internal/subscriber.(*multiplier).Subscribe.func2"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill/internal/subscriber.(*multiplier).Subscribe.func3"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp.(*ConnectionWrapper).handleConnectionClose"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp.(*Subscriber).runSubscriber"),
		goleak.IgnoreAnyFunction("github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp.(*Subscriber).Subscribe.func1"),
		goleak.IgnoreAnyFunction("github.com/rabbitmq/amqp091-go.(*Connection).heartbeater"),
		goleak.IgnoreAnyFunction("github.com/rabbitmq/amqp091-go.(*Connection).reader"),
		goleak.IgnoreAnyFunction("github.com/rabbitmq/amqp091-go.(*consumers).buffer"),
	)
}
