//go:build !race

package decorate_test

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/decorate"
	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// This file is built without -race: watermill-amqp's ConnectionWrapper
// replaces its `connected` channel on reconnect while IsConnected reads it,
// a data race inside watermill-amqp that the race detector reports as soon
// as the broker restarts. scripts/test.sh runs it in its race-free
// invocation.

// stockPublisher is watermill-amqp's own publisher, with two of its own
// options set: publisher confirms (without them its Publish returns once the
// message is written to the socket, and no decorator can make an unconfirmed
// message safe from a broker restart), and the watermill UUID copied into
// the AMQP message_id, by which brokertest.Drain counts.
func stockPublisher(t *testing.T) *amqp.Publisher {
	t.Helper()
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Publish.ConfirmDelivery = true
	cfg.Marshaler = amqp.DefaultMarshaler{PostprocessPublishing: func(p amqp091.Publishing) amqp091.Publishing {
		p.MessageId, _ = p.Headers[amqp.DefaultMessageUUIDHeaderKey].(string)
		return p
	}}
	pub, err := amqp.NewPublisher(cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// declareQueue declares a durable queue: watermill-amqp's publisher never
// declares queues, and a message to a missing queue is dropped.
func declareQueue(t *testing.T, name string) {
	t.Helper()
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	brokertest.DeleteQueues(t, name)
}

// bareLoad publishes with the stock publisher from many goroutines and,
// unlike brokertest.Load, keeps going after a failure, counting it.
type bareLoad struct {
	confirmed brokertest.IDs
	failures  atomic.Int64
	failed    chan struct{} // closed at the first failure
	succeeded chan struct{} // a token after each success, cap 1
	mu        sync.Mutex
	kinds     map[string]int
	stop      chan struct{}
	wg        sync.WaitGroup
	once      sync.Once
}

func startBareLoad(pub message.Publisher, goroutines int, topic string) *bareLoad {
	l := &bareLoad{failed: make(chan struct{}), succeeded: make(chan struct{}, 1), kinds: map[string]int{}, stop: make(chan struct{})}
	for range goroutines {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				msgs, ids := brokertest.Messages(1)
				err := pub.Publish(topic, msgs...)
				if err == nil {
					l.confirmed.Add(ids...)
					select {
					case l.succeeded <- struct{}{}:
					default:
					}
					continue
				}
				l.failures.Add(1)
				l.once.Do(func() { close(l.failed) })
				kind := errorKind(err)
				l.mu.Lock()
				l.kinds[kind]++
				l.mu.Unlock()
				// A rate limit, not a synchronisation: "not connected"
				// fails at once, and 16 goroutines spinning on it would
				// starve the broker starting on the same two cores.
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return l
}

// errorKind is an error's text without the message UUID some carry.
func errorKind(err error) string {
	kind, _, _ := strings.Cut(err.Error(), " [")
	return strings.Join(strings.Fields(kind), " ")
}

// awaitSuccess waits for a publish that succeeds after the call, or fails t
// after bound. Tokens of earlier successes are dropped first.
func (l *bareLoad) awaitSuccess(t *testing.T, bound time.Duration) {
	t.Helper()
	select {
	case <-l.succeeded:
	default:
	}
	select {
	case <-l.succeeded:
	case <-time.After(bound):
		t.Fatalf("the stock publisher published nothing for %s after the broker came back", bound)
	}
}

func (l *bareLoad) Stop() {
	close(l.stop)
	l.wg.Wait()
}

func (l *bareLoad) Kinds() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k, n := range l.kinds {
		out = append(out, fmt.Sprintf("%q x%d", k, n))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// The acceptance test of Retry and Reconnect: watermill-amqp's stock
// publisher fails while the broker restarts ("not connected to AMQP", and
// errors of the channel it was using); the same publisher under
// Retry(Reconnect(pub)) publishes through the same restart, every Publish
// returning nil, and every message it confirmed is in the queue. Both run
// side by side through one restart, so the failure of the bare one shows
// the restart was real for the decorated one.
func TestStockPublisherThroughBrokerRestart(t *testing.T) {
	brokertest.Need(t)
	const goroutines = 16
	bareQueue, decoratedQueue := brokertest.Name("stock-bare"), brokertest.Name("stock-decorated")
	declareQueue(t, bareQueue)
	declareQueue(t, decoratedQueue)

	bare := stockPublisher(t)
	defer bare.Close()

	var retries, giveUps, waits atomic.Int64
	var maxWait atomic.Int64
	var stockErrs sync.Map // what Retry saw, by kind
	pub, err := decorate.Reconnect(decorate.ReconnectConfig{
		OnWait: func(waited time.Duration, err error) {
			waits.Add(1)
			for cur := maxWait.Load(); int64(waited) > cur && !maxWait.CompareAndSwap(cur, int64(waited)); cur = maxWait.Load() {
			}
		},
	})(stockPublisher(t))
	if err != nil {
		t.Fatal(err)
	}
	pub, err = decorate.Retry(decorate.RetryConfig{
		OnRetry: func(_ int, err error, _ time.Duration) {
			retries.Add(1)
			kind := errorKind(err)
			n, _ := stockErrs.LoadOrStore(kind, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		},
		OnGiveUp: func(attempts int, err error) {
			giveUps.Add(1)
			t.Errorf("gave up after %d attempts: %v", attempts, err)
		},
	})(pub)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	decorated := brokertest.StartLoad(t, pub, goroutines, decoratedQueue)
	bareLoad := startBareLoad(bare, goroutines, bareQueue)
	decorated.WaitProgress(300)

	stopped := time.Now()
	brokertest.StopApp(t)
	select {
	case <-bareLoad.failed:
	case <-time.After(2 * time.Minute):
		t.Fatal("the stock publisher never failed while the broker was stopped")
	}
	duringDown := decorated.Confirmed.Len()
	brokertest.StartApp(t)
	up := time.Now()
	decorated.WaitProgress(1)
	firstConfirm := time.Since(up)
	decorated.WaitProgress(300)
	// The stock publisher reconnects on a backoff of its own, growing to
	// seconds while the broker is down. Its Close does not stop a reconnect
	// under way: it closes the dead connection and the reconnect then opens
	// one nobody closes (goleak found it). So it is closed only once it has
	// published again, which also shows it recovered by itself.
	bareLoad.awaitSuccess(t, 2*time.Minute)
	decorated.Stop()
	bareLoad.Stop()

	var seen []string
	stockErrs.Range(func(k, v any) bool {
		seen = append(seen, fmt.Sprintf("%q x%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	sort.Strings(seen)
	t.Logf("broker down %s (stop_app to start_app done); decorated: first confirm %s after the broker was back, %d confirmed before the restart",
		up.Sub(stopped).Round(time.Millisecond), firstConfirm.Round(time.Millisecond), duringDown)
	t.Logf("decorated: %d retries (errors: %s), %d waits for the connection (longest %s), %d give-ups",
		retries.Load(), strings.Join(seen, ", "), waits.Load(), time.Duration(maxWait.Load()).Round(time.Millisecond), giveUps.Load())
	t.Logf("bare stock publisher: %d confirmed, %d failed publishes: %s",
		bareLoad.confirmed.Len(), bareLoad.failures.Load(), bareLoad.Kinds())

	if bareLoad.failures.Load() == 0 {
		t.Fatal("the bare stock publisher did not fail: the restart proved nothing")
	}
	if retries.Load() == 0 {
		t.Fatal("Retry never retried: the restart did not reach the decorated publisher")
	}
	bareTally := brokertest.Drain(t, bareQueue, bareLoad.confirmed.All())
	t.Logf("bare tally (its confirmed messages only): %s", bareTally)
	tally := brokertest.Drain(t, decoratedQueue, decorated.Confirmed.All())
	brokertest.RequireNoneLost(t, tally)
}
