package core

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// leaderPeer answers queue.declare with consumers as the count of the
// queue's consumers, and basic.consume with consume-ok; it counts the
// declarations made after the first consume-ok (the probes). Once
// consuming, it leaves pulses (basic.qos) unanswered when darkAfterConsume.
func leaderPeer(t *testing.T, consumers func() uint32, darkAfterConsume ...bool) (*scriptedPeer, *atomic.Int32) {
	const classQueue = 50
	peer := newScriptedPeer(t)
	var consuming atomic.Bool
	var probes atomic.Int32
	peer.onMethod = func(l *peerLink, channel, class, method uint16) bool {
		switch {
		case class == classQueue && method == 10: // queue.declare: declare-ok
			if consuming.Load() {
				probes.Add(1)
			}
			l.send(channel, classQueue, 11, shortstr("q"), u32(0), u32(consumers()))
			return true
		case class == classBasic && method == 20: // basic.consume: consume-ok
			consuming.Store(true)
			l.send(channel, classBasic, 21, shortstr("ctag"))
			return true
		case class == classBasic && method == 10: // basic.qos
			return consuming.Load() && len(darkAfterConsume) > 0 && darkAfterConsume[0] // unanswered
		}
		return false
	}
	return peer, &probes
}

func quorumSubscriber(t *testing.T, peer *scriptedPeer, changes chan StateChange) *Subscriber {
	return probingSubscriber(t, peer, changes, amqp091.Table{"x-queue-type": "quorum"}, 0)
}

// probingSubscriber is a subscriber of a queue declared with args, with
// another URI to go to, and heartbeat (0: the default).
func probingSubscriber(t *testing.T, peer *scriptedPeer, changes chan StateChange, args amqp091.Table, heartbeat time.Duration) *Subscriber {
	t.Helper()
	w := peerWiring(peer)
	w.QueueArguments = args
	w.BuildTopology = func(ch *amqp091.Channel, _, queue, _ string, _ watermill.LoggerAdapter) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, w.QueueArguments)
		return err
	}
	var once sync.Once
	sub, err := NewSubscriber(Config[Wiring]{
		FailoverURIs: []string{"amqp://guest:guest@peer2:5672/"},
		Heartbeat:    heartbeat,
		Reconnect:    Backoff{InitialWait: 10 * time.Millisecond, MaxWait: 10 * time.Millisecond},
		OnStateChange: func(c StateChange) {
			select {
			case changes <- c:
			default:
				once.Do(func() { t.Log("state changes dropped") })
			}
		},
	}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// A consumer of a quorum queue whose node counts no consumer of it,
// unseenInARow probes in a row, while it is attached and has had no
// delivery, leaves the node: the leader is out of reach.
func TestConsumerLeavesANodeThatCannotSeeIt(t *testing.T) {
	t.Parallel()
	peer, probes := leaderPeer(t, func() uint32 { return 0 })
	changes := make(chan StateChange, 16)
	sub := quorumSubscriber(t, peer, changes)
	subscribeConnected(t, peer, sub, changes)
	expectChange(t, changes, StateConnected, StateReconnecting, "leader is out of reach")
	if n := probes.Load(); n != unseenInARow {
		t.Fatalf("left after %d probes, want %d", n, unseenInARow)
	}
	peer.next(t) // and connects again
	expectChange(t, changes, StateReconnecting, StateConnected, "")
	// Where no node counts it (a queue with no leader anywhere), it stays
	// on the next node: unseenInARow more probes there, and no change.
	if n := awaitProbes(probes, 2*unseenInARow); n < 2*unseenInARow {
		t.Fatalf("%d probes in all: the consumer stopped probing on its next node", n)
	}
	select {
	case c := <-changes:
		t.Fatalf("it left its next node too (%s -> %s: %v): it would hop from node to node", c.From, c.To, c.Err)
	default:
	}
}

// subscribeConnected waits for sub's connection to the peer, then
// subscribes to "q" until the test ends.
func subscribeConnected(t *testing.T, peer *scriptedPeer, sub *Subscriber, changes <-chan StateChange) {
	t.Helper()
	peer.next(t)
	expectChange(t, changes, StateConnecting, StateConnected, "")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := sub.Subscribe(ctx, "q"); err != nil {
		t.Fatal(err)
	}
}

// awaitProbes waits, 30 s at most, until the peer counted n probes, and
// returns how many it counted.
func awaitProbes(probes *atomic.Int32, n int32) int32 {
	deadline := time.Now().Add(30 * time.Second)
	for probes.Load() < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond) // polling a counter the peer bumps
	}
	return probes.Load()
}

// One that the node counts stays, its probes further and further apart.
func TestConsumerSeenStays(t *testing.T) {
	t.Parallel()
	peer, probes := leaderPeer(t, func() uint32 { return 1 })
	changes := make(chan StateChange, 16)
	sub := quorumSubscriber(t, peer, changes)
	subscribeConnected(t, peer, sub, changes)
	// Idle from about 0 s: probes at about 0.5, 1.5 and 3.5 s, then 7.5 s.
	awaitProbes(probes, 3)
	start := time.Now()
	if n, gap := awaitProbes(probes, 4), time.Since(start); n < 4 || gap < 3*time.Second {
		t.Fatalf("%d probes; the third to the fourth took %s, want about 4 s: probes back off while the consumer is seen", n, gap)
	}
	select {
	case c := <-changes:
		t.Fatalf("a seen consumer's connection changed: %s -> %s (%v)", c.From, c.To, c.Err)
	default:
	}
}

// An idle consumer of any queue asks for a pulse: a link gone dark is cut
// within the pulse's bound, not at the next heartbeat's pulse (none comes
// within the test: the heartbeat is 10 minutes).
func TestIdleConsumerFindsADarkLink(t *testing.T) {
	t.Parallel()
	peer, _ := leaderPeer(t, func() uint32 { return 1 }, true)
	changes := make(chan StateChange, 16)
	sub := probingSubscriber(t, peer, changes, nil, 10*time.Minute)
	subscribeConnected(t, peer, sub, changes)
	expectChange(t, changes, StateConnected, StateReconnecting, "no reply to a pulse")
	peer.next(t)
}
