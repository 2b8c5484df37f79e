package metrics_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/metrics"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// Through a broker restart the series, scraped as Prometheus would, tell
// what happened: the connections went away and came back, the subscription
// re-attached, every confirmed message was delivered.
func TestMetricsThroughBrokerRestart(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("metrics-restart")
	brokertest.DeleteQueues(t, queue)

	reg := prometheus.NewRegistry()
	m, err := metrics.NewPrometheus(reg, "test", "rabbitmq")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	t.Cleanup(srv.Close)
	client, url := srv.Client(), srv.URL+"/metrics"

	arrivals := brokertest.NewArrivals()
	pub, _ := pubsubtest.Publisher(t, resilient.Config{PublishTimeout: 2 * time.Minute, OnEvent: m.Publisher("pub")})
	consume(t, queue, m.Subscriber("sub"), arrivals)
	t.Cleanup(func() { // runs before the queue is deleted and the clients closed
		if t.Failed() {
			out, _ := brokertest.CtlErr("list_queues", "-q", "name", "messages_ready", "messages_unacknowledged", "consumers")
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, queue) {
					t.Logf("queue (ready, unacked, consumers): %s", line)
				}
			}
			last := scrape(t, client, url)
			for k, v := range last {
				if strings.Contains(k, `_name="sub"`) || strings.Contains(k, `_name="pub"`) {
					t.Logf("%s %v", k, v)
				}
			}
		}
	})

	const (
		p = "test_rabbitmq_publisher_"
		s = "test_rabbitmq_subscriber_"
	)
	pubState := func(sm samples, st string) float64 {
		return sm[series(p+"connection_state", "publisher_name", "pub", "state", st)]
	}
	subState := func(sm samples, st string) float64 {
		return sm[series(s+"connection_state", "subscriber_name", "sub", "state", st)]
	}
	confirmed := func(sm samples) float64 { return sm[series(p+"messages_confirmed_total", "publisher_name", "pub")] }
	delivered := func(sm samples) float64 { return sm[series(s+"messages_delivered_total", "subscriber_name", "sub")] }
	reattaches := func(sm samples) float64 { return sm[series(s+"reattaches_total", "subscriber_name", "sub")] }
	recoveries := func(sm samples, side, name string) (count, sum float64) {
		label := side + "_name"
		return sm[series("test_rabbitmq_"+side+"_reconnect_duration_seconds_count", label, name)],
			sm[series("test_rabbitmq_"+side+"_reconnect_duration_seconds_sum", label, name)]
	}

	before := scrape(t, client, url)
	if pubState(before, "connected") != 1 || subState(before, "connected") != 1 {
		t.Fatalf("before: publisher connected=%v, subscriber connected=%v, want 1", pubState(before, "connected"), subState(before, "connected"))
	}

	load := brokertest.StartLoad(t, pub, 8, queue)
	load.WaitProgress(500)
	flowing := scrape(t, client, url)
	if confirmed(flowing) < 500 {
		t.Errorf("confirmed while flowing = %v, want >= 500", confirmed(flowing))
	}

	stopAt := time.Now()
	brokertest.StopApp(t)
	down := awaitScrape(t, client, url, "both sides reconnecting", func(sm samples) bool {
		return (pubState(sm, "reconnecting") == 1 || pubState(sm, "connecting") == 1) &&
			(subState(sm, "reconnecting") == 1 || subState(sm, "connecting") == 1)
	})
	inFlightDown := down[series("test_rabbitmq_publisher_messages_in_flight", "publisher_name", "pub")]
	t.Logf("broker stopped in %s; during the outage: publisher reconnecting, subscriber reconnecting, %v messages waiting in Publish calls, reconnects publisher %v subscriber %v",
		time.Since(stopAt).Round(time.Millisecond), inFlightDown,
		down.sum(p+"reconnects_total"), down.sum(s+"reconnects_total"))

	startAt := time.Now()
	brokertest.StartApp(t)
	awaitScrape(t, client, url, "both sides connected again, the subscription re-attached", func(sm samples) bool {
		pc, _ := recoveries(sm, "publisher", "pub")
		sc, _ := recoveries(sm, "subscriber", "sub")
		return pubState(sm, "connected") == 1 && subState(sm, "connected") == 1 &&
			pc >= 1 && sc >= 1 && reattaches(sm) >= 1
	})
	t.Logf("broker started in %s; both sides connected again %s after stop_app began",
		time.Since(startAt).Round(time.Millisecond), time.Since(stopAt).Round(time.Millisecond))

	load.WaitProgress(500) // publishing flows again
	load.Stop()
	ids := load.Confirmed.All()
	arrivals.AwaitAll(t, ids)
	tally := arrivals.Tally(ids)
	brokertest.RequireNoneLost(t, tally)

	after := awaitScrape(t, client, url, "the last acks counted", func(sm samples) bool {
		return sm[series(s+"messages_received_total", "acked", "acked", "handler_name", "<no handler>", "subscriber_name", "sub")] >= float64(len(ids))
	})
	check := func(ok bool, format string, args ...any) {
		t.Helper()
		if !ok {
			t.Errorf(format, args...)
		}
	}
	check(confirmed(after) >= float64(len(ids)) && confirmed(after) > confirmed(before),
		"confirmed: %v, want >= %d confirmed by Publish", confirmed(after), len(ids))
	check(after[series("test_rabbitmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "pub", "success", "false")] == 0,
		"publish_time_seconds_count{success=false} = %v, want 0", after[series("test_rabbitmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "pub", "success", "false")])
	check(after[series("test_rabbitmq_publisher_messages_in_flight", "publisher_name", "pub")] == 0,
		"in flight after the load = %v, want 0", after[series("test_rabbitmq_publisher_messages_in_flight", "publisher_name", "pub")])
	for _, side := range []struct{ prefix, label, name string }{{p, "publisher_name", "pub"}, {s, "subscriber_name", "sub"}} {
		b, a := before.sum(side.prefix+"reconnects_total"), after.sum(side.prefix+"reconnects_total")
		check(a-b >= 1, "%sreconnects_total: %v -> %v, want +1 or more", side.prefix, b, a)
		for _, cause := range []string{"broker", "network", "heartbeat", "other"} {
			if v := after.sum(side.prefix+"reconnects_total", "cause", cause); v > 0 {
				t.Logf("%sreconnects_total{cause=%q} %v -> %v", side.prefix, cause, before.sum(side.prefix+"reconnects_total", "cause", cause), v)
			}
		}
	}
	check(reattaches(after) >= 1, "reattaches = %v, want >= 1", reattaches(after))
	check(delivered(after) >= float64(len(ids)), "delivered = %v, want >= %d", delivered(after), len(ids))
	check(pubState(after, "connected") == 1 && subState(after, "connected") == 1, "state after: not connected")

	pc, ps := recoveries(after, "publisher", "pub")
	sc, ss := recoveries(after, "subscriber", "sub")
	t.Logf("confirmed %v -> %v -> %v (Publish confirmed %d; re-sent %v); publish calls %v confirmed, %v failed",
		confirmed(before), confirmed(flowing), confirmed(after), len(ids),
		after[series(p+"messages_resent_total", "publisher_name", "pub")],
		after[series("test_rabbitmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "pub", "success", "true")],
		after[series("test_rabbitmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "pub", "success", "false")])
	t.Logf("delivered %v (redelivered %v), acked %v, re-attaches %v; arrivals: %s",
		delivered(after), after[series(s+"messages_redelivered_total", "subscriber_name", "sub")],
		after[series(s+"messages_received_total", "acked", "acked", "handler_name", "<no handler>", "subscriber_name", "sub")], reattaches(after), tally)
	t.Logf("time to recover: publisher %d reconnect(s) %.2fs mean, subscriber %d reconnect(s) %.2fs mean; publish latency mean %.1f ms over %v calls",
		int(pc), ps/max(pc, 1), int(sc), ss/max(sc, 1),
		1000*after[series("test_rabbitmq_publish_time_seconds_sum", "handler_name", "<no handler>", "publisher_name", "pub", "success", "true")]/
			max(after[series("test_rabbitmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "pub", "success", "true")], 1),
		after[series("test_rabbitmq_publish_time_seconds_count", "handler_name", "<no handler>", "publisher_name", "pub", "success", "true")])
}
