// Command cqrs runs watermill's CQRS component on RabbitMQ with the resilient
// publisher: BookRoom commands go through a command bus (a durable queue) to a
// handler that emits RoomBooked events on an event bus (a durable fanout
// exchange, one queue per event handler) to a projection counting bookings
// per room. It exits when every command's event was seen, and exits 1 if any
// is missing.
//
//	go run ./examples/cqrs
//	go run ./examples/cqrs -commands 2000 -senders 8
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

// BookRoom is a command: a request that the handler may refuse.
type BookRoom struct {
	BookingID string `json:"booking_id"`
	RoomID    string `json:"room_id"`
	Guest     string `json:"guest"`
	Nights    int    `json:"nights"`
}

// RoomBooked is an event: a fact, published once the booking is accepted.
type RoomBooked struct {
	BookingID string `json:"booking_id"`
	RoomID    string `json:"room_id"`
	Nights    int    `json:"nights"`
}

// bookingsProjection is a read model: bookings per room. It is keyed by
// booking ID, so an event delivered twice (at-least-once) counts once.
type bookingsProjection struct {
	mu         sync.Mutex
	rooms      map[string]string // booking ID -> room
	deliveries int
	complete   chan struct{} // closed when `want` distinct bookings were seen
	want       int
}

func (p *bookingsProjection) On(ctx context.Context, e *RoomBooked) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deliveries++
	if _, dup := p.rooms[e.BookingID]; dup {
		return nil
	}
	p.rooms[e.BookingID] = e.RoomID
	if len(p.rooms) == p.want {
		close(p.complete)
	}
	return nil
}

