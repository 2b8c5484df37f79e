package e2e_test

// The whole stack under faults: a watermill Router (Retry, PoisonQueue,
// Deduplicator) and a CQRS command and event bus, each consuming with the
// resilient Subscriber and publishing with the resilient Publisher, while the
// broker restarts and drops connections.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// report logs in, out, lost and duplicated, and fails on a loss.
func report(t *testing.T, what string, arrived *brokertest.Arrivals, ids []string) (dups int) {
	t.Helper()
	r := arrived.Tally(ids)
	t.Logf("%s: in %d, out %d, lost %d, duplicated %d", what, len(ids), r.Got, len(r.Lost), r.Duplicates)
	if len(r.Lost) > 0 {
		t.Fatalf("%s: %d lost", what, len(r.Lost))
	}
	return r.Duplicates
}

// stackPublisher is the publisher of the stacks: a minute's PublishTimeout
// rides through a broker restart.
func stackPublisher(t *testing.T) *resilient.Publisher {
	pub, _ := pubsubtest.Publisher(t, resilient.Config{PublishTimeout: time.Minute})
	return pub
}

// stackSubscriber is the subscriber of the stacks, prefetching 64.
func stackSubscriber(t *testing.T) (*resilient.Subscriber, *brokertest.States) {
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Consume.Qos.PrefetchCount = 64
	return pubsubtest.Subscriber(t, resilient.Config{AMQP: cfg})
}

// runRouter runs r until the test ends.
func runRouter(t *testing.T, r *message.Router) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	<-r.Running()
}

// faults drops every connection, then restarts the broker, while work flows;
// it logs how long after each fault the handlers saw the next message.
func faults(t *testing.T, f *brokertest.Arrivals, states *brokertest.States) {
	t.Helper()
	f.FirstAfter(t, time.Now())
	brokertest.CloseAllConnections(t)
	dropped := states.Await("reconnecting")
	states.Await("connected")
	t.Logf("forced close: next message handled %s after the subscriber's connection dropped",
		f.FirstAfter(t, dropped).Sub(dropped).Round(time.Millisecond))

	f.FirstAfter(t, time.Now())
	stopped := time.Now()
	brokertest.StopApp(t)
	states.Await("reconnecting")
	brokertest.StartApp(t) // returns after await_startup: the broker accepts work
	up := time.Now()
	reconnected := states.Await("connected")
	t.Logf("broker restart: down %s; subscriber reconnected %s after start_app returned (negative: during await_startup); next message handled %s after the reconnect",
		up.Sub(stopped).Round(time.Millisecond), reconnected.Sub(up).Round(time.Millisecond), f.FirstAfter(t, reconnected).Sub(reconnected).Round(time.Millisecond))
}

// publishUntil publishes batches of 10 messages to topic in the background,
// at least n of them and on until stop is called; each 100th carries the
// payload "poison". stop returns the UUIDs of the others and of the poison.
// A batch at most every inputPace: unpaced, the publisher outruns a router
// (a confirmed publish per message) tenfold, and the end of the test waits
// minutes for the backlog, proving nothing more.
func publishUntil(t *testing.T, pub message.Publisher, topic string, n int) (stop func() (ids, poison []string)) {
	t.Helper()
	var ids, poisoned []string
	quit, errs := make(chan struct{}), make(chan error, 1)
	go func() {
		pace := time.NewTicker(inputPace)
		defer pace.Stop()
		for i := 0; ; i += 10 {
			<-pace.C
			if i >= n {
				select {
				case <-quit:
					errs <- nil
					return
				default:
				}
			}
			msgs, batchIDs := brokertest.Messages(10)
			for j, m := range msgs {
				if (i+j)%100 == 99 {
					m.Payload = []byte("poison")
				}
			}
			if err := pub.Publish(topic, msgs...); err != nil {
				errs <- err
				return
			}
			for j, m := range msgs {
				if string(m.Payload) == "poison" {
					poisoned = append(poisoned, batchIDs[j])
				} else {
					ids = append(ids, batchIDs[j])
				}
			}
		}
	}()
	return func() ([]string, []string) {
		close(quit)
		if err := <-errs; err != nil {
			t.Fatalf("publish inputs: %v", err)
		}
		return ids, poisoned
	}
}

