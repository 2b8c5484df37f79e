package resilient_test

import (
	"context"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// A Router consuming with the resilient Subscriber and publishing with the
// resilient Publisher: both ride through broker restarts. The handler may see
// a message twice after a fault; it is idempotent or deduplicates on UUID.
func ExampleNewSubscriber() {
	logger := watermill.NewStdLogger(false, false)
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/")}
	cfg.AMQP.Consume.Qos.PrefetchCount = 64 // deliveries buffered per subscription

	sub, err := resilient.NewSubscriber(cfg, logger)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := resilient.NewPublisher(cfg, logger)
	if err != nil {
		log.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		log.Fatal(err)
	}
	router.AddMiddleware(middleware.Retry{MaxRetries: 3, Logger: logger}.Middleware)
	router.AddHandler("enrich", "orders", sub, "orders-enriched", pub,
		func(msg *message.Message) ([]*message.Message, error) {
			// Keeping the input's UUID lets the next consumer drop duplicates.
			return []*message.Message{message.NewMessage(msg.UUID, msg.Payload)}, nil
		})
	// Run closes the subscriber when it stops; the publisher is ours to close.
	defer pub.Close()
	if err := router.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}
