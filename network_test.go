package e2e_test

// Hostile networks, through an in-process TCP proxy between the publisher
// and the broker (internal/netfault): a link blackholed, reset, frozen (the
// peer stops reading: writes block), slowed; a reset in the middle of a
// topology declaration; a dial the broker never answers. Each publishes,
// then consumes and checks by UUID that nothing confirmed was lost.

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/netfault"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// proxy runs a fault proxy between the publisher and the broker, and returns
// the broker's URI through it.
func proxy(t *testing.T) (*netfault.Proxy, string) {
	t.Helper()
	u, err := url.Parse(brokertest.URI())
	if err != nil {
		t.Fatal(err)
	}
	p, err := netfault.Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr()
	return p, u.String()
}

// A half-open link: the proxy swallows everything, closes nothing. Only the
// heartbeat can tell; the publisher must notice, reconnect once the link
// heals, and re-send.
func TestBlackholedLink(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	f := startFault(t, "blackhole", uri, func(c *resilient.Config) {
		c.Heartbeat = time.Second
		c.DialTimeout = 2 * time.Second
	})
	f.load.WaitProgress(500)
	cut := time.Now()
	link.Blackhole()
	detected := f.states.Await("reconnecting")
	t.Logf("dead link detected after %s (heartbeat 1s)", detected.Sub(cut).Round(time.Millisecond))
	link.Pass()
	healed := time.Now()
	f.states.Await("connected")
	f.load.WaitProgress(1)
	t.Logf("first confirm %s after the link healed", time.Since(healed).Round(time.Millisecond))
	f.finish(t, 500)
}

// A link cut outright (every connection reset, new ones refused) and then
// restored, several times.
func TestLinkReset(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	f := startFault(t, "reset", uri, nil)
	for i := 0; i < 3; i++ {
		f.load.WaitProgress(300)
		if err := link.Refuse(true); err != nil {
			t.Fatal(err)
		}
		f.states.Await("reconnecting")
		if err := link.Refuse(false); err != nil {
			t.Fatal(err)
		}
		restored := time.Now()
		f.states.Await("connected")
		f.load.WaitProgress(1)
		t.Logf("reset %d: first confirm %s after the link came back", i+1, time.Since(restored).Round(time.Millisecond))
	}
	f.finish(t, 300)
}

// bigMessages is the payload size that makes lanes block in socket writes
// once a link freezes: the window of unconfirmed messages (4 lanes × 512)
// holds far more than the socket buffers.
const bigMessages = 64 << 10

// A link freezes (the peer stops reading; nothing is closed) while lanes
// are writing, and stays frozen; a new connection, to the other URI, would
// succeed. The lanes are stuck in socket writes, holding amqp091-go's
// locks: the heartbeat deadline must cut the socket, the supervisor must
// reconnect, and no Publish may fail. Then Close returns in time although
// the frozen link never heals.
func TestFrozenLinkWhileWriting(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	f := startSizedFault(t, "frozen", uri, bigMessages, func(c *resilient.Config) {
		c.Heartbeat = time.Second
		c.PublishTimeout = 5 * time.Second // the figure: each Publish must make it within it
		c.CloseTimeout = time.Second
		c.FailoverURIs = []string{brokertest.URI()}
		c.FailoverInOrder = true
	})
	f.load.WaitProgress(100)
	frozen := time.Now()
	link.Freeze()
	detected := f.states.Await("reconnecting")
	f.states.Await("connected")
	f.load.WaitProgress(1)
	t.Logf("frozen link: lost after %s (heartbeat 1s), first confirm on the other URI %s after the freeze",
		detected.Sub(frozen).Round(time.Millisecond), time.Since(frozen).Round(time.Millisecond))
	f.load.WaitProgress(100)
	f.load.Stop()
	start := time.Now()
	closePublisher(t, f.pub)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Close took %s with CloseTimeout 1s", took)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, f.queue, f.load.Confirmed.All()))
}