// inputPace: 10 messages every 50 ms, 200 a second at most, about what the
// router handles under -race on a loaded machine.
const inputPace = 50 * time.Millisecond

var errFlaky = errors.New("flaky: first attempt fails")

// A Router reads an input queue with the resilient Subscriber, transforms
// each message (the output keeps the input's UUID) and publishes it with
// the resilient Publisher, with Retry and PoisonQueue, while the broker drops
// connections and restarts. Every input arrives at the end queue; a second
// Router with the Deduplicator handles each exactly once.
func TestRouterPipelineUnderFaults(t *testing.T) {
	brokertest.Need(t)
	const n = 1000 // at least; more while the faults last
	in, out, poisonQ := brokertest.Name("router-in"), brokertest.Name("router-out"), brokertest.Name("router-poison")
	brokertest.DeleteQueues(t, in, out, poisonQ)
	pub := stackPublisher(t)
	sub, states := stackSubscriber(t)
	logger := watermill.NopLogger{}

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	poison, err := middleware.PoisonQueue(pub, poisonQ)
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(poison, middleware.Retry{MaxRetries: 2, InitialInterval: time.Millisecond, Logger: logger}.Middleware)
	handled := brokertest.NewArrivals()
	var flakyMu sync.Mutex
	failedOnce := make(map[string]bool)
	router.AddHandler("transform", in, sub, out, pub, func(msg *message.Message) ([]*message.Message, error) {
		handled.Add(msg.UUID)
		if string(msg.Payload) == "poison" {
			return nil, fmt.Errorf("cannot transform %s", msg.UUID)
		}
		if msg.UUID[0] < '4' { // a quarter fail once: Retry handles them
			flakyMu.Lock()
			first := !failedOnce[msg.UUID]
			failedOnce[msg.UUID] = true
			flakyMu.Unlock()
			if first {
				return nil, errFlaky
			}
		}
		o := message.NewMessage(msg.UUID, bytes.ToUpper(msg.Payload))
		o.Metadata.Set("input_uuid", msg.UUID)
		return []*message.Message{o}, nil
	})
	runRouter(t, router)

	stop := publishUntil(t, pub, in, n)
	faults(t, handled, states)
	ids, poisoned := stop()

	// The end of the pipeline: a Router with the Deduplicator, keyed on the
	// input's UUID, in front of a handler counting what it handles.
	endSub, _ := stackSubscriber(t)
	end, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	arrived, once := brokertest.NewArrivals(), brokertest.NewArrivals()
	dedup := &middleware.Deduplicator{KeyFactory: middleware.NewMessageHasherFromMetadataField("input_uuid"), Repository: newKeyRepository()}
	deduplicated := dedup.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		if !bytes.HasPrefix(msg.Payload, []byte("PAYLOAD ")) {
			return nil, fmt.Errorf("untransformed payload %q", msg.Payload)
		}
		once.Add(msg.Metadata.Get("input_uuid"))
		return nil, nil
	})
	end.AddConsumerHandler("arrivals", out, endSub, func(msg *message.Message) error {
		arrived.Add(msg.Metadata.Get("input_uuid")) // before deduplication
		_, err := deduplicated(msg)
		return err
	})
	runRouter(t, end)
	arrived.AwaitAll(t, ids)
	once.AwaitAll(t, ids)

	all := append(slices.Clone(ids), poisoned...)
	handled.AwaitAll(t, all)
	flakyMu.Lock()
	flaky := len(failedOnce)
	flakyMu.Unlock()
	calls := report(t, "router handler calls", handled, all)
	t.Logf("router handler: %d extra calls = %d first attempts failed on purpose (retried by Retry) + %d poison retries (%d poison x %d) + %d redeliveries after faults",
		calls, flaky, 2*len(poisoned), len(poisoned), 2, calls-flaky-2*len(poisoned))
	dups := report(t, "end queue", arrived, ids)
	if d := report(t, "end queue through the Deduplicator", once, ids); d != 0 {
		t.Fatalf("the Deduplicator let %d duplicates through", d)
	}
	t.Logf("the Deduplicator dropped %d duplicates", dups)
	brokertest.RequireNoneLost(t, brokertest.Drain(t, poisonQ, poisoned))
}

