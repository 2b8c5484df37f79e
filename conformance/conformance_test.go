package conformance_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// restartCommand is the RestartServiceCommand of watermill's TestReconnect:
// scripts/restart-broker.sh, which restarts the broker's application. The
// harness runs it on goroutines it does not wait for (restartServer,
// pubsub/tests/test_pubsub.go:1078), so a restart can still be running when
// the test returns, and the next test would find the broker down. Each run
// of the command therefore leaves a line in a file, and the cleanup waits
// for restarts lines, then for the broker to accept connections.
func restartCommand(t *testing.T, restarts int) []string {
	script, err := filepath.Abs("../scripts/restart-broker.sh")
	if err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(t.TempDir(), "restarted")
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Minute)
		for {
			lines, _ := os.ReadFile(done)
			if bytes.Count(lines, []byte("\n")) >= restarts {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("only %d of %d broker restarts finished in 5 minutes", bytes.Count(lines, []byte("\n")), restarts)
				break
			}
			// A file written by another process: nothing to wait on but
			// its content.
			time.Sleep(100 * time.Millisecond)
		}
		brokertest.Dial(t).Close()
	})
	// A line even when the restart fails: restartServer reports the failure.
	return []string{"/bin/sh", "-c", `"$0"; status=$?; echo >>"$1"; exit $status`, script, done}
}

// pubSub is our publisher with watermill-amqp's subscriber.
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
// on its watermill-amqp v2 config: pubSub (watermill-amqp's subscriber) or
// resilientPubSub (ours).
type newPair func(t *testing.T, pubCfg, subCfg amqp.Config) (message.Publisher, message.Subscriber)

// door builds the publisher and subscriber of one conformance test through
// one front door: on a durable queue config, or on durable pub/sub configs
// whose subscriber's queue is named for group ("": the topic with a
// suffix).
type door struct {
	queue  func(t *testing.T) (message.Publisher, message.Subscriber)
	pubSub func(t *testing.T, group string) (message.Publisher, message.Subscriber)
}

// v2Door builds pairs of watermill-amqp v2 configs.
func v2Door(pair newPair) door {
	return door{
		queue: func(t *testing.T) (message.Publisher, message.Subscriber) {
			cfg := amqp.NewDurableQueueConfig(brokertest.URI())
			return pair(t, cfg, cfg)
		},
		pubSub: func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			queue := amqp.GenerateQueueNameTopicNameWithSuffix("test")
			if group != "" {
				queue = amqp.GenerateQueueNameConstant(conformancePrefix + group)
			}
			return pair(t, amqp.NewDurablePubSubConfig(brokertest.URI(), nil), amqp.NewDurablePubSubConfig(brokertest.URI(), queue))
		},
	}
}

func durableQueueSuite(t *testing.T, d door) {
	brokertest.Need(t)
	tests.TestPubSub(t, features(), d.queue, nil)
}

func durablePubSubSuite(t *testing.T, d door) {
	brokertest.Need(t)
	f := features()
	f.ConsumerGroups = true
	tests.TestPubSub(t, f, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return d.pubSub(t, "")
	}, d.pubSub)
}

func TestConformanceDurableQueue(t *testing.T)  { durableQueueSuite(t, v2Door(pubSub)) }
func TestConformanceDurablePubSub(t *testing.T) { durablePubSubSuite(t, v2Door(pubSub)) }