// frozenWriters is a publisher whose link froze (frozenUnderWriters) while
// callers were publishing big messages on it: its lanes are stuck in socket
// writes.
type frozenWriters struct {
	link    *netfault.Proxy
	pub     *resilient.Publisher
	queue   string
	warmIDs []string // confirmed before the freeze
	results chan writerResult
}

// writerResult is how one of the stuck callers' Publish ended.
type writerResult struct {
	ids []string
	err error
}

// frozenWriterCalls is how many callers frozenUnderWriters starts, each
// publishing 20 messages of bigMessages: 10 MiB, where a frozen link's
// socket buffers hold a few.
const frozenWriterCalls = 8

// frozenUnderWriters publishes one message, then freezes the link and
// starts frozenWriterCalls callers publishing big messages, and returns
// once they all are in progress and have had time to fill the socket
// buffers. The publisher has CloseTimeout 1 s, tuned further by tune.
func frozenUnderWriters(t *testing.T, name string, tune func(*resilient.Config)) *frozenWriters {
	t.Helper()
	link, uri := proxy(t)
	started := make(chan struct{}, frozenWriterCalls+2) // the warm-up call, and one more the test may make
	pub, _ := faultPublisher(t, uri, func(c *resilient.Config) {
		c.CloseTimeout = time.Second
		c.OnEvent = func(e resilient.Event) {
			if e.Kind == resilient.PublishStarted {
				select {
				case started <- struct{}{}:
				default: // more calls than awaited: none here
				}
			}
		}
		tune(c)
	})
	f := &frozenWriters{link: link, pub: pub, queue: brokertest.Name(name), results: make(chan writerResult, frozenWriterCalls)}
	brokertest.DeleteQueues(t, f.queue)
	warm, warmIDs := messages(1)
	if err := pub.Publish(f.queue, warm...); err != nil {
		t.Fatal(err)
	}
	f.warmIDs = warmIDs
	<-started
	link.Freeze()
	for range frozenWriterCalls {
		go func() {
			msgs, ids := messages(20)
			for _, m := range msgs {
				m.Payload = make([]byte, bigMessages)
			}
			f.results <- writerResult{ids, pub.Publish(f.queue, msgs...)}
		}()
	}
	// Every call is in progress before the test goes on (one that starts
	// after Close is refused with ErrClosed, as documented: not what these
	// tests are about).
	for range frozenWriterCalls {
		select {
		case <-started:
		case <-time.After(time.Minute):
			t.Fatal("the publishing calls did not start in a minute")
		}
	}
	// Let the lanes fill the socket buffers and block.
	time.Sleep(500 * time.Millisecond) // no event says "a write is blocked"
	return f
}

// settle waits for the stuck callers, once something (Close) cut the
// socket under them, and returns the messages they had confirmed. Each
// that failed must have named its messages.
func (f *frozenWriters) settle(t *testing.T) (confirmed []string, failed int) {
	t.Helper()
	for range frozenWriterCalls {
		var r writerResult
		select {
		case r = <-f.results:
		case <-time.After(time.Minute):
			t.Fatal("the stuck publishing calls did not return in a minute once the socket was cut")
		}
		var pe *resilient.PublishError
		switch {
		case r.err == nil:
			confirmed = append(confirmed, r.ids...)
		case errors.As(r.err, &pe) && len(pe.Unconfirmed) > 0:
			failed++
		default:
			t.Errorf("Publish: %v, want a *PublishError naming its messages", r.err)
		}
	}
	return confirmed, failed
}

