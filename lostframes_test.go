package e2e_test

// Frames lost on a link that lives: the proxy drops a chunk of bytes and
// forwards the rest, heartbeats included, so nothing looks dead. amqp091-go
// waits for a lost reply for ever; the publisher and the subscriber must
// find it out (a reply bound, a gap in delivery tags) and recover, losing
// nothing.

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/netfault"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// AMQP methods, as class and method IDs.
type method struct{ class, id uint16 }

var (
	channelOpenOK   = method{20, 11}
	channelCloseOK  = method{20, 41}
	queueDeclareOK  = method{50, 11}
	basicConsumeOK  = method{60, 21}
	basicDeliver    = method{60, 60}
	basicAck        = method{60, 80}
	confirmSelectOK = method{85, 11}
)

// carries reports whether chunk holds a method frame of m, reading the
// frames it starts with (a chunk cut mid-frame is read up to the cut).
func carries(chunk []byte, m method) bool {
	for len(chunk) >= 11 {
		size := int(binary.BigEndian.Uint32(chunk[3:7]))
		if chunk[0] == 1 && binary.BigEndian.Uint16(chunk[7:9]) == m.class && binary.BigEndian.Uint16(chunk[9:11]) == m.id {
			return true
		}
		if len(chunk) < 8+size {
			return false
		}
		chunk = chunk[8+size:]
	}
	return false
}

// dropInTurn has link drop, coming from the broker, the first chunk that
// carries each of steps in turn (the second step's only after the first's
// was dropped), and then nothing. It returns a channel closed once all
// were dropped.
func dropInTurn(link *netfault.Proxy, steps ...method) <-chan struct{} {
	var mu sync.Mutex
	done := make(chan struct{})
	link.Drop(func(chunk []byte, upstream bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if upstream || len(steps) == 0 || !carries(chunk, steps[0]) {
			return false
		}
		steps = steps[1:]
		if len(steps) == 0 {
			close(done)
		}
		return true
	})
	return done
}

// A reply the broker sent is lost on a live link: the publisher cuts the
// connection once ConfirmTimeout has passed without it, and the Publish
// waiting behind it is confirmed on the next connection.
func TestLostReplyOnALiveLink(t *testing.T) {
	brokertest.Need(t)
	for name, steps := range map[string][]method{
		"channel.open-ok of a lane":        {channelOpenOK},
		"confirm.select-ok of a lane":      {confirmSelectOK},
		"queue.declare-ok":                 {queueDeclareOK},
		"channel.close-ok of a declarer":   {queueDeclareOK, channelCloseOK}, // the declaration's reply, once re-declared
		"basic.ack, then channel.close-ok": {basicAck, channelCloseOK},       // a stuck lane closing its channel
	} {
		t.Run(name, func(t *testing.T) {
			link, uri := proxy(t)
			queue := brokertest.Name("lost-reply")
			brokertest.DeleteQueues(t, queue)
			dropped := dropInTurn(link, steps...)
			pub, states := faultPublisher(t, uri, func(c *resilient.Config) {
				c.Channels = 1 // the call cannot go round a stuck lane
				c.Heartbeat = time.Second
				c.ConfirmTimeout = time.Second
				c.PublishTimeout = 30 * time.Second
			})
			defer closePublisher(t, pub)
			// One message: a later multiple-ack would stand in for a lost ack.
			msgs, ids := messages(1)
			start := time.Now()
			if err := pub.Publish(queue, msgs...); err != nil {
				t.Fatalf("Publish after %s: %v", time.Since(start).Round(time.Millisecond), err)
			}
			took := time.Since(start)
			select {
			case <-dropped:
			default:
				t.Fatal("the frames were not all dropped: the test did not test the loss")
			}
			states.Await("reconnecting")
			t.Logf("confirmed %s after the call started (ConfirmTimeout 1s)", took.Round(time.Millisecond))
			brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, ids))
		})
	}
}

// queueOf publishes n messages to a fresh queue, straight to the broker, and
// returns the queue and their IDs.
func queueOf(t *testing.T, prefix string, n int) (string, []string) {
	t.Helper()
	queue := brokertest.Name(prefix)
	brokertest.DeleteQueues(t, queue)
	pub, _ := faultPublisher(t, brokertest.URI(), nil)
	msgs, ids := messages(n)
	if err := pub.Publish(queue, msgs...); err != nil {
		t.Fatal(err)
	}
	closePublisher(t, pub)
	return queue, ids
}

