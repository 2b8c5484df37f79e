package decorate_test

import (
	"errors"
	"log"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/decorate"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// The recommended stack on this module's publisher, innermost first:
// Reconnect waits for the connection before each attempt, Retry retries
// transient failures (only the unconfirmed messages), Timeout bounds the
// whole call, Metrics observes what callers see.
func Example() {
	logger := watermill.NewStdLogger(false, false)
	var pub message.Publisher
	pub, err := resilient.NewPublisher(resilient.Config{
		AMQP: amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/"),
	}, logger)
	if err != nil {
		log.Fatal(err)
	}
	for _, decorate := range []message.PublisherDecorator{
		decorate.Reconnect(decorate.ReconnectConfig{Logger: logger}),
		decorate.Retry(decorate.RetryConfig{Logger: logger}),
		decorate.Timeout(2 * time.Minute),
		decorate.Metrics(func(r decorate.PublishResult) {
			// e.g. a counter by topic and outcome, a histogram of r.Duration
		}),
	} {
		if pub, err = decorate(pub); err != nil {
			log.Fatal(err) // an invalid config
		}
	}
	defer pub.Close() // closes the decorators, then the publisher

	if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(`{"order":42}`))); err != nil {
		log.Print(err) // permanent, or still failing after every retry
	}
}

// watermill-amqp's own publisher, made to ride through broker restarts:
// while its connection is down its Publish fails at once with "not
// connected to AMQP"; Reconnect waits for its IsConnected instead, and
// Retry retries the publishes the restart broke.
func ExampleReconnect() {
	cfg := amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/")
	cfg.Publish.ConfirmDelivery = true // nil from Publish means confirmed
	stock, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	pub, err := decorate.Reconnect(decorate.ReconnectConfig{
		MaxWait:      30 * time.Second,       // default 30s
		PollInterval: 100 * time.Millisecond, // default 100ms; stock has no WaitConnected
	})(stock)
	if err != nil {
		log.Fatal(err)
	}
	if pub, err = decorate.Retry(decorate.RetryConfig{})(pub); err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
}

// Every knob of Retry, with its default, and a Classify hook for errors of
// your own.
func ExampleRetry() {
	errQuota := errors.New("quota exceeded")
	retry := decorate.Retry(decorate.RetryConfig{
		InitialInterval:     100 * time.Millisecond, // default 100ms
		MaxInterval:         5 * time.Second,        // default 5s
		Multiplier:          2,                      // default 2
		RandomizationFactor: 0.5,                    // default 0.5
		MaxAttempts:         10,                     // default 10, first attempt included
		MaxElapsedTime:      time.Minute,            // default 1m
		Classify: func(err error) decorate.Decision {
			if errors.Is(err, errQuota) {
				return decorate.Permanent
			}
			return decorate.Undecided // resilient.IsPermanent and friends decide
		},
		OnRetry: func(attempt int, err error, wait time.Duration) {
			log.Printf("attempt %d failed (%v), next in %s", attempt, err, wait)
		},
		OnGiveUp: func(attempts int, err error) {
			log.Printf("gave up after %d attempts: %v", attempts, err)
		},
	})
	_ = retry // retry(pub) returns the decorated publisher
}

// In a router, a handler's output is published outside the handler
// middleware chain (router.AddMiddleware never sees it): decorate the
// publisher the handler publishes with.
func Example_router() {
	logger := watermill.NopLogger{}
	var sub message.Subscriber // e.g. watermill-amqp's subscriber
	var pub message.Publisher  // e.g. a *resilient.Publisher
	if sub == nil || pub == nil {
		return
	}
	pub, err := decorate.Reconnect(decorate.ReconnectConfig{})(pub)
	if err != nil {
		log.Fatal(err)
	}
	if pub, err = decorate.Retry(decorate.RetryConfig{})(pub); err != nil {
		log.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		log.Fatal(err)
	}
	router.AddHandler("enrich", "orders", sub, "orders-enriched", pub,
		func(msg *message.Message) ([]*message.Message, error) {
			return []*message.Message{message.NewMessage(watermill.NewUUID(), msg.Payload)}, nil
		})
}
