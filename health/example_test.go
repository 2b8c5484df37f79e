package health_test

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/health"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// Readiness and liveness of a publisher and a subscriber, for Kubernetes.
func Example() {
	logger := watermill.NewStdLogger(false, false)
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/")}
	pub, err := resilient.NewPublisher(cfg, logger)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	sub, err := resilient.NewSubscriber(cfg, logger)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	// Not live after two minutes without a connection.
	checker := health.NewChecker(2*time.Minute).
		Add("publisher", pub).
		Add("subscriber", sub)

	// In code: e.g. hold back work while the broker blocks publishing.
	if err := checker.Ready(context.Background()); err != nil {
		log.Printf("not ready: %v", err) // e.g. "publisher: blocked for 2s: blocked: low on memory"
	}

	// For probes: 200 or 503, and one line per component.
	http.Handle("/readyz", checker.ReadyHandler())
	http.Handle("/livez", checker.LiveHandler())
	log.Fatal(http.ListenAndServe("127.0.0.1:8080", nil))
}
