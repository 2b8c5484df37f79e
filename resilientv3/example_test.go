package resilientv3_test

import (
	"errors"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/core"
	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

// The one-line switch from watermill-amqp v3's publisher. What it returns,
// and its errors, are package core's.
func ExampleNewPublisher() {
	logger := watermill.NewStdLogger(false, false)
	pub, err := resilientv3.NewPublisher(resilientv3.Config{
		AMQP: amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/"),
	}, logger)
	if err != nil {
		log.Fatal(err) // bad config, wrong credentials, or broker unreachable
	}
	defer pub.Close()

	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"order":42}`))
	if err := pub.Publish("orders", msg); err != nil {
		var pe *core.PublishError
		if errors.As(err, &pe) && !core.IsPermanent(err) {
			log.Printf("not confirmed, may be published again: %v", pe.Unconfirmed)
		}
		log.Fatal(err)
	}
}

// The same knobs as through package resilient, on v3's Config; a bad one is
// reported before anything connects.
func ExampleConfig_Validate() {
	cfg := resilientv3.Config{
		AMQP:           amqp.NewDurableTopicConfig("amqp://guest:guest@localhost:5672/", "events", "billing"),
		MaxInFlight:    100000,
		ConnectionName: "billing",
	}
	err := cfg.Validate()
	fmt.Println(errors.Is(err, core.ErrConfig))
	fmt.Println(err)
	// Output:
	// true
	// resilient: invalid configuration: MaxInFlight must be within [1, 65535], got 100000
}