// consumeAll subscribes to queue with cfg until the test ends, acking
// every message and recording its arrival.
func consumeAll(t *testing.T, cfg resilient.Config, queue string) *brokertest.Arrivals {
	t.Helper()
	sub, err := resilient.NewSubscriber(cfg, watermill.NewStdLogger(false, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	arrived := brokertest.NewArrivals()
	go func() {
		for m := range out {
			arrived.Add(m.UUID)
			m.Ack()
		}
	}()
	return arrived
}

// A delivery lost with none after it (nothing shows a gap): the broker
// holds it as unacked while the channel lives. The consumer, idle for five
// heartbeats, attaches again, and the broker delivers it.
func TestLastDeliveryLostOnALiveLink(t *testing.T) {
	brokertest.Need(t)
	queue, ids := queueOf(t, "lost-last", 50)
	link, uri := proxy(t)
	last := []byte(ids[len(ids)-1])
	var dropped atomic.Bool
	link.Drop(func(chunk []byte, upstream bool) bool {
		return !upstream && bytes.Contains(chunk, last) && dropped.CompareAndSwap(false, true)
	})
	start := time.Now()
	arrived := consumeAll(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), Heartbeat: time.Second}, queue)
	arrived.AwaitAll(t, ids)
	if !dropped.Load() {
		t.Fatal("the last delivery was not dropped: the test did not test the loss")
	}
	t.Logf("the last of 50 arrived %s after subscribing (heartbeat 1s: idle for 5s attaches again)", time.Since(start).Round(time.Millisecond))
}

// A reply lost to the subscriber (its consumer's start), or a delivery lost
// in the middle of a stream: every message still reaches the handler.
func TestLostFramesToTheSubscriber(t *testing.T) {
	brokertest.Need(t)
	for name, step := range map[string]method{
		"basic.consume-ok": basicConsumeOK,
		"basic.deliver":    basicDeliver,
	} {
		t.Run(name, func(t *testing.T) {
			queue, ids := queueOf(t, "lost-to-sub", 300)
			link, uri := proxy(t)
			var seen atomic.Int64
			link.Drop(func(chunk []byte, upstream bool) bool {
				// Not the first delivery: a gap shows only before a later one.
				if upstream || !carries(chunk, step) {
					return false
				}
				n := seen.Add(1)
				return n == 3 || step == basicConsumeOK && n == 1
			})
			cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), Heartbeat: time.Second, ConfirmTimeout: time.Second}
			cfg.AMQP.Consume.Qos.PrefetchCount = 10
			arrived := consumeAll(t, cfg, queue)
			arrived.AwaitAll(t, ids)
			if seen.Load() < 3 && step == basicDeliver || seen.Load() < 1 {
				t.Fatalf("no %s chunk dropped: the test did not test the loss", name)
			}
			tally := arrived.Tally(ids)
			t.Logf("%s dropped: %s", name, tally)
		})
	}
}

// A link that goes dark for a while, its bytes discarded both ways, then
// comes back, while callers keep publishing: some wait for their messages
// sent into the dark, others call again. Had the connection lived through it, the
// broker would have confirmed each later message by the number the
// publisher gave one it discarded. The publisher cuts a link that stays
// silent while confirms are owed, well before the heartbeat would: nothing
// reported confirmed is missing.
func TestBlackholeLiftedWhileCallsKeepComing(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	queue := brokertest.Name("dark-then-back")
	brokertest.DeleteQueues(t, queue)
	pub, _ := faultPublisher(t, uri, func(c *resilient.Config) {
		// Heartbeat 10s, the default: it would not notice a 2s blackhole.
		c.DialTimeout = 2 * time.Second // a dial into the dark link gives up sooner
	})
	var acc accounting
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				msgs, ids := messages(2)
				// Half the callers wait out a blackhole, half give up and
				// call again, so that calls keep coming once it is lifted.
				bound := 300 * time.Millisecond
				if g%2 == 0 {
					bound = 10 * time.Second
				}
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				for _, m := range msgs {
					m.SetContext(ctx)
				}
				acc.record(t, ids, pub.Publish(queue, msgs...))
				cancel()
			}
		}()
	}
	for _, dark := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second} {
		time.Sleep(3 * time.Second) // calls flowing, over the link come back
		link.Blackhole()
		time.Sleep(dark)
		link.Pass()
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	closePublisher(t, pub)
	acc.check(t, queue)
}