// Close while a link is frozen under lanes stuck in socket writes, with a
// heartbeat too long to notice: Close itself must cut the socket, within
// CloseTimeout and a small margin, and the publishes in progress return
// errors naming their messages.
func TestCloseWhileLinkFrozen(t *testing.T) {
	brokertest.Need(t)
	f := frozenUnderWriters(t, "frozen-close", func(c *resilient.Config) { c.Heartbeat = 30 * time.Second })
	start := time.Now()
	err := f.pub.Close()
	took := time.Since(start)
	confirmed, failed := f.settle(t)
	t.Logf("Close took %s (CloseTimeout 1s): %v; %d publishes failed", took.Round(time.Millisecond), err, failed)
	if took > 2500*time.Millisecond {
		t.Fatalf("Close took %s with CloseTimeout 1s on a frozen link", took)
	}
	f.link.Pass()
	brokertest.RequireNoneLost(t, brokertest.Drain(t, f.queue, append(f.warmIDs, confirmed...)))
}

// A link freezes under lanes stuck in socket writes, with a heartbeat too
// long to notice it soon: a Publish whose message's context ends meanwhile
// returns at that end, with an error naming its message, not once the
// socket is cut. This is what the hand-over to a lane buys: a caller that
// wrote to the socket itself, as raw amqp091-go's callers do, would be held
// by the write (amqp091-go holds the connection's lock across it) until the
// heartbeat, 90 s here. Then Close cuts the socket, and nothing confirmed
// is lost.
func TestMessageContextBoundsPublishOnFrozenLink(t *testing.T) {
	brokertest.Need(t)
	// PublishTimeout stays the fault tests' minute: longer than the bound
	// below, so that only the message's context can end the call in time.
	f := frozenUnderWriters(t, "frozen-context", func(c *resilient.Config) { c.Heartbeat = time.Minute })
	const bound = 2 * time.Second
	msgs, ids := messages(1)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	msgs[0].SetContext(ctx)
	start := time.Now()
	err := f.pub.Publish(f.queue, msgs...)
	took := time.Since(start)
	t.Logf("Publish with a %s context on a frozen link returned after %s: %v", bound, took.Round(time.Millisecond), err)
	var pe *resilient.PublishError
	switch {
	case err == nil:
		t.Fatal("Publish confirmed on a frozen link")
	case !errors.As(err, &pe) || len(pe.Unconfirmed) != 1 || pe.Unconfirmed[0] != ids[0]:
		t.Fatalf("Publish: %v, want a *PublishError naming %s", err, ids[0])
	case !errors.Is(err, context.DeadlineExceeded):
		t.Fatalf("Publish: %v, want its message's context's end", err)
	case took > bound+5*time.Second:
		// The heartbeat (a minute) would cut the socket after 90 s, and
		// PublishTimeout end the call after a minute: only the message's
		// context can have ended it so soon (5 s: slack for a loaded
		// machine).
		t.Fatalf("Publish took %s with its message's context ending after %s", took, bound)
	}
	// The stuck callers' messages are still in flight: Close names them.
	t.Logf("Close: %v", f.pub.Close())
	if confirmed, _ := f.settle(t); len(confirmed) > 0 {
		t.Errorf("%d messages confirmed on a frozen link", len(confirmed))
	}
	f.link.Pass()
	brokertest.RequireNoneLost(t, brokertest.Drain(t, f.queue, f.warmIDs))
}

// The broker accepts TCP but never answers the handshake during a redial:
// Close returns within CloseTimeout and a small margin, not after
// DialTimeout.
func TestCloseDuringHungDial(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	pub, states := faultPublisher(t, uri, func(c *resilient.Config) {
		c.CloseTimeout = time.Second
		c.DialTimeout = 30 * time.Second
	})
	link.Freeze()
	link.Reset() // the live connection goes; redials reach a frozen proxy
	states.Await("reconnecting")
	accepted := link.Accepted()
	deadline := time.Now().Add(10 * time.Second)
	for link.Accepted() == accepted && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the proxy: no event for an accepted dial
	}
	if link.Accepted() == accepted {
		t.Fatal("no redial reached the proxy")
	}
	start := time.Now()
	closePublisher(t, pub)
	took := time.Since(start)
	t.Logf("Close during a hung handshake took %s (CloseTimeout 1s, DialTimeout 30s)", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Fatalf("Close took %s", took)
	}
}

