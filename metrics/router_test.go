package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/metrics"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// Our series and watermill's own router metrics share one registry, one
// namespace and one subsystem without a conflict, and both fill as messages
// flow through a Router.
func TestBesideWatermillRouterMetrics(t *testing.T) {
	brokertest.Need(t)
	in, out := brokertest.Name("router-in"), brokertest.Name("router-out")
	brokertest.DeleteQueues(t, in, out)

	reg := prometheus.NewRegistry()
	m, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err != nil {
		t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	wmetrics.NewPrometheusMetricsBuilder(reg, "app", "rmq").AddPrometheusRouterMetrics(router)

	arrivals := brokertest.NewArrivals()
	feeder, _ := pubsubtest.Publisher(t, resilient.Config{PublishTimeout: 2 * time.Minute, OnEvent: m.Publisher("feeder")})
	consume(t, out, m.Subscriber("out"), arrivals)
	// A second set on the same registry, and a name made twice: both reuse
	// what is registered.
	again, err := metrics.NewPrometheus(reg, "app", "rmq")
	if err != nil {
		t.Fatalf("second NewPrometheus beside the router metrics: %v", err)
	}
	handlerPub, _ := pubsubtest.Publisher(t, resilient.Config{PublishTimeout: 2 * time.Minute, OnEvent: again.Publisher("forward")})
	handlerSub, _ := pubsubtest.Subscriber(t, resilient.Config{OnEvent: m.Subscriber("forward")})
	m.Publisher("forward")

	router.AddHandler("forward", in, handlerSub, out, handlerPub, func(msg *message.Message) ([]*message.Message, error) {
		return []*message.Message{message.NewMessage(msg.UUID, msg.Payload)}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-routerDone; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	select {
	case <-router.Running():
	case err := <-routerDone:
		t.Fatalf("router: %v", err)
	}

	const n = 50
	var ids []string
	for range n {
		msgs, batch := brokertest.Messages(1)
		if err := feeder.Publish(in, msgs...); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, batch...)
	}
	arrivals.AwaitAll(t, ids)
	brokertest.RequireNoneLost(t, arrivals.Tally(ids))

	// watermill records a received message after its ack, on a goroutine of
	// its own; our subscriber its basic.ack after the handler's: poll.
	deadline := time.Now().Add(time.Minute)
	var s samples
	for {
		s = gather(t, reg)
		if s.sum("app_rmq_subscriber_messages_received_total") >= n &&
			s[series("app_rmq_subscriber_messages_acked_total", "subscriber_name", "forward")] >= n &&
			s[series("app_rmq_subscriber_messages_acked_total", "subscriber_name", "out")] >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the last arrival: received %v, acked forward %v out %v",
				s.sum("app_rmq_subscriber_messages_received_total"),
				s[series("app_rmq_subscriber_messages_acked_total", "subscriber_name", "forward")],
				s[series("app_rmq_subscriber_messages_acked_total", "subscriber_name", "out")])
		}
		time.Sleep(20 * time.Millisecond) // a poll: watermill's counter has no event to await
	}

	for _, fam := range []string{
		// watermill's
		"app_rmq_handler_execution_time_seconds", "app_rmq_publish_time_seconds", "app_rmq_subscriber_messages_received_total",
		// ours
		"app_rmq_publish_total", "app_rmq_publish_duration_seconds", "app_rmq_publisher_messages_confirmed_total",
		"app_rmq_publisher_connection_state", "app_rmq_subscriber_messages_delivered_total", "app_rmq_subscriber_connection_state",
	} {
		if !s.family(fam) {
			t.Errorf("no series of %s", fam)
		}
	}
	for k, want := range map[string]float64{
		series("app_rmq_publish_total", "outcome", "confirmed", "publisher_name", "feeder"):               n,
		series("app_rmq_publish_total", "outcome", "confirmed", "publisher_name", "forward"):              n,
		series("app_rmq_publisher_messages_confirmed_total", "publisher_name", "forward"):                 n,
		series("app_rmq_subscriber_messages_delivered_total", "subscriber_name", "forward"):               n,
		series("app_rmq_subscriber_messages_delivered_total", "subscriber_name", "out"):                   n,
		series("app_rmq_publisher_connection_state", "publisher_name", "forward", "state", "connected"):   1,
		series("app_rmq_subscriber_connection_state", "state", "connected", "subscriber_name", "forward"): 1,
	} {
		if got := s[k]; got != want {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}
	t.Logf("one registry: watermill handler executions %v, watermill publishes %v, watermill received %v; ours: forward confirmed %v, delivered %v, acked %v",
		s.sum("app_rmq_handler_execution_time_seconds_count"), s.sum("app_rmq_publish_time_seconds_count"),
		s.sum("app_rmq_subscriber_messages_received_total"),
		s[series("app_rmq_publisher_messages_confirmed_total", "publisher_name", "forward")],
		s[series("app_rmq_subscriber_messages_delivered_total", "subscriber_name", "forward")],
		s[series("app_rmq_subscriber_messages_acked_total", "subscriber_name", "forward")])
}
