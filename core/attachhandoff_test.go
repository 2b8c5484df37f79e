package core

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// An attach the broker does not answer is given up on within its bound,
// and the subscription attaches on a fresh channel; when the first attach
// is answered after all, its channel is closed, and no ConsumerLost is
// reported for it: it was never the subscription's consumer (markStarted
// is only for the one open hands over, so that a late consumer whose
// channel the broker closes at once is not reported either; the scripted
// peer's net.Pipe cannot carry that crossing of closes without a
// deadlock of its own).
func TestStalledAttachIsGivenUpOn(t *testing.T) {
	const classQueue = 50
	peer := newScriptedPeer(t)
	var mu sync.Mutex
	var consumes []uint16 // channels of the basic.consume calls, in order
	closedFirst := make(chan struct{})
	peer.onMethod = func(l *peerLink, channel, class, method uint16) bool {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case class == classQueue && method == 10: // queue.declare: declare-ok
			l.send(channel, classQueue, 11, shortstr("q"), u32(0), u32(0))
			return true
		case class == classBasic && method == 20: // basic.consume
			consumes = append(consumes, channel)
			if len(consumes) == 1 {
				return true // unanswered, for now
			}
			l.send(channel, classBasic, 21, shortstr("ctag"))
			l.send(consumes[0], classBasic, 21, shortstr("late")) // the first, answered at last
			return true
		case class == classChannel && method == 40 && len(consumes) > 0 && channel == consumes[0]:
			l.send(channel, classChannel, 41) // close-ok
			close(closedFirst)
			return true
		}
		return false
	}
	w := peerWiring(peer)
	w.BuildTopology = func(ch *amqp091.Channel, _, queue, _ string, _ watermill.LoggerAdapter) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}
	var lost sync.Mutex
	lostCount := 0
	sub, err := NewSubscriber(Config[Wiring]{
		ConfirmTimeout: 4 * time.Second, // an attach's bound: 1 s
		Reconnect:      Backoff{InitialWait: 10 * time.Millisecond, MaxWait: 10 * time.Millisecond},
		OnEvent: func(e Event) {
			if e.Kind == ConsumerLost {
				lost.Lock()
				lostCount++
				lost.Unlock()
			}
		},
	}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	peer.next(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := sub.Subscribe(ctx, "q"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closedFirst:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled attach's consumer was not closed once answered")
	}
	cancel()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(consumes) != 2 {
		t.Fatalf("%d basic.consume calls, want 2: the stalled one and the fresh one", len(consumes))
	}
	lost.Lock()
	defer lost.Unlock()
	if lostCount != 0 {
		t.Fatalf("ConsumerLost reported %d times for a consumer given up on", lostCount)
	}
}

// The bound of an attach is the stall bound, doubled per attach given up
// on that the broker answered after all (a slow broker), at most the bound
// of a reply; attaches still unanswered (a stuck one) do not count.
func TestAttachBound(t *testing.T) {
	sess := &session{cfg: &settings{Config[Wiring]{ConfirmTimeout: 15 * time.Second, Heartbeat: 10 * time.Second}}}
	for late, want := range []time.Duration{3750 * time.Millisecond, 7500 * time.Millisecond, 15 * time.Second, 20 * time.Second, 20 * time.Second} {
		if got := attachBound(sess, late); got != want {
			t.Errorf("after %d late answers: %s, want %s", late, got, want)
		}
	}
}
