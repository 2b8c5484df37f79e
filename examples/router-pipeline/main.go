// Command router-pipeline runs a watermill Router that reads orders from one
// durable queue, enriches them and publishes the result to another queue with
// the resilient publisher, while a producer feeds it; with -restart-every the
// broker is restarted under it. Malformed orders go to a poison queue. At the
// end it checks by UUID that every valid order came out (once, after dropping
// duplicates) and every malformed one was poisoned; it exits 1 if any is lost.
//
//	go run ./examples/router-pipeline
//	go run ./examples/router-pipeline -restart-every 8s   # restarts RabbitMQ itself (rabbitmqctl)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

// Order is the input; the pipeline fills in UnitPrice and Status.
type Order struct {
	Seq       int    `json:"seq"`
	ID        string `json:"id"`
	Customer  string `json:"customer"`
	Qty       int    `json:"qty"`
	Total     int    `json:"total_cents"`
	UnitPrice int    `json:"unit_price_cents,omitempty"`
	Status    string `json:"status,omitempty"`
}

var (
	errInvalid   = errors.New("invalid order")               // permanent: retrying cannot help
	errTransient = errors.New("pricing service unavailable") // worth retrying
)

func main() {
	uri := flag.String("uri", envOr("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"), "broker URI")
	prefix := flag.String("prefix", "example-router-", "queue name prefix (a run-unique suffix is appended)")
	orders := flag.Int("orders", 1000, "orders to produce")
	malformed := flag.Int("malformed", 9, "of which deliberately malformed (bad JSON, missing fields, qty 0)")
	rate := flag.Int("rate", 50, "orders produced per second")
	flakyEvery := flag.Int("flaky-every", 50, "every n-th order fails its first attempt with a transient error (0: none)")
	restartEvery := flag.Duration("restart-every", 0, "restart the broker this often with rabbitmqctl ($RABBITMQCTL), 0: never")
	drainTimeout := flag.Duration("drain-timeout", time.Minute, "how long to wait for the pipeline to finish after the last order")
	keep := flag.Bool("keep", false, "keep the queues at the end")
	debug := flag.Bool("debug", false, "debug logs")
	flag.Parse()

	logger := watermill.NewStdLogger(*debug, false)
	start := time.Now()
	stamp := func() string { return fmt.Sprintf("%6.1fs", time.Since(start).Seconds()) }
	run := *prefix + watermill.NewShortUUID()
	in, out, poison := run+"-in", run+"-out", run+"-poison"

	// One publisher for everything: the producer, the router's output and the
	// poison queue. It rides through reconnects; give it time for a restart.
	pub, err := resilientv3.NewPublisher(resilientv3.Config{
		AMQP:           amqp.NewDurableQueueConfig(*uri),
		PublishTimeout: 2 * time.Minute,
		OnStateChange: func(c resilientv3.StateChange) {
			fmt.Printf("%s  publisher %s -> %s\n", stamp(), c.From, c.To)
		},
	}, logger)
	check(err, "publisher")
	defer pub.Close()                                                   // the router closes it too; Close is idempotent
	sub, err := newSubscriber(amqp.NewDurableQueueConfig(*uri), logger) // one subscriber, three queues
	check(err, "subscriber")
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	check(err, "router")
	t := newTally()
	p := pipeline{flakyEvery: *flakyEvery, tally: t}

	// in -> enrich -> out. Middleware added first runs outermost:
	//   PoisonQueue: whatever still fails is published to the poison queue and
	//                the input acked, so one bad order cannot block the queue;
	//   Retry:       retries transient errors only, with backoff;
	//   Recoverer:   turns a panic into an error (poisoned, not retried).
	poisonMW, err := middleware.PoisonQueue(pub, poison)
	check(err, "poison queue")
	router.AddHandler("enrich", in, sub, out, pub, p.enrich).AddMiddleware(
		poisonMW,
		middleware.Retry{
			MaxRetries: 5, InitialInterval: 50 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2,
			ShouldRetry: func(r middleware.RetryParams) bool { return errors.Is(r.Err, errTransient) },
			Logger:      logger,
		}.Middleware,
		middleware.Recoverer,
	)

	// out -> audit: the downstream consumer. The publisher is at-least-once and
	// an input whose ack was lost in a restart is processed again, so an order
	// can come out twice, under the input's UUID. The Deduplicator (keyed by
	// UUID) drops the copies here, where nothing after it can fail. On "enrich"
	// it would be wrong: if publishing the output failed, the router nacks, and
	// the redelivered input would be dropped as a duplicate: lost.
	keys, err := middleware.NewMapExpiringKeyRepository(time.Hour)
	check(err, "deduplicator")
	dedup := &middleware.Deduplicator{KeyFactory: func(m *message.Message) (string, error) { return m.UUID, nil }, Repository: keys}
	router.AddConsumerHandler("audit", out, sub, t.output).AddMiddleware(t.countDelivery, dedup.Middleware)
	router.AddConsumerHandler("poison-audit", poison, sub, t.poison)

	go func() { check(router.Run(context.Background()), "router") }()
	<-router.Running()

	ctx, stopRestarts := context.WithCancel(context.Background())
	var restarts sync.WaitGroup
	if *restartEvery > 0 {
		restarts.Add(1)
		go func() { defer restarts.Done(); restartLoop(ctx, *restartEvery, stamp) }()
	}
	produced := make(chan struct{})
	go func() { defer close(produced); produce(pub, in, *orders, *malformed, *rate, t, stamp) }()

	// Report progress until every order is accounted for, or the drain times out.
	var deadline <-chan time.Time
	tick := time.NewTicker(time.Second)
	for produced != nil || !t.done() {
		select {
		case <-produced:
			produced, deadline = nil, time.After(*drainTimeout)
		case <-deadline:
			fmt.Printf("%s  drain timeout\n", stamp())
			t.do(func() { t.giveUp = true })
		case <-tick.C:
			fmt.Printf("%s  %s  publisher %s\n", stamp(), t.progress(), pub.Status())
		}
	}
	tick.Stop()
	stopRestarts()
	restarts.Wait() // a restart in progress finishes: the broker is up for the clean-up
	if err := router.Close(); err != nil {
		fmt.Printf("router close: %v\n", err)
	}
	if !*keep {
		deleteQueues(*uri, in, out, poison)
	}
	if lost := t.report(); lost > 0 {
		os.Exit(1)
	}
}

