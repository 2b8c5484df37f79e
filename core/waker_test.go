package core

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// A waker's channel is the same for every waiter until it closes: at a
// poke, at once, or at its tick; the next one is a new channel, open.
func TestWakerClosesItsChannelAtAPokeAndAtItsTick(t *testing.T) {
	w := &waker{period: time.Hour}
	first := w.next().c
	if w.next().c != first {
		t.Fatal("two waiters of one tick got different channels")
	}
	w.poke()
	if !isDone(first) {
		t.Fatal("a poke did not close the channel")
	}
	second := w.next().c
	if isDone(second) {
		t.Fatal("the channel after a poke is closed already")
	}
	w.poke()
	w.poke() // nothing armed: nothing to close, no panic

	w = &waker{period: 10 * time.Millisecond}
	armed := time.Now()
	tick := w.next()
	if tick.at.Before(armed.Add(10 * time.Millisecond)) {
		t.Fatalf("a tick due %v after it was armed, want its period", tick.at.Sub(armed))
	}
	ticked := tick.c
	<-ticked // closed by its tick alone: a test that hangs here failed
	if now := time.Now(); now.Before(tick.at) {
		t.Fatalf("the tick came %v before it was due", tick.at.Sub(now))
	}
	if next := w.next().c; next == ticked || isDone(next) {
		t.Fatal("after a tick, the next channel is not a new, open one")
	}
	w.poke()
}

// A tick whose channel was replaced (poked, then another taken) closes
// nothing: only the channel it was armed for.
func TestWakerTickClosesOnlyItsOwnChannel(t *testing.T) {
	w := &waker{period: time.Hour}
	stale := w.next()
	w.poke()
	current := w.next().c
	w.close(stale)
	if isDone(current) {
		t.Fatal("a stale tick closed the current channel")
	}
	w.poke()
}

// Close, giving up on a call waiting for a confirm that never comes, wakes
// it at once: the publisher pokes its waker. The waker's tick is an hour
// here: without the poke, the call, and Close waiting for it, would hang.
func TestCloseWakesACallWaitingForItsConfirm(t *testing.T) {
	peer := newScriptedPeer(t)
	sent := make(chan struct{})
	peer.silent = func(_ *peerLink, _ uint16, n uint64) bool {
		if n == 2 {
			close(sent)
		}
		return n > 1
	}
	pub := newPeerPublisher(t, peer, Config[Wiring]{
		Channels:       1,
		ConfirmTimeout: time.Hour,
		PublishTimeout: 2 * time.Hour,
		CloseTimeout:   50 * time.Millisecond,
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("never confirmed"))
	published := make(chan error, 1)
	go func() { published <- pub.Publish("orders", msg) }()
	<-sent
	closed := make(chan error, 1)
	go func() { closed <- pub.Close() }()
	err := awaitResult(t, published, "Publish, after Close gave up on it")
	if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("Publish = %v, want ErrNotConfirmed for ErrClosed", err)
	}
	var pe *PublishError
	if err := awaitResult(t, closed, "Close"); !errors.As(err, &pe) || len(pe.Unconfirmed) != 1 || pe.Unconfirmed[0] != msg.UUID {
		t.Fatalf("Close = %v, want a PublishError naming %s", err, msg.UUID)
	}
}

// The end of a session wakes a call whose message its lane never claimed
// (the lane's one slot was taken): the session pokes the waker once it is
// dead, and the call sends the message again on the next connection. The
// waker's tick is an hour here: without the poke, the call would hang.
func TestSessionEndWakesACallItsLaneNeverClaimed(t *testing.T) {
	peer := newScriptedPeer(t)
	inFlight := make(chan struct{})
	peer.silent = func(l *peerLink, _ uint16, n uint64) bool {
		if l.index == 0 && n == 2 {
			close(inFlight)
		}
		return l.index == 0 && n > 1 // the first connection confirms its first message only
	}
	pub := newPeerPublisher(t, peer, Config[Wiring]{
		Channels:       1,
		MaxInFlight:    1,
		ConfirmTimeout: time.Hour,
		PublishTimeout: 2 * time.Hour,
		Reconnect:      Backoff{InitialWait: time.Millisecond, MaxWait: 10 * time.Millisecond},
	})
	peer.mu.Lock()
	first := peer.links[0]
	peer.mu.Unlock()

	claimed := make(chan error, 1)
	go func() { claimed <- pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("in flight"))) }()
	<-inFlight
	queued := make(chan error, 1)
	go func() { queued <- pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("queued"))) }()
	waitUntil(t, "the second message queued for the lane, unclaimed", func() bool {
		pub.sup.mu.Lock()
		defer pub.sup.mu.Unlock()
		return pub.sup.current != nil && len(pub.sup.current.pub.lanes[0].queue) == 1
	})

	_ = first.conn.Close() // the connection is lost
	if err := awaitResult(t, claimed, "the Publish of the message in flight"); err != nil {
		t.Fatalf("Publish of the message in flight = %v, want nil (sent again)", err)
	}
	if err := awaitResult(t, queued, "the Publish of the message never claimed"); err != nil {
		t.Fatalf("Publish of the message never claimed = %v, want nil (sent again)", err)
	}
}

// newPeerPublisher is a Publisher on peer whose waker ticks once an hour,
// with its topic declared and a first message confirmed: a call after it
// takes the path every call takes on a live connection.
func newPeerPublisher(t *testing.T, peer *scriptedPeer, cfg Config[Wiring]) *Publisher {
	t.Helper()
	pub, err := NewPublisher(cfg, peerPublisherWiring(peer), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		closed := make(chan error, 1)
		go func() { closed <- pub.Close() }()
		awaitResult(t, closed, "Close") // a test that failed may leave a call hanging
	})
	pub.wake.period = time.Hour // before any call: then only a poke wakes
	peer.next(t)
	if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("first"))); err != nil {
		t.Fatalf("first Publish: %v", err)
	}
	return pub
}

// awaitResult is what c gives, failing the test if nothing comes in 10 s:
// what is awaited hangs.
func awaitResult(t *testing.T, c <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still waiting after 10 s", what)
		return nil
	}
}

// waitUntil polls cond, which no event announces, for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after 10 s", what)
		}
	}
}
