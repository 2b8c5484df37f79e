// Command long-lived-publisher publishes and confirms messages without end
// while you restart the broker, drop its connections or pull the network,
// and prints what happens. When it stops (Ctrl-C or -duration), it reads
// the queue back and checks, by UUID, that every confirmed message is there.
// It exits 0 when none was lost, Ctrl-C included; 1 on a loss or a failure
// (a second Ctrl-C aborts at once).
//
//	go run ./examples/long-lived-publisher                      # then restart RabbitMQ in another terminal
//	go run ./examples/long-lived-publisher -restart-every 10s -duration 35s   # restarts it itself (rabbitmqctl)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/resilientv3"
)

func main() {
	uri := flag.String("uri", envOr("AMQP_URI", "amqp://guest:guest@localhost:5672/"), "broker URI")
	queue := flag.String("queue", "demo-long-lived", "durable queue to publish to (emptied at start)")
	workers := flag.Int("workers", 16, "goroutines publishing concurrently")
	batch := flag.Int("batch", 10, "messages per Publish call")
	duration := flag.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	restartEvery := flag.Duration("restart-every", 0, "restart the broker this often with rabbitmqctl ($RABBITMQCTL), 0: never")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	start := time.Now()
	stamp := func() string { return fmt.Sprintf("%6.1fs", time.Since(start).Seconds()) }

	purge(*uri, *queue)
	pub, err := resilientv3.NewPublisher(resilientv3.Config{
		AMQP:                 amqp.NewDurableQueueConfig(*uri),
		RetryOnFailedConnect: true,
		PublishTimeout:       2 * time.Minute, // ride through a long restart
		OnStateChange: func(c resilientv3.StateChange) {
			reason := ""
			if c.Err != nil {
				reason = ": " + c.Err.Error()
			}
			fmt.Printf("%s  state %s -> %s%s\n", stamp(), c.From, c.To, reason)
		},
	}, watermill.NopLogger{})
	if err != nil {
		log.Fatalf("cannot start: %v", err)
	}

	var confirmed, failed atomic.Int64
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				msgs := make([]*message.Message, *batch)
				for i := range msgs {
					msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(`{"event":"demo"}`))
				}
				err := pub.Publish(*queue, msgs...)
				var pe *resilientv3.PublishError
				switch {
				case err == nil:
					confirmed.Add(int64(len(msgs)))
					mu.Lock()
					for _, m := range msgs {
						ids = append(ids, m.UUID)
					}
					mu.Unlock()
				case errors.As(err, &pe):
					failed.Add(int64(len(pe.Unconfirmed)))
					fmt.Printf("%s  publish failed: %v\n", stamp(), err)
				default:
					fmt.Printf("%s  publish failed: %v\n", stamp(), err)
				}
			}
		}()
	}

	restarts := make(chan struct{})
	if *restartEvery > 0 {
		go func() {
			defer close(restarts)
			restartLoop(ctx, *restartEvery, stamp)
		}()
	} else {
		close(restarts)
		fmt.Println("Publishing. Restart RabbitMQ now (e.g. `rabbitmqctl stop_app; rabbitmqctl start_app`, or `docker compose restart rabbitmq`) and watch. Ctrl-C to stop.")
	}

	ticker := time.NewTicker(time.Second)
	last := int64(0)
loop:
	for {
		select {
		case <-ctx.Done():
			stop() // a second Ctrl-C aborts the wait and the read-back
			break loop
		case <-ticker.C:
			n := confirmed.Load()
			fmt.Printf("%s  confirmed %8d  (+%6d/s)  failed %d  state %s\n", stamp(), n, n-last, failed.Load(), pub.Status())
			last = n
		}
	}
	ticker.Stop()
	fmt.Printf("%s  stopping: waiting for publishes in progress\n", stamp())
	wg.Wait()
	<-restarts // never leave the broker stopped mid-restart
	if err := pub.Close(); err != nil {
		fmt.Printf("close: %v\n", err)
	}
	verify(*uri, *queue, ids)
}

func purge(uri, queue string) {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		return // the publisher will report it
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		_, _ = ch.QueueDelete(queue, false, false, false)
	}
}

// verify reads the queue back and checks that every confirmed message is in it.
func verify(uri, queue string, confirmed []string) {
	conn, err := amqp091.Dial(uri)
	if err != nil {
		log.Fatalf("verify: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatalf("verify: %v", err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		log.Fatalf("verify: %v", err)
	}
	_ = ch.Qos(1000, 0, false)
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		log.Fatalf("verify: %v", err)
	}
	fmt.Printf("reading the queue back: %d messages\n", q.Messages)
	seen := make(map[string]int, q.Messages)
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	started := time.Now()
	for i := 0; i < q.Messages; {
		select {
		case d, ok := <-deliveries:
			if !ok {
				log.Fatalf("verify: the consumer stopped after %d of %d messages", i, q.Messages)
			}
			seen[d.MessageId]++
			i++
		case <-progress.C:
			fmt.Printf("  read %8d of %d  (%.0f%%, %.0fs)\n", i, q.Messages, 100*float64(i)/float64(q.Messages), time.Since(started).Seconds())
		}
	}
	lost, dups := 0, 0
	for _, id := range confirmed {
		switch n := seen[id]; {
		case n == 0:
			lost++
		case n > 1:
			dups += n - 1
		}
	}
	fmt.Printf("verified: %d confirmed, %d in the queue, %d lost, %d duplicates (re-sent after a fault; drop them by message_id)\n",
		len(confirmed), q.Messages, lost, dups)
	_, _ = ch.QueueDelete(queue, false, false, false)
	if lost > 0 {
		os.Exit(1)
	}
}
