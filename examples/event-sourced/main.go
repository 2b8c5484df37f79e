// Command event-sourced is a bank-account service whose state is a log of
// events. Commands append events to an append-only store; a relay publishes
// them with the resilient publisher (the transactional outbox pattern); a
// consumer builds a read model of balances from what it receives. At the end
// it checks that the read model equals the state replayed from the store, and
// exits 1 if not.
//
// At-least-once, honestly: the relay marks events published only after
// Publish returned nil (the broker confirmed them). A crash between the two
// publishes them again on restart: -crash-every simulates that, and the
// consumer drops the copies by UUID, which is the event's ID.
//
// This is the example on watermill-amqp v2: it imports
// github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp and package resilient.
// The others are on v3, with package resilientv3: switching is those two
// import paths and the package's name, nothing else.
//
//	go run ./examples/event-sourced
//	go run ./examples/event-sourced -restart-every 4s   # restarts RabbitMQ too (rabbitmqctl)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

func main() {
	uri := flag.String("uri", envOr("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"), "broker URI")
	prefix := flag.String("prefix", "example-es-", "queue name prefix (a run-unique suffix is appended)")
	accounts := flag.Int("accounts", 5, "bank accounts")
	commands := flag.Int("commands", 3000, "deposit and withdraw commands, from 4 goroutines")
	rate := flag.Int("rate", 300, "commands per second")
	crashEvery := flag.Int("crash-every", 10, "the relay 'crashes' after publishing every n-th batch, before marking it (0: never)")
	restartEvery := flag.Duration("restart-every", 0, "restart the broker this often with rabbitmqctl ($RABBITMQCTL), 0: never")
	timeout := flag.Duration("timeout", time.Minute, "how long to wait for the read model to catch up")
	keep := flag.Bool("keep", false, "keep the queue at the end")
	debug := flag.Bool("debug", false, "debug logs")
	flag.Parse()
	if *accounts < 1 || *crashEvery == 1 {
		log.Fatal("need -accounts >= 1 and -crash-every 0 or >= 2 (1 would crash on every batch)")
	}

	logger := watermill.NewStdLogger(*debug, false)
	start := time.Now()
	stamp := func() string { return fmt.Sprintf("%6.1fs", time.Since(start).Seconds()) }
	topic := *prefix + watermill.NewShortUUID() + "-accounts"
	store := NewStore()

	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(*uri), PublishTimeout: 2 * time.Minute}, logger)
	check(err, "publisher")
	defer pub.Close()

	// The consumer: a read model of balances, built from the published events.
	sub, err := newSubscriber(amqp.NewDurableQueueConfig(*uri), logger)
	check(err, "subscriber")
	consumerCtx, stopConsumer := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(consumerCtx, topic)
	check(err, "subscribe")
	rm := &readModel{seen: map[string]bool{}, balances: map[string]int64{}, events: map[string]int{}, progress: make(chan struct{}, 1)}
	go rm.consume(msgs)

	var restarts sync.WaitGroup
	restartCtx, stopRestarts := context.WithCancel(context.Background())
	if *restartEvery > 0 {
		restarts.Add(1)
		go func() { defer restarts.Done(); restartLoop(restartCtx, *restartEvery, stamp) }()
	}

	// Progress: while the broker is down the service keeps appending (it needs
	// only its store), and the relay catches up when the broker is back.
	progressDone := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-progressDone:
				return
			case <-t.C:
				fmt.Printf("%s  store %5d events  published %5d  read model %5d  publisher %s\n",
					stamp(), store.Len(), store.Published(), rm.applied(), pub.Status())
			}
		}
	}()

	// The relay: publishes what the store has not yet marked as published.
	appending := make(chan struct{})
	relayed := make(chan relayStats)
	go func() { relayed <- relay(store, pub, topic, *crashEvery, appending, stamp) }()

	// The service: commands from 4 goroutines on a few accounts, so that some
	// collide and retry, and some withdrawals are refused.
	var wg sync.WaitGroup
	var refused atomic.Int64
	pace := time.NewTicker(time.Second / time.Duration(max(*rate, 1)))
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < *commands; i += 4 {
				<-pace.C
				account := fmt.Sprintf("account-%d", rand.IntN(*accounts))
				amount := int64(1 + rand.IntN(100))
				withdraw := rand.IntN(3) == 0
				err := handle(store, account, func(a Account) ([]Event, error) {
					if !withdraw {
						return []Event{{Type: "deposited", Amount: amount}}, nil
					}
					if a.Balance < amount {
						return nil, errors.New("insufficient funds") // a business rule: no event
					}
					return []Event{{Type: "withdrawn", Amount: amount}}, nil
				})
				if err != nil {
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	pace.Stop()
	close(appending)
	stats := <-relayed
	total := store.Len()
	fmt.Printf("%s  %d commands (%d refused: insufficient funds), %d events in the store\n", stamp(), *commands, refused.Load(), total)
	fmt.Printf("%s  relay: %d batches published, %d 'crashes' before marking (%d events re-published)\n",
		stamp(), stats.batches, stats.crashes, stats.republished)

	// Wait for the read model to catch up with the store, then compare.
	deadline := time.After(*timeout)
wait:
	for rm.applied() < total {
		select {
		case <-rm.progress:
		case <-deadline:
			fmt.Printf("%s  timed out waiting for the read model\n", stamp())
			break wait
		}
	}
	close(progressDone)
	stopRestarts()
	restarts.Wait()
	stopConsumer()
	check(sub.Close(), "subscriber close")

	rm.mu.Lock()
	defer rm.mu.Unlock()
	wrong := 0
	for i := 0; i < *accounts; i++ {
		account := fmt.Sprintf("account-%d", i)
		var a Account
		for _, e := range store.Load(account) {
			a.apply(e)
		}
		verdict := "ok"
		if a.Balance != rm.balances[account] || a.Version != rm.events[account] {
			verdict = "MISMATCH"
			wrong++
		}
		fmt.Printf("  %s: store balance %6d (%4d events)  read model %6d (%4d events)  %s\n",
			account, a.Balance, a.Version, rm.balances[account], rm.events[account], verdict)
	}
	fmt.Printf("events: %d in the store, %d delivered, %d duplicates dropped by UUID, %d accounts wrong\n",
		total, rm.deliveries, rm.deliveries-len(rm.seen), wrong)
	if !*keep {
		deleteQueue(*uri, topic)
	}
	if wrong > 0 || len(rm.seen) != total {
		os.Exit(1)
	}
}

type relayStats struct{ batches, crashes, republished int }

// relay publishes the store's unpublished events in order, in batches, until
// appending is closed and everything is published. It marks a batch published
// only once Publish returned nil: every event is published at least once.
func relay(store *Store, pub message.Publisher, topic string, crashEvery int, appending <-chan struct{}, stamp func() string) (st relayStats) {
	for {
		batch := store.Unpublished(100)
		if len(batch) == 0 {
			select {
			case <-store.appended:
				continue
			case <-appending:
				if len(store.Unpublished(1)) == 0 {
					return st
				}
				continue
			}
		}
		msgs := make([]*message.Message, len(batch))
		for i, e := range batch {
			payload, _ := json.Marshal(e)
			msgs[i] = message.NewMessage(e.ID, payload)
		}
		if err := pub.Publish(topic, msgs...); err != nil {
			fmt.Printf("%s  relay: %v (will publish the batch again)\n", stamp(), err)
			time.Sleep(time.Second)
			continue
		}
		st.batches++
		if crashEvery > 0 && st.batches%crashEvery == 0 {
			// Simulated crash after Publish and before MarkPublished: the
			// restarted relay finds these events unpublished and sends them again.
			st.crashes++
			st.republished += len(batch)
			continue
		}
		store.MarkPublished(batch[len(batch)-1].Seq)
	}
}

// readModel is the query side: balances per account, built from events.
// Balances are sums, so the order of delivery does not matter; a read model
// that needs order would check each event's Version.
type readModel struct {
	mu         sync.Mutex
	seen       map[string]bool  // event IDs applied
	balances   map[string]int64 // account -> balance
	events     map[string]int   // account -> events applied
	deliveries int
	progress   chan struct{} // signalled when an event is applied
}

func (rm *readModel) consume(msgs <-chan *message.Message) {
	for msg := range msgs {
		var e Event
		if err := json.Unmarshal(msg.Payload, &e); err != nil {
			log.Printf("bad event %s: %v", msg.UUID, err)
			msg.Ack() // a real service would park it in a poison queue
			continue
		}
		rm.mu.Lock()
		rm.deliveries++
		if !rm.seen[msg.UUID] { // at-least-once: apply each event once
			rm.seen[msg.UUID] = true
			rm.events[e.Account]++
			if e.Type == "deposited" {
				rm.balances[e.Account] += e.Amount
			} else {
				rm.balances[e.Account] -= e.Amount
			}
			select {
			case rm.progress <- struct{}{}:
			default:
			}
		}
		rm.mu.Unlock()
		msg.Ack()
	}
}

func (rm *readModel) applied() int { rm.mu.Lock(); defer rm.mu.Unlock(); return len(rm.seen) }

// newSubscriber is the one place this example makes a subscriber: the
// resilient one, which consumes through connection loss and broker restarts
// with the same watermill-amqp config (amqp.NewSubscriber(cfg, logger) would
// do for a quick try, without those guarantees).
func newSubscriber(cfg amqp.Config, logger watermill.LoggerAdapter) (message.Subscriber, error) {
	return resilient.NewSubscriber(resilient.Config{AMQP: cfg}, logger)
}

// deleteQueue removes this run's queue: durable queues outlive the program.
func deleteQueue(uri, queue string) {
	conn, err := amqp091.Dial(uri)
	if err == nil {
		defer conn.Close()
		var ch *amqp091.Channel
		if ch, err = conn.Channel(); err == nil {
			_, err = ch.QueueDelete(queue, false, false, false)
		}
	}
	if err != nil {
		fmt.Printf("delete queue %s: %v\n", queue, err)
	}
}
