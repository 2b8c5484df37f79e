// Command metrics runs a long-lived publisher and subscriber on the broker
// and serves what they do: Prometheus series on /metrics (package metrics,
// with the Go runtime's), readiness on /readyz and liveness on /livez
// (package health). It publishes for -duration, then checks by UUID that
// every message the broker confirmed was consumed, and exits 1 if one was
// lost. Restart RabbitMQ meanwhile (or pass -restart-every) and watch the
// series move:
//
//	go run ./examples/metrics -duration 60s &
//	curl -s 127.0.0.1:9464/metrics | grep example_rabbitmq_
//	curl -s 127.0.0.1:9464/readyz
//	rabbitmqctl stop_app; rabbitmqctl start_app    # in another terminal
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/health"
	"github.com/resilientmq/watermill-rabbitmq/metrics"
	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

func main() {
	uri := flag.String("uri", envOr("AMQP_URI", "amqp://guest:guest@localhost:5672/"), "broker URI")
	addr := flag.String("addr", "127.0.0.1:9464", "address to serve /metrics, /readyz and /livez on")
	duration := flag.Duration("duration", 20*time.Second, "publish for this long (Ctrl-C stops earlier)")
	workers := flag.Int("workers", 4, "goroutines publishing concurrently")
	batch := flag.Int("batch", 10, "messages per Publish call")
	prefetch := flag.Int("prefetch", 64, "deliveries the broker sends ahead of acks (watermill-amqp's default, 1, makes a slow consumer)")
	prefix := flag.String("prefix", "example-metrics-", "queue name prefix (a run-unique suffix is appended)")
	drainTimeout := flag.Duration("drain-timeout", time.Minute, "how long to wait for the subscriber to catch up at the end")
	restartEvery := flag.Duration("restart-every", 0, "restart the broker this often with rabbitmqctl ($RABBITMQCTL), 0: never")
	debug := flag.Bool("debug", false, "debug logs")
	flag.Parse()

	logger := watermill.NewStdLogger(*debug, false) // to stderr; figures go to stdout
	os.Exit(run(*uri, *addr, *duration, *workers, *batch, *prefetch, *prefix, *drainTimeout, *restartEvery, logger))
}