// markerBuilder declares a marker exchange before the topic's queue, so that
// a test can cut the link between the two declarations.
type markerBuilder struct {
	amqp.DefaultTopologyBuilder
	marker func(queue string) string
}

func (b markerBuilder) BuildTopology(ch *amqp091.Channel, queue, exchange string, cfg amqp.Config, logger watermill.LoggerAdapter) error {
	if err := ch.ExchangeDeclare(b.marker(queue), "fanout", false, true, false, false, nil); err != nil {
		return err
	}
	return b.DefaultTopologyBuilder.BuildTopology(ch, queue, exchange, cfg, logger)
}

// A TCP reset while the first publish of a topic declares its topology,
// either as a declaration leaves, or right after the broker's reply to the
// first of two (then the second is written into a reset socket, and fails
// with a raw network error while amqp091-go does not yet call the
// connection closed). Every Publish must wait for the reconnect and succeed.
func TestResetDuringTopologyDeclaration(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	marker := func(queue string) string { return queue + "-marker" }
	pub, states := faultPublisher(t, uri, func(c *resilient.Config) {
		c.AMQP.TopologyBuilder = markerBuilder{marker: marker}
	})
	defer closePublisher(t, pub)
	const rounds = 60
	for i := 0; i < rounds; i++ {
		queue := brokertest.Name("declare-reset")
		brokertest.DeleteQueues(t, queue)
		var fired atomic.Bool
		if i%2 == 0 {
			// Reset as the queue's declaration leaves.
			name := []byte(queue)
			link.OnUpstream(func(chunk []byte) bool {
				return bytes.Contains(chunk, name) && !bytes.Contains(chunk, []byte(marker(queue))) && fired.CompareAndSwap(false, true)
			})
		} else {
			// Reset once the marker's declare-ok reached the client.
			var armed atomic.Bool
			name := []byte(marker(queue))
			link.OnUpstream(func(chunk []byte) bool {
				if bytes.Contains(chunk, name) && !fired.Load() {
					armed.Store(true)
				}
				return false
			})
			link.OnDownstream(func([]byte) bool {
				return armed.CompareAndSwap(true, false) && fired.CompareAndSwap(false, true)
			})
		}
		msgs, ids := messages(3)
		start := time.Now()
		if err := pub.Publish(queue, msgs...); err != nil {
			t.Fatalf("round %d: Publish after a reset mid-declare: %v (after %s)", i, err, time.Since(start))
		}
		link.OnUpstream(nil)
		link.OnDownstream(nil)
		if !fired.Load() {
			t.Fatalf("round %d: the link was never reset", i)
		}
		if pub.Status() != resilient.StateConnected {
			states.Await("connected")
		}
		brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, ids))
	}
	t.Logf("%d publishes, each with a reset during its declaration: all confirmed and in their queues", rounds)
}

