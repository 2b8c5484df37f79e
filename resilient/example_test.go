package resilient_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// The one-line switch from watermill-amqp's publisher.
func ExampleNewPublisher() {
	logger := watermill.NewStdLogger(false, false)
	pub, err := resilient.NewPublisher(resilient.Config{
		AMQP: amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/"),
	}, logger)
	if err != nil {
		log.Fatal(err) // bad config, wrong credentials, or broker unreachable
	}
	defer pub.Close()

	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":42}`))
	if err := pub.Publish("orders", msg); err != nil {
		log.Fatal(err)
	}
	// Here the broker has confirmed the message: it is in the durable
	// "orders" queue, even if no consumer has subscribed yet.
}

// Every knob, with its default.
func ExampleConfig() {
	cfg := resilient.Config{
		AMQP:                 amqp.NewDurablePubSubConfig("amqp://guest:guest@node-1:5672/", nil),
		FailoverURIs:         []string{"amqp://guest:guest@node-2:5672/", "amqp://guest:guest@node-3:5672/"},
		FailoverInOrder:      false,            // default false: the URIs are shuffled once
		ConnectionName:       "orders-service", // default "watermill-resilient-publisher"
		Heartbeat:            10 * time.Second, // default 10 s
		DialTimeout:          10 * time.Second, // default 10 s
		RetryOnFailedConnect: true,             // default false: NewPublisher fails
		Channels:             4,                // default 4 (or AMQP.Publish.ChannelPoolSize)
		MaxInFlight:          512,              // per channel, default 512
		PublishTimeout:       30 * time.Second, // default 30 s
		ConfirmTimeout:       15 * time.Second, // default 15 s
		CloseTimeout:         10 * time.Second, // default 10 s
		MaxNackRetries:       0,                // default 0: re-send nacked messages within their bounds
		MaxMessageSize:       512 << 20,        // default 512 MiB
		Reconnect: resilient.Backoff{
			InitialWait: 100 * time.Millisecond, // default 100 ms
			MaxWait:     3 * time.Second,        // default 3 s
			Multiplier:  2,                      // default 2
			Jitter:      0.5,                    // default 0.5
		},
		OnEvent: func(e resilient.Event) {}, // for metrics: see package metrics
		OnStateChange: func(c resilient.StateChange) {
			log.Printf("AMQP %s -> %s (%v)", c.From, c.To, c.Err)
		},
	}
	fmt.Println(cfg.Validate())
	// Output: <nil>
}

// Telling a fault worth retrying from one that is not.
func ExamplePublisher_Publish_errors() {
	var pub message.Publisher // a *resilient.Publisher
	if pub == nil {
		return
	}
	msgs := []*message.Message{message.NewMessage(watermill.NewUUID(), []byte("a"))}

	// Bound the wait of this publish, reconnects included.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	msgs[0].SetContext(ctx)

	err := pub.Publish("orders", msgs...)
	var pe *resilient.PublishError
	switch {
	case err == nil:
		// confirmed
	case resilient.IsPermanent(err):
		// ErrAccessRefused, ErrNotFound, ErrMessageTooLarge...: fix the cause,
		// do not retry.
		log.Printf("giving up: %v", err)
	case errors.As(err, &pe):
		// Not confirmed in time: pe.Unconfirmed may be published again.
		log.Printf("retry later: %v", pe.Unconfirmed)
	}
}