// newSubscriber is the one place this example makes a subscriber: the
// resilient one, which consumes through connection loss and broker restarts
// with the same watermill-amqp config (amqp.NewSubscriber(cfg, logger) would
// do for a quick try, without those guarantees).
func newSubscriber(cfg amqp.Config, logger watermill.LoggerAdapter) (message.Subscriber, error) {
	return resilientv3.NewSubscriber(resilientv3.Config{AMQP: cfg}, logger)
}

type pipeline struct {
	flakyEvery int
	tally      *tally
	attempted  sync.Map // order ID -> struct{}: to fail only a first attempt
}

// enrich is the business logic: validate, price, normalize. The output keeps
// the input's UUID, so downstream can tell a re-sent order from a new one.
func (p *pipeline) enrich(msg *message.Message) ([]*message.Message, error) {
	var o Order
	if err := json.Unmarshal(msg.Payload, &o); err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalid, err)
	}
	if o.ID == "" || o.Customer == "" {
		return nil, fmt.Errorf("%w: missing id or customer", errInvalid)
	}
	if _, seen := p.attempted.LoadOrStore(o.ID, struct{}{}); !seen && p.flakyEvery > 0 && o.Seq%p.flakyEvery == 0 {
		p.tally.do(func() { p.tally.transients++ })
		return nil, errTransient
	}
	o.UnitPrice = o.Total / o.Qty // a bug: qty 0 panics, and Recoverer turns the panic into an error
	o.Customer = strings.ToUpper(o.Customer)
	o.Status = "ENRICHED"
	payload, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	return []*message.Message{message.NewMessage(msg.UUID, payload)}, nil
}

// produce publishes the orders at the given rate; spread among them are
// malformed ones of three kinds.
func produce(pub message.Publisher, topic string, n, malformed, rate int, t *tally, stamp func() string) {
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	bad := 0
	for i := 1; i <= n; i++ {
		<-tick.C
		o := Order{Seq: i, ID: fmt.Sprintf("order-%d", i), Customer: fmt.Sprintf("customer %d", i%17), Qty: 1 + i%5, Total: 100 * i}
		payload, _ := json.Marshal(o)
		isBad := malformed > 0 && bad < malformed && i%max(n/malformed, 1) == 0
		if isBad {
			switch bad % 3 {
			case 0:
				payload = payload[:len(payload)/2] // truncated JSON
			case 1:
				payload = []byte(fmt.Sprintf(`{"seq":%d,"qty":1}`, i)) // no id, no customer
			case 2:
				payload = []byte(fmt.Sprintf(`{"seq":%d,"id":"order-%d","customer":"x","qty":0}`, i, i)) // panics
			}
			bad++
		}
		msg := message.NewMessage(watermill.NewUUID(), payload)
		if err := pub.Publish(topic, msg); err != nil {
			fmt.Printf("%s  produce: %v\n", stamp(), err) // not confirmed: not counted as sent
			continue
		}
		t.do(func() { t.sent[msg.UUID] = isBad })
	}
}

