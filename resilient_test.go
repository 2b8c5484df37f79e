// End-to-end tests of the whole stack against the real broker, under real
// faults: forced connection closes, a broker restart, a missing exchange,
// and a memory alarm (hostile networks are in network_test.go). Each one
// publishes from many goroutines, then consumes everything and checks by
// UUID that nothing confirmed was lost.
//
// These tests stop, restart and alarm the shared broker: run them with -p 1
// (the README's test command does), never beside other tests of the broker.
package e2e_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

func TestMain(m *testing.M) {
	brokertest.Main(m, nil)
}

const goroutines = 16

// faultPublisher is pubsubtest.Publisher on uri, with the fault tests'
// PublishTimeout (a minute), tuned by tune.
func faultPublisher(t *testing.T, uri string, tune func(*resilient.Config)) (*resilient.Publisher, *brokertest.States) {
	t.Helper()
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), PublishTimeout: time.Minute}
	if tune != nil {
		tune(&cfg)
	}
	return pubsubtest.Publisher(t, cfg)
}

// fault is one fault test's publisher, the queue it fills, and the load
// publishing to it from many goroutines.
type fault struct {
	queue  string
	pub    *resilient.Publisher
	states *brokertest.States
	load   *brokertest.Load
}

func startFault(t *testing.T, name, uri string, tune func(*resilient.Config)) *fault {
	t.Helper()
	return startSizedFault(t, name, uri, 0, tune)
}

// startSizedFault is startFault with payloads of size bytes.
func startSizedFault(t *testing.T, name, uri string, size int, tune func(*resilient.Config)) *fault {
	t.Helper()
	f := &fault{queue: brokertest.Name(name)}
	brokertest.DeleteQueues(t, f.queue)
	f.pub, f.states = faultPublisher(t, uri, tune)
	f.load = brokertest.StartLoadWith(t, f.pub, brokertest.LoadConfig{Goroutines: goroutines, Size: size}, f.queue)
	return f
}

// finish publishes a little more after the last fault, stops, and checks
// by UUID that every confirmed message is in the queue.
func (f *fault) finish(t *testing.T, more int) {
	t.Helper()
	f.load.WaitProgress(more)
	f.load.Stop()
	closePublisher(t, f.pub)
	brokertest.RequireNoneLost(t, brokertest.Drain(t, f.queue, f.load.Confirmed.All()))
}