func run(uri, addr string, duration time.Duration, workers, batch, prefetch int, prefix string,
	drainTimeout, restartEvery time.Duration, logger watermill.LoggerAdapter) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	stamp := func() string { return fmt.Sprintf("%6.1fs", time.Since(start).Seconds()) }
	queue := prefix + watermill.NewShortUUID()
	defer deleteQueue(uri, queue, logger)

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.NewPrometheus(registry, "example", "rabbitmq")
	if err != nil {
		logger.Error("Cannot register metrics", err, nil)
		return 1
	}
	pub, err := resilientv3.NewPublisher(resilientv3.Config{
		AMQP:           amqp.NewDurableQueueConfig(uri),
		PublishTimeout: 2 * time.Minute, // ride through a broker restart
		OnEvent:        m.Publisher("example"),
	}, logger)
	if err != nil {
		logger.Error("Cannot start the publisher", err, nil)
		return 1
	}
	defer pub.Close()
	subCfg := resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(uri), OnEvent: m.Subscriber("example")}
	subCfg.AMQP.Consume.Qos.PrefetchCount = prefetch
	sub, err := resilientv3.NewSubscriber(subCfg, logger)
	if err != nil {
		logger.Error("Cannot start the subscriber", err, nil)
		return 1
	}
	defer sub.Close()
	checker := health.NewChecker(0).Add("publisher", pub).Add("subscriber", sub)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
	mux.Handle("/readyz", checker.ReadyHandler())
	mux.Handle("/livez", checker.LiveHandler())
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		logger.Error("Cannot serve", err, watermill.LogFields{"addr": addr})
		return 1
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("HTTP server stopped", err, nil)
		}
	}()
	defer srv.Close()
	fmt.Printf("%s  serving http://%s/metrics /readyz /livez; publishing to %s for %s\n", stamp(), ln.Addr(), queue, duration)

	consumed := newTally()
	subCtx, stopConsuming := context.WithCancel(context.Background())
	defer stopConsuming()
	msgs, err := sub.Subscribe(subCtx, queue)
	if err != nil {
		logger.Error("Cannot subscribe", err, nil)
		return 1
	}
	consuming := make(chan struct{})
	go func() {
		defer close(consuming)
		for msg := range msgs {
			consumed.add(msg.UUID)
			msg.Ack()
		}
	}()

	pubCtx, stopPublishing := context.WithTimeout(ctx, duration)
	defer stopPublishing()
	var confirmed confirmedIDs
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pubCtx.Err() == nil {
				msgs := make([]*message.Message, batch)
				for i := range msgs {
					msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"event":"demo"}`))
				}
				if err := pub.Publish(queue, msgs...); err != nil {
					failed.Add(int64(len(msgs)))
					logger.Error("Publish failed", err, nil)
					if resilientv3.IsPermanent(err) {
						return // retrying cannot help
					}
					continue
				}
				confirmed.add(msgs)
			}
		}()
	}
	restarts := make(chan struct{})
	go func() {
		defer close(restarts)
		if restartEvery > 0 {
			restartLoop(pubCtx, restartEvery, stamp)
		}
	}()

	ticker := time.NewTicker(time.Second)
	for done := false; !done; {
		select {
		case <-pubCtx.Done():
			done = true
		case <-ticker.C:
			fmt.Printf("%s  confirmed %8d  consumed %8d  failed %d  publisher %s  subscriber %s\n",
				stamp(), confirmed.len(), consumed.total(), failed.Load(), pub.Status(), sub.Status())
		}
	}
	ticker.Stop()
	wg.Wait()
	<-restarts // never leave the broker stopped mid-restart

	ids := confirmed.all()
	fmt.Printf("%s  stopped publishing: %d confirmed, %d failed; waiting for the subscriber\n", stamp(), len(ids), failed.Load())
	lost := consumed.await(ids, drainTimeout)
	stopConsuming()
	<-consuming
	fmt.Printf("%s  verified: %d confirmed, %d consumed, %d lost, %d extra (duplicates re-sent or redelivered after a fault, or messages whose Publish failed yet arrived)\n",
		stamp(), len(ids), consumed.total(), len(lost), consumed.total()-(len(ids)-len(lost)))
	if len(lost) > 0 {
		if depth, err := queueDepth(uri, queue); err == nil && depth > 0 {
			fmt.Printf("the queue still holds %d message(s): raise -drain-timeout or -prefetch if they cover the missing ones\n", depth)
		}
		fmt.Printf("not consumed, e.g.: %v\n", lost[:min(5, len(lost))])
		return 1
	}
	return 0
}

// queueDepth is how many messages wait in queue.
func queueDepth(uri, queue string) (int, error) {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	return q.Messages, err
}

// confirmedIDs collects the UUIDs of confirmed messages from many goroutines.
type confirmedIDs struct {
	mu  sync.Mutex
	ids []string
}

func (c *confirmedIDs) add(msgs []*message.Message) {
	c.mu.Lock()
	for _, m := range msgs {
		c.ids = append(c.ids, m.UUID)
	}
	c.mu.Unlock()
}

func (c *confirmedIDs) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func (c *confirmedIDs) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

// tally counts consumed messages by UUID, and says when one arrives.
type tally struct {
	mu      sync.Mutex
	seen    map[string]int
	n       int
	changed chan struct{}
}

func newTally() *tally { return &tally{seen: make(map[string]int), changed: make(chan struct{})} }

func (t *tally) add(id string) {
	t.mu.Lock()
	t.seen[id]++
	t.n++
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

func (t *tally) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// await waits up to timeout for every one of ids, and returns those that
// never came.
func (t *tally) await(ids []string, timeout time.Duration) (missing []string) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		t.mu.Lock()
		missing = missing[:0]
		for _, id := range ids {
			if t.seen[id] == 0 {
				missing = append(missing, id)
			}
		}
		changed := t.changed
		t.mu.Unlock()
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return missing
		}
	}
}

// deleteQueue removes the run's queue.
func deleteQueue(uri, queue string, logger watermill.LoggerAdapter) {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		logger.Error("Cannot delete the queue", err, watermill.LogFields{"queue": queue})
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDelete(queue, false, false, false)
	}
	if err != nil {
		logger.Error("Cannot delete the queue", err, watermill.LogFields{"queue": queue})
	}
}