func main() {
	uri := flag.String("uri", envOr("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"), "broker URI")
	prefix := flag.String("prefix", "example-cqrs-", "queue and exchange name prefix (a run-unique suffix is appended)")
	commands := flag.Int("commands", 500, "BookRoom commands to send")
	senders := flag.Int("senders", 4, "goroutines sending commands")
	timeout := flag.Duration("timeout", time.Minute, "how long to wait for the events")
	keep := flag.Bool("keep", false, "keep the queues and exchanges at the end")
	debug := flag.Bool("debug", false, "debug logs")
	flag.Parse()

	logger := watermill.NewStdLogger(*debug, false)
	run := *prefix + watermill.NewShortUUID()
	// Names without the package ("BookRoom", not "main.BookRoom").
	marshaler := cqrs.JSONMarshaler{GenerateName: cqrs.StructName}
	commandTopic := func(name string) string { return run + "-command-" + name }
	eventTopic := func(name string) string { return run + "-event-" + name }

	// Commands go to a durable queue per command type.
	commandPub, err := resilientv3.NewPublisher(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(*uri)}, logger)
	check(err, "command publisher")
	defer commandPub.Close()
	// Events go to a durable fanout exchange per event type, which the
	// publisher declares; each event handler binds its own queue to it. An
	// event published before a handler's queue is bound would be dropped by
	// the broker, so Mandatory makes that a loud ErrUnroutable instead.
	eventCfg := amqp.NewDurablePubSubConfig(*uri, nil)
	eventCfg.Publish.Mandatory = true
	eventPub, err := resilientv3.NewPublisher(resilientv3.Config{AMQP: eventCfg}, logger)
	check(err, "event publisher")
	defer eventPub.Close()

	router, err := message.NewRouter(message.RouterConfig{}, logger)
	check(err, "router")

	commandBus, err := cqrs.NewCommandBusWithConfig(commandPub, cqrs.CommandBusConfig{
		GeneratePublishTopic: func(p cqrs.CommandBusGeneratePublishTopicParams) (string, error) {
			return commandTopic(p.CommandName), nil
		},
		Marshaler: marshaler,
		Logger:    logger,
	})
	check(err, "command bus")

	eventBus, err := cqrs.NewEventBusWithConfig(eventPub, cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) {
			return eventTopic(p.EventName), nil
		},
		// A command redelivered after a fault (its ack lost) is handled again
		// and publishes its event again. Deriving the event's UUID from the
		// booking makes the copies recognizable by UUID downstream.
		OnPublish: func(p cqrs.OnEventSendParams) error {
			if e, ok := p.Event.(*RoomBooked); ok {
				p.Message.UUID = e.BookingID
			}
			return nil
		},
		Marshaler: marshaler,
		Logger:    logger,
	})
	check(err, "event bus")

	commandProcessor, err := cqrs.NewCommandProcessorWithConfig(router, cqrs.CommandProcessorConfig{
		GenerateSubscribeTopic: func(p cqrs.CommandProcessorGenerateSubscribeTopicParams) (string, error) {
			return commandTopic(p.CommandName), nil
		},
		SubscriberConstructor: func(p cqrs.CommandProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return newSubscriber(amqp.NewDurableQueueConfig(*uri), logger)
		},
		Marshaler: marshaler,
		Logger:    logger,
	})
	check(err, "command processor")

	eventProcessor, err := cqrs.NewEventProcessorWithConfig(router, cqrs.EventProcessorConfig{
		GenerateSubscribeTopic: func(p cqrs.EventProcessorGenerateSubscribeTopicParams) (string, error) {
			return eventTopic(p.EventName), nil
		},
		SubscriberConstructor: func(p cqrs.EventProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			// One queue per handler, bound to the event's exchange.
			return newSubscriber(amqp.NewDurablePubSubConfig(*uri, amqp.GenerateQueueNameTopicNameWithSuffix(p.HandlerName)), logger)
		},
		Marshaler: marshaler,
		Logger:    logger,
	})
	check(err, "event processor")

	// The command handler: decide, then record the decision as an event.
	// If publishing the event fails, the error nacks the command, which is
	// then redelivered: the event is not lost.
	check(commandProcessor.AddHandlers(cqrs.NewCommandHandler("BookRoomHandler",
		func(ctx context.Context, c *BookRoom) error {
			// (a real handler would check availability and maybe refuse)
			return eventBus.Publish(ctx, &RoomBooked{BookingID: c.BookingID, RoomID: c.RoomID, Nights: c.Nights})
		})), "command handler")

	projection := &bookingsProjection{rooms: map[string]string{}, complete: make(chan struct{}), want: *commands}
	check(eventProcessor.AddHandlers(cqrs.NewEventHandler("BookingsProjection", projection.On)), "event handler")

	go func() { check(router.Run(context.Background()), "router") }()
	<-router.Running() // every handler's queue is declared and bound

	// Send the commands; Send returns once the broker confirmed the command.
	start := time.Now()
	sent := make(map[string]int) // room -> bookings sent
	var mu sync.Mutex
	var wg sync.WaitGroup
	for s := 0; s < *senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := s; i < *commands; i += *senders {
				room := fmt.Sprintf("room-%d", 100+i%7)
				cmd := &BookRoom{BookingID: watermill.NewUUID(), RoomID: room, Guest: fmt.Sprintf("guest %d", i), Nights: 1 + i%4}
				if err := commandBus.Send(context.Background(), cmd); err != nil {
					log.Printf("send: %v", err)
					continue
				}
				mu.Lock()
				sent[room]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("sent %d commands in %s\n", *commands, time.Since(start).Round(time.Millisecond))
	// A command that could not be sent is logged above; its event never comes,
	// and the wait below times out.

	select {
	case <-projection.complete:
		fmt.Printf("all events seen after %s\n", time.Since(start).Round(time.Millisecond))
	case <-time.After(*timeout):
		fmt.Printf("timed out after %s\n", *timeout)
	}
	// The router acks a command after its handler returned, so the last
	// commands may still be unacked here: they stay queued (with -keep) and a
	// next run would handle them again; their events carry the same UUID.
	check(router.Close(), "router close")

	projection.mu.Lock()
	defer projection.mu.Unlock()
	counted := map[string]int{}
	for _, room := range projection.rooms {
		counted[room]++
	}
	total, wrong := 0, 0
	for _, room := range slices.Sorted(maps.Keys(sent)) {
		n := sent[room]
		total += n
		fmt.Printf("  %s: %3d booked, %3d counted by the projection\n", room, n, counted[room])
		if counted[room] != n {
			wrong++
		}
	}
	fmt.Printf("commands %d, events seen %d (%d deliveries, %d duplicates dropped), rooms wrong %d\n",
		total, len(projection.rooms), projection.deliveries, projection.deliveries-len(projection.rooms), wrong)

	if !*keep {
		cleanUp(*uri, []string{commandTopic("BookRoom"), eventTopic("RoomBooked") + "_BookingsProjection"}, []string{eventTopic("RoomBooked")})
	}
	if wrong > 0 || len(projection.rooms) != total {
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

// cleanUp deletes this run's queues and exchanges: durable ones outlive the
// program.
func cleanUp(uri string, queues, exchanges []string) {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		fmt.Printf("clean-up: %v\n", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		fmt.Printf("clean-up: %v\n", err)
		return
	}
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			fmt.Printf("delete queue %s: %v\n", q, err)
		}
	}
	for _, x := range exchanges {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			fmt.Printf("delete exchange %s: %v\n", x, err)
		}
	}
}