// keyRepository is an in-memory middleware.ExpiringKeyRepository that never
// forgets, without the cleaning goroutine of watermill's map repository
// (which runs for the life of the process).
type keyRepository struct {
	mu   sync.Mutex
	keys map[string]bool
}

func newKeyRepository() *keyRepository { return &keyRepository{keys: make(map[string]bool)} }

func (r *keyRepository) IsDuplicate(_ context.Context, key string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys[key] {
		return true, nil
	}
	r.keys[key] = true
	return false, nil
}

// Commands and events of the CQRS test, marshaled as JSON.
type shipOrder struct {
	CommandID string `json:"command_id"`
	Order     int    `json:"order"`
}

type orderShipped struct {
	CommandID string `json:"command_id"`
	Order     int    `json:"order"`
}

// A CQRS command bus and event bus on the resilient Publisher and
// Subscriber: commands are sent while the broker drops connections and
// restarts; each handled command publishes an event; every command's event
// arrives at least once, checked by command ID.
func TestCQRSUnderFaults(t *testing.T) {
	brokertest.Need(t)
	const n = 500 // at least; more while the faults last
	prefix := brokertest.Name("cqrs")
	brokertest.DeleteQueues(t, prefix+".commands", prefix+".events")
	pub := stackPublisher(t)
	sub, states := stackSubscriber(t)
	logger := watermill.NopLogger{}
	marshaler := cqrs.JSONMarshaler{}

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(middleware.Retry{MaxRetries: 3, InitialInterval: 10 * time.Millisecond, Logger: logger}.Middleware)
	commandBus, err := cqrs.NewCommandBusWithConfig(pub, cqrs.CommandBusConfig{
		GeneratePublishTopic: func(cqrs.CommandBusGeneratePublishTopicParams) (string, error) { return prefix + ".commands", nil },
		Marshaler:            marshaler,
		Logger:               logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	eventBus, err := cqrs.NewEventBusWithConfig(pub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(cqrs.GenerateEventPublishTopicParams) (string, error) { return prefix + ".events", nil },
		Marshaler:            marshaler,
		Logger:               logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	subscriber := func() (message.Subscriber, error) { return sub, nil }
	commands, err := cqrs.NewCommandProcessorWithConfig(router, cqrs.CommandProcessorConfig{
		GenerateSubscribeTopic: func(cqrs.CommandProcessorGenerateSubscribeTopicParams) (string, error) {
			return prefix + ".commands", nil
		},
		SubscriberConstructor: func(cqrs.CommandProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return subscriber()
		},
		Marshaler: marshaler,
		Logger:    logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	events, err := cqrs.NewEventProcessorWithConfig(router, cqrs.EventProcessorConfig{
		GenerateSubscribeTopic: func(cqrs.EventProcessorGenerateSubscribeTopicParams) (string, error) {
			return prefix + ".events", nil
		},
		SubscriberConstructor: func(cqrs.EventProcessorSubscriberConstructorParams) (message.Subscriber, error) { return subscriber() },
		Marshaler:             marshaler,
		Logger:                logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	handled, shipped := brokertest.NewArrivals(), brokertest.NewArrivals()
	if err := commands.AddHandlers(cqrs.NewCommandHandler("ship", func(ctx context.Context, cmd *shipOrder) error {
		handled.Add(cmd.CommandID)
		return eventBus.Publish(ctx, &orderShipped{CommandID: cmd.CommandID, Order: cmd.Order})
	})); err != nil {
		t.Fatal(err)
	}
	if err := events.AddHandlers(cqrs.NewEventHandler("shipped", func(ctx context.Context, e *orderShipped) error {
		shipped.Add(e.CommandID)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	runRouter(t, router)

	// Commands are sent, n at least, until the faults are over.
	var ids []string
	quit, sent := make(chan struct{}), make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if i >= n {
				select {
				case <-quit:
					sent <- nil
					return
				default:
				}
			}
			id := watermill.NewUUID()
			if err := commandBus.Send(context.Background(), &shipOrder{CommandID: id, Order: i}); err != nil {
				sent <- fmt.Errorf("command %d: %w", i, err)
				return
			}
			ids = append(ids, id)
		}
	}()
	faults(t, shipped, states)
	close(quit)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	shipped.AwaitAll(t, ids)
	report(t, "commands handled", handled, ids)
	report(t, "events handled", shipped, ids)
}