func closePublisher(t *testing.T, pub *resilient.Publisher) {
	t.Helper()
	if err := pub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestForcedConnectionCloses(t *testing.T) {
	brokertest.Need(t)
	f := startFault(t, "forced-close", brokertest.URI(), nil)
	var recoveries []time.Duration
	for i := 0; i < 5; i++ {
		f.load.WaitProgress(300)
		brokertest.CloseAllConnections(t)
		lost := f.states.Await("reconnecting") // rabbitmqctl itself takes ~0.5 s: time from here
		f.states.Await("connected")
		before := f.load.Confirmed.Len()
		f.load.WaitProgress(1)
		recoveries = append(recoveries, time.Since(lost).Round(time.Millisecond))
		t.Logf("close %d: confirmed %d before; first confirm %s after the connection dropped", i+1, before, recoveries[i])
	}
	f.finish(t, 300)
	t.Logf("recovery times (connection dropped to next confirm): %v", recoveries)
}

func TestBrokerRestart(t *testing.T) {
	brokertest.Need(t)
	f := startFault(t, "restart", brokertest.URI(), nil)
	f.load.WaitProgress(500)
	stopped := time.Now()
	brokertest.StopApp(t)
	f.states.Await("reconnecting")
	during := f.load.Confirmed.Len()
	brokertest.StartApp(t)
	up := time.Now()
	f.load.WaitProgress(1)
	t.Logf("broker down %s; first confirm %s after the broker accepted connections again; %d confirmed before the restart",
		up.Sub(stopped).Round(time.Millisecond), time.Since(up).Round(time.Millisecond), during)
	f.finish(t, 500)
}

// declareOnly declares the exchanges of the topics it knows, so that one
// topic publishes to an exchange nobody declared.
type declareOnly struct {
	amqp.DefaultTopologyBuilder
	missing string
}

func (b *declareOnly) ExchangeDeclare(ch *amqp091.Channel, exchange string, cfg amqp.Config) error {
	if exchange == b.missing {
		return nil
	}
	return b.DefaultTopologyBuilder.ExchangeDeclare(ch, exchange, cfg)
}

// Publishing to a missing exchange fails those messages with ErrNotFound,
// at once, while other topics on the same publisher lose nothing.
func TestMissingExchangeMidStream(t *testing.T) {
	brokertest.Need(t)
	missing := brokertest.Name("missing")
	topics := []string{brokertest.Name("ok-a"), brokertest.Name("ok-b"), brokertest.Name("ok-c")}
	cfg := amqp.NewDurablePubSubConfig(brokertest.URI(), nil)
	cfg.Exchange.Type = "direct"
	cfg.TopologyBuilder = &declareOnly{missing: missing}
	pub, _ := faultPublisher(t, brokertest.URI(), func(c *resilient.Config) { c.AMQP = cfg })

	// One durable queue per healthy exchange, bound before publishing.
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	brokertest.DeleteQueues(t, topics...)
	t.Cleanup(func() {
		conn := brokertest.Dial(t)
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			for _, topic := range topics {
				_ = ch.ExchangeDelete(topic, false, false)
			}
		}
	})
	for _, topic := range topics {
		if err := ch.ExchangeDeclare(topic, "direct", true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare(topic, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(topic, "", topic, false, nil); err != nil {
			t.Fatal(err)
		}
	}

	loads := make([]*brokertest.Load, len(topics))
	for i, topic := range topics {
		loads[i] = brokertest.StartLoad(t, pub, goroutines/len(topics), topic)
	}
	loads[0].WaitProgress(200)

	// Mid-stream, goroutines publish to the missing exchange.
	var wg sync.WaitGroup
	var notFound, other int
	var mu sync.Mutex
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				msg := message.NewMessage(watermill.NewUUID(), []byte("to nowhere"))
				err := pub.Publish(missing, msg)
				mu.Lock()
				if errors.Is(err, resilient.ErrNotFound) && resilient.IsPermanent(err) {
					notFound++
				} else {
					other++
					t.Errorf("publish to a missing exchange: %v, want ErrNotFound", err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, l := range loads {
		l.WaitProgress(200)
	}
	for _, l := range loads {
		l.Stop()
	}
	closePublisher(t, pub)
	t.Logf("missing exchange: %d ErrNotFound, %d other", notFound, other)
	for i, topic := range topics {
		brokertest.RequireNoneLost(t, brokertest.Drain(t, topic, loads[i].Confirmed.All()))
	}
}

// A memory alarm blocks the connection: sending pauses and Publish times out
// cleanly, naming its messages; once the alarm clears, publishing resumes.
func TestBlockedConnection(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("blocked")
	brokertest.DeleteQueues(t, queue)
	pub, states := faultPublisher(t, brokertest.URI(), func(c *resilient.Config) { c.PublishTimeout = 3 * time.Second })
	defer closePublisher(t, pub)
	before, beforeIDs := messages(10)
	if err := pub.Publish(queue, before...); err != nil {
		t.Fatal(err)
	}

	restore := alarm(t)

	blocked, blockedIDs := messages(5)
	start := time.Now()
	err := pub.Publish(queue, blocked...)
	var pe *resilient.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, resilient.ErrNotConfirmed) || resilient.IsPermanent(err) || len(pe.Unconfirmed) != len(blockedIDs) {
		t.Fatalf("Publish while blocked: %v, want a transient ErrNotConfirmed naming %d messages", err, len(blockedIDs))
	}
	t.Logf("blocked publish gave up after %s: %v", time.Since(start).Round(time.Millisecond), err)
	states.Await("blocked")

	restore()
	states.Await("connected")
	after, afterIDs := messages(10)
	if err := pub.Publish(queue, after...); err != nil {
		t.Fatalf("Publish after the alarm cleared: %v", err)
	}
	r := brokertest.Drain(t, queue, append(beforeIDs, afterIDs...))
	brokertest.RequireNoneLost(t, r)
	t.Logf("of the %d messages that timed out while blocked, %d reached the queue later (allowed: not confirmed is not lost)", len(blockedIDs), r.Unexpected)
}

var messages = brokertest.Messages

// alarm raises a memory alarm on the broker until the returned function (also
// registered as cleanup) restores the watermark.
func alarm(t *testing.T) (restore func()) {
	t.Helper()
	watermark := strings.TrimSpace(brokertest.Ctl(t, "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."))
	var once sync.Once
	restore = func() { once.Do(func() { brokertest.Ctl(t, "set_vm_memory_high_watermark", watermark) }) }
	t.Cleanup(restore)
	brokertest.Ctl(t, "set_vm_memory_high_watermark", "0")
	return restore
}

// A message's own Context() bounds its wait, however long PublishTimeout is.
func TestMessageContextBoundsTheWait(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("msg-ctx")
	brokertest.DeleteQueues(t, queue)
	pub, states := faultPublisher(t, brokertest.URI(), nil) // PublishTimeout: a minute
	defer closePublisher(t, pub)
	warm, warmIDs := messages(1)
	if err := pub.Publish(queue, warm...); err != nil {
		t.Fatal(err)
	}
	restore := alarm(t)

	msgs, ids := messages(3)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	for _, m := range msgs {
		m.SetContext(ctx)
	}
	err := pub.Publish(queue, msgs...)
	var pe *resilient.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, context.DeadlineExceeded) || len(pe.Unconfirmed) != len(ids) {
		t.Fatalf("Publish: %v, want the message context's deadline naming %d messages", err, len(ids))
	}
	t.Log(err)
	states.Await("blocked")
	restore()
	states.Await("connected")
	after, afterIDs := messages(5)
	if err := pub.Publish(queue, after...); err != nil {
		t.Fatal(err)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, append(warmIDs, afterIDs...)))
}

// Close waits CloseTimeout for publishes in progress, then gives up on them:
// both Close and the Publish return an error naming the unconfirmed UUIDs.
func TestCloseReportsWhatStayedUnconfirmed(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("close-blocked")
	brokertest.DeleteQueues(t, queue)
	pub, states := faultPublisher(t, brokertest.URI(), func(c *resilient.Config) { c.CloseTimeout = 500 * time.Millisecond })
	warm, _ := messages(1)
	if err := pub.Publish(queue, warm...); err != nil {
		t.Fatal(err)
	}
	alarm(t)
	msgs, ids := messages(4)
	published := make(chan error, 1)
	go func() { published <- pub.Publish(queue, msgs...) }()
	states.Await("blocked")

	err := pub.Close()
	var pe *resilient.PublishError
	if !errors.As(err, &pe) || strings.Join(pe.Unconfirmed, ",") != strings.Join(ids, ",") || !errors.Is(err, resilient.ErrClosed) {
		t.Fatalf("Close: %v, want the %d unconfirmed UUIDs", err, len(ids))
	}
	t.Log(err)
	perr := <-published
	if !errors.As(perr, &pe) || len(pe.Unconfirmed) != len(ids) || !resilient.IsPermanent(perr) {
		t.Fatalf("Publish: %v, want ErrClosed naming %d messages", perr, len(ids))
	}
	if again := pub.Close(); again != err {
		t.Fatalf("second Close: %v, want the same result", again)
	}
}
