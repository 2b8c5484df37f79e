package core

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

var errTestCause = errors.New("test cause")

// A deadline less than a tick away is waited on by a timer of its own,
// without making a context; the context made once it fired has ended
// already, with the cause given.
func TestLazyDeadlineEndsAtItsDeadlineWithoutAContext(t *testing.T) {
	w := &waker{period: time.Hour}
	l := newLazyDeadline(context.Background(), w, time.Now().Add(20*time.Millisecond), errTestCause)
	defer l.release()
	ends := waitEndsOf(l, nil)
	if ends.expired == nil || ends.wake == nil || ends.ended != nil {
		t.Fatalf("waits on %+v, want a timer and the waker", ends)
	}
	select {
	case <-ends.wake:
		t.Fatal("woken with nothing aborted")
	case <-ends.expired:
	}
	if l.ctx != nil {
		t.Fatal("waiting made the context")
	}
	if err := l.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err() = %v, want DeadlineExceeded", err)
	}
	if cause := context.Cause(l); cause != errTestCause {
		t.Fatalf("Cause = %v, want %v", cause, errTestCause)
	}
	if !isDone(l.Done()) {
		t.Fatal("Done() not closed once its deadline passed")
	}
}

// A deadline farther than a tick arms no timer: the waker's ticks wake the
// wait, the deadline is looked at, and once it is less than a tick away
// its own timer ends the wait, at the deadline, not at a tick.
func TestLazyDeadlineFartherThanATickIsKeptToTheMoment(t *testing.T) {
	w := &waker{period: 30 * time.Millisecond}
	deadline := time.Now().Add(100 * time.Millisecond)
	l := newLazyDeadline(context.Background(), w, deadline, errTestCause)
	defer l.release()
	ends := waitEndsOf(l, nil)
	if ends.expired != nil {
		t.Fatal("a timer armed more than a tick before the deadline")
	}
	ticks := 0
	for expired := false; !expired; {
		select {
		case <-ends.wake:
			ticks++
			ends = waitEndsOf(l, nil)
		case <-ends.expired:
			expired = true
		}
	}
	if now := time.Now(); now.Before(deadline) {
		t.Fatalf("ended %v before its deadline", deadline.Sub(now))
	}
	if ticks == 0 {
		t.Fatal("the timer was armed without a tick in between")
	}
	if l.ctx != nil {
		t.Fatal("waiting made the context")
	}
	if !errors.Is(l.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err() = %v once the deadline passed, want DeadlineExceeded", l.Err())
	}
}

// An abort (Close giving up on the call) ends the wait at once, with the
// abort's cause, long before the deadline: the publisher pokes its waker
// once the abort's context ended, and no tick comes meanwhile.
func TestLazyDeadlineEndsWithItsAbort(t *testing.T) {
	abort, cancel := context.WithCancelCause(context.Background())
	w := &waker{period: time.Hour}
	l := newLazyDeadline(abort, w, time.Now().Add(2*time.Hour), errTestCause)
	defer l.release()
	ends := waitEndsOf(l, nil)
	if ends.expired != nil {
		t.Fatal("a timer armed more than a tick before the deadline")
	}
	cancel(ErrClosed)
	w.poke()
	<-ends.wake
	if !l.aborted() || l.ctx != nil {
		t.Fatal("not aborted once Close gave up, or a context made to tell")
	}
	if err := l.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err() = %v, want Canceled", err)
	}
	if cause := context.Cause(l); !errors.Is(cause, ErrClosed) {
		t.Fatalf("Cause = %v, want ErrClosed", cause)
	}
}

// Once made (something waited with it as a context), waits use its Done
// channel and the session's, and neither a timer nor the waker.
func TestLazyDeadlineMadeIsWaitedOnAsAContext(t *testing.T) {
	l := newLazyDeadline(context.Background(), &waker{}, time.Now().Add(time.Hour), errTestCause)
	defer l.release()
	if l.Err() != nil {
		t.Fatal("ended before its deadline")
	}
	dead := make(chan struct{})
	ends := waitEndsOf(l, dead)
	if ends.ended != l.Done() || ends.dead != dead || ends.expired != nil || ends.wake != nil {
		t.Fatalf("a made context is waited on by %+v, want its Done channel and the session's", ends)
	}
	if d, ok := l.Deadline(); !ok || !d.Equal(l.deadline) {
		t.Fatalf("Deadline() = %v, %v", d, ok)
	}
	l.release()
	if !errors.Is(l.Err(), context.Canceled) {
		t.Fatalf("after release, Err() = %v, want Canceled", l.Err())
	}
}

// A call whose messages the broker never confirms fails at PublishTimeout,
// the time-out named: on a live connection, with its topic declared, the
// call makes no context, and the lazy deadline's timer ends its wait.
func TestPublishTimeoutEndsACallNeverConfirmed(t *testing.T) {
	peer := newScriptedPeer(t)
	peer.silent = func(_ *peerLink, _ uint16, n uint64) bool { return n > 1 } // all but the first
	// Its first call declares the topic (a wait with the call's context).
	pub := newPeerPublisher(t, peer, Config[Wiring]{
		Channels:       1,
		ConfirmTimeout: time.Hour, // the call's bound, not the lane's, ends it
		PublishTimeout: 300 * time.Millisecond,
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("payload"))
	err := pub.Publish("orders", msg)
	var pe *PublishError
	if !errors.As(err, &pe) || len(pe.Unconfirmed) != 1 || pe.Unconfirmed[0] != msg.UUID {
		t.Fatalf("Publish = %v, want a PublishError naming %s", err, msg.UUID)
	}
	if !errors.Is(err, ErrNotConfirmed) || !errors.Is(err, errPublishTimeout) {
		t.Fatalf("Publish = %v, want ErrNotConfirmed for the publish timeout", err)
	}
}
