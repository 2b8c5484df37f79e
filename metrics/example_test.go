package metrics_test

import (
	"log"
	"net/http"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/resilientmq/watermill-rabbitmq/metrics"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// A publisher and a subscriber reporting to one registry, served on /metrics.
func Example() {
	registry := prometheus.NewRegistry()
	m, err := metrics.NewPrometheus(registry, "myapp", "rabbitmq")
	if err != nil {
		log.Fatal(err) // another collector holds one of the names
	}

	logger := watermill.NewStdLogger(false, false)
	amqpCfg := amqp.NewDurableQueueConfig("amqp://guest:guest@localhost:5672/")
	pub, err := resilient.NewPublisher(resilient.Config{
		AMQP:    amqpCfg,
		OnEvent: m.Publisher("orders"), // publisher_name="orders"
	}, logger)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	sub, err := resilient.NewSubscriber(resilient.Config{
		AMQP:    amqpCfg,
		OnEvent: m.Subscriber("orders"), // subscriber_name="orders"
	}, logger)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	// e.g. myapp_rabbitmq_publish_time_seconds_count{handler_name="<no handler>",publisher_name="orders",success="true"},
	// as watermill's components/metrics names it
	http.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
	log.Fatal(http.ListenAndServe("127.0.0.1:9464", nil))
}