// A slow link is not an access refusal. amqp091-go reports a socket time-out
// during the handshake as bad credentials or vhost; the publisher must see a
// transient fault, keep redialing, and connect once the link is fast again.
func TestSlowLinkIsNotAnAccessRefusal(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)

	// A handshake over a 1 s delay does not fit in DialTimeout 3 s.
	link.Delay(time.Second)
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), DialTimeout: 3 * time.Second}
	pub, err := resilient.NewPublisher(cfg, nil)
	if pub != nil || err == nil || resilient.IsPermanent(err) || errors.Is(err, resilient.ErrAccessRefused) {
		t.Fatalf("NewPublisher over a slow link: %v, want a transient error", err)
	}
	t.Logf("1 s delay, DialTimeout 3s: %v", err)

	// 2 s of delay with a 1 s heartbeat cannot connect at all (amqp091-go's
	// read deadline is 1.5 heartbeats); with RetryOnFailedConnect, Publish
	// waits and fails transiently.
	link.Delay(2 * time.Second)
	states, record := brokertest.NewStates(t)
	cfg = resilient.Config{
		AMQP: amqp.NewDurableQueueConfig(uri), Heartbeat: time.Second, DialTimeout: 30 * time.Second,
		RetryOnFailedConnect: true, PublishTimeout: 8 * time.Second,
		OnStateChange: func(c resilient.StateChange) { record(c.To.String()) },
	}
	pub, err = resilient.NewPublisher(cfg, watermill.NewStdLogger(false, false))
	if err != nil {
		t.Fatalf("NewPublisher with RetryOnFailedConnect over a slow link: %v", err)
	}
	defer closePublisher(t, pub)
	queue := brokertest.Name("slow")
	brokertest.DeleteQueues(t, queue)
	msgs, _ := messages(2)
	err = pub.Publish(queue, msgs...)
	if err == nil || resilient.IsPermanent(err) || errors.Is(err, resilient.ErrAccessRefused) || !errors.Is(err, resilient.ErrNotConfirmed) {
		t.Fatalf("Publish over a link too slow to connect: %v, want a transient ErrNotConfirmed", err)
	}
	t.Logf("2 s delay, heartbeat 1s: %v", err)

	// The link recovers: the publisher connects and publishes.
	link.Pass()
	states.Await("connected")
	ok, okIDs := messages(5)
	if err := pub.Publish(queue, ok...); err != nil {
		t.Fatalf("Publish once the link is fast again: %v", err)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, okIDs))
}

// A link slow but within the bounds works: 200 ms each way.
func TestSlowLinkWithinBounds(t *testing.T) {
	brokertest.Need(t)
	link, uri := proxy(t)
	link.Delay(200 * time.Millisecond)
	f := startFault(t, "slow-ok", uri, func(c *resilient.Config) { c.Heartbeat = 5 * time.Second })
	f.load.WaitProgress(200)
	link.Reset() // a reconnect over the slow link too
	f.states.Await("reconnecting")
	f.states.Await("connected")
	f.finish(t, 200)
}

// A link that freezes right after the handshake, before any frame armed
// amqp091-go's read deadline (it clears the handshake's, and arms its own
// only when a frame arrives): the publisher and the subscriber must still
// find out, within about 1.5 heartbeats, and a Subscribe on the frozen link
// returns when its context ends.
func TestLinkFrozenRightAfterConnect(t *testing.T) {
	brokertest.Need(t)
	for _, side := range []string{"publisher", "subscriber"} {
		t.Run(side, func(t *testing.T) {
			link, uri := proxy(t)
			lost := make(chan time.Time, 1)
			cfg := resilient.Config{
				AMQP:         amqp.NewDurableQueueConfig(uri),
				Heartbeat:    2 * time.Second,
				CloseTimeout: time.Second,
				OnEvent: func(e resilient.Event) {
					if e.Kind == resilient.ConnectionLost {
						select {
						case lost <- time.Now():
						default:
						}
					}
				},
			}
			var closer interface{ Close() error }
			var sub *resilient.Subscriber
			if side == "publisher" {
				pub, err := resilient.NewPublisher(cfg, nil)
				if err != nil {
					t.Fatal(err)
				}
				closer = pub
			} else {
				var err error
				if sub, err = resilient.NewSubscriber(cfg, nil); err != nil {
					t.Fatal(err)
				}
				closer = sub
			}
			defer closer.Close()
			link.Freeze()
			frozen := time.Now()
			if sub != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				_, err := sub.Subscribe(ctx, brokertest.Name("frozen-sub"))
				cancel()
				if took := time.Since(frozen); err == nil || took > 2*time.Second {
					t.Fatalf("Subscribe on a frozen link: %v after %s, want its context's end (500ms)", err, took)
				}
			}
			select {
			case at := <-lost:
				t.Logf("%s: link frozen right after connecting, lost after %s (heartbeat 2s)", side, at.Sub(frozen).Round(time.Millisecond))
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: a link frozen right after connecting was not found out in 10s (heartbeat 2s)", side)
			}
		})
	}
}