// tally records, by UUID, what went in and what came out.
type tally struct {
	mu                    sync.Mutex
	sent                  map[string]bool   // confirmed inputs: UUID -> malformed
	out                   map[string]bool   // distinct outputs, after the Deduplicator
	poisoned              map[string]string // UUID -> why
	deliveries            int               // of the output, duplicates included
	transients, badOutput int
	giveUp                bool
}

func newTally() *tally {
	return &tally{sent: map[string]bool{}, out: map[string]bool{}, poisoned: map[string]string{}}
}

// do runs f under the lock.
func (t *tally) do(f func()) { t.mu.Lock(); defer t.mu.Unlock(); f() }

// countDelivery counts every delivery of the output, before the Deduplicator.
func (t *tally) countDelivery(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		t.do(func() { t.deliveries++ })
		return h(msg)
	}
}

func (t *tally) output(msg *message.Message) error {
	var o Order
	ok := json.Unmarshal(msg.Payload, &o) == nil && o.Status == "ENRICHED" && o.Customer == strings.ToUpper(o.Customer)
	t.do(func() {
		if ok {
			t.out[msg.UUID] = true
		} else {
			t.badOutput++ // counted apart, so that it cannot hide a lost order
		}
	})
	return nil
}

func (t *tally) poison(msg *message.Message) error {
	reason := msg.Metadata.Get(middleware.ReasonForPoisonedKey) // set by PoisonQueue
	switch {
	case strings.Contains(reason, "panic"):
		reason = "panic recovered"
	case strings.Contains(reason, "missing"):
		reason = "missing fields"
	default:
		reason = "bad JSON"
	}
	t.do(func() { t.poisoned[msg.UUID] = reason })
	return nil
}

// missing counts the inputs that neither came out nor were poisoned; the
// caller holds the lock.
func (t *tally) missing() (n int) {
	for id, bad := range t.sent {
		if bad && t.poisoned[id] == "" || !bad && !t.out[id] {
			n++
		}
	}
	return n
}

// done reports whether every input sent so far is accounted for.
func (t *tally) done() (done bool) {
	t.do(func() { done = t.giveUp || t.missing() == 0 })
	return done
}

func (t *tally) progress() (s string) {
	t.do(func() { s = fmt.Sprintf("in %5d  out %5d  poisoned %2d", len(t.sent), len(t.out), len(t.poisoned)) })
	return s
}

// report prints the figures and returns how many inputs were lost.
func (t *tally) report() (lost int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	reasons := map[string]int{}
	for _, r := range t.poisoned {
		reasons[r]++
	}
	malformed := 0
	for _, bad := range t.sent {
		if bad {
			malformed++
		}
	}
	lost = t.missing()
	fmt.Printf("in:         %d orders confirmed (%d malformed)\n", len(t.sent), malformed)
	fmt.Printf("out:        %d distinct enriched orders (and %d deliveries that were not)\n", len(t.out), t.badOutput)
	fmt.Printf("duplicates: %d deliveries of the output, %d dropped by the Deduplicator\n", t.deliveries, t.deliveries-len(t.out))
	fmt.Printf("poisoned:   %d %v\n", len(t.poisoned), reasons)
	fmt.Printf("retried:    %d transient failures, retried by middleware.Retry\n", t.transients)
	fmt.Printf("lost:       %d\n", lost)
	return lost
}

// deleteQueues removes this run's queues: durable queues outlive the program.
func deleteQueues(uri string, queues ...string) {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		fmt.Printf("cannot delete queues %v: %v\n", queues, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		fmt.Printf("cannot delete queues %v: %v\n", queues, err)
		return
	}
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			fmt.Printf("delete queue %s: %v\n", q, err)
		}
	}
}
