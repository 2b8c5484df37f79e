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
// namespace and one subsystem without a conflict: publish_time_seconds and
// subscriber_messages_received_total are one collector, with watermill's
// labels, filled by both (ours with the names given and the handler's
// name); the rest is ours alone.
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

	// Ours are labelled with the names given to metrics.Publisher and
	// metrics.Subscriber and the handler's name; watermill's router metrics,
	// in the same series, with the component's type name.
	fwdPublished := series("app_rmq_publish_time_seconds_count", "handler_name", "forward", "publisher_name", "forward", "success", "true")
	feederPublished := series("app_rmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "feeder", "success", "true")
	fwdReceived := series("app_rmq_subscriber_messages_received_total", "acked", "acked", "handler_name", "forward", "subscriber_name", "forward")
	outReceived := series("app_rmq_subscriber_messages_received_total", "acked", "acked", "handler_name", "<no handler>", "subscriber_name", "out")
	watermills := func(s samples, name string, ours ...string) float64 {
		total := s.sum(name)
		for _, k := range ours {
			total -= s[k]
		}
		return total
	}
	// watermill records a received message after its ack, on a goroutine of
	// its own; our subscriber its basic.ack after the handler's; and a
	// publish is recorded once Publish returned, which can be after the
	// message reached the end queue and was read there: poll.
	deadline := time.Now().Add(time.Minute)
	var s samples
	for {
		s = gather(t, reg)
		if watermills(s, "app_rmq_subscriber_messages_received_total", fwdReceived, outReceived) >= n &&
			s[fwdReceived] >= n && s[outReceived] >= n &&
			watermills(s, "app_rmq_publish_time_seconds_count", fwdPublished, feederPublished) >= n && s[fwdPublished] >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the last arrival: watermill's received %v, ours forward %v out %v; watermill's publishes %v, ours forward %v",
				watermills(s, "app_rmq_subscriber_messages_received_total", fwdReceived, outReceived), s[fwdReceived], s[outReceived],
				watermills(s, "app_rmq_publish_time_seconds_count", fwdPublished, feederPublished), s[fwdPublished])
		}
		time.Sleep(20 * time.Millisecond) // a poll: watermill's counter has no event to await
	}

	for _, fam := range []string{
		// watermill's, which ours fill too
		"app_rmq_handler_execution_time_seconds", "app_rmq_publish_time_seconds", "app_rmq_subscriber_messages_received_total",
		// ours alone
		"app_rmq_publisher_messages_in_flight", "app_rmq_publisher_messages_confirmed_total",
		"app_rmq_publisher_connection_state", "app_rmq_subscriber_messages_delivered_total", "app_rmq_subscriber_connection_state",
	} {
		if !s.family(fam) {
			t.Errorf("no series of %s", fam)
		}
	}
	for k, want := range map[string]float64{
		feederPublished: n,
		fwdPublished:    n, // the handler's name, read from the output's context
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
	if got := s[fwdReceived]; got != n {
		t.Errorf("%s = %v, want %d", fwdReceived, got, n)
	}
	t.Logf("one registry: watermill handler executions %v, watermill publishes %v, watermill received %v; ours: forward published %v, confirmed %v, delivered %v, received (acked) %v",
		s.sum("app_rmq_handler_execution_time_seconds_count"),
		watermills(s, "app_rmq_publish_time_seconds_count", fwdPublished, feederPublished),
		watermills(s, "app_rmq_subscriber_messages_received_total", fwdReceived, outReceived),
		s[fwdPublished],
		s[series("app_rmq_publisher_messages_confirmed_total", "publisher_name", "forward")],
		s[series("app_rmq_subscriber_messages_delivered_total", "subscriber_name", "forward")],
		s[fwdReceived])
}
