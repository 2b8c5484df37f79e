package core

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

var errTestCause = errors.New("test cause")

// Waiting makes no context: the wait ends at the deadline by a timer, and
// the context made then has ended already, with the cause given.
func TestLazyDeadlineEndsAtItsDeadlineWithoutAContext(t *testing.T) {
	l := newLazyDeadline(context.Background(), time.Now().Add(20*time.Millisecond), errTestCause)
	defer l.release()
	ended, expired := l.waitOn()
	if expired == nil {
		t.Fatal("no timer to wait on")
	}
	select {
	case <-ended:
		t.Fatal("ended before its deadline, with nothing aborted")
	case <-expired:
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

// An abort (Close giving up on the call) ends the wait at once, with the
// abort's cause, long before the deadline.
func TestLazyDeadlineEndsWithItsAbort(t *testing.T) {
	abort, cancel := context.WithCancelCause(context.Background())
	l := newLazyDeadline(abort, time.Now().Add(time.Hour), errTestCause)
	defer l.release()
	ended, _ := l.waitOn()
	cancel(ErrClosed)
	<-ended
	if err := l.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err() = %v, want Canceled", err)
	}
	if cause := context.Cause(l); !errors.Is(cause, ErrClosed) {
		t.Fatalf("Cause = %v, want ErrClosed", cause)
	}
}

// Once made (something waited with it as a context), waits use its Done
// channel, and no timer.
func TestLazyDeadlineMadeIsWaitedOnAsAContext(t *testing.T) {
	l := newLazyDeadline(context.Background(), time.Now().Add(time.Hour), errTestCause)
	defer l.release()
	if l.Err() != nil {
		t.Fatal("ended before its deadline")
	}
	ended, expired := waitChannels(l)
	if ended != l.Done() || expired != nil {
		t.Fatal("a made context is not waited on by its Done channel alone")
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
	w := peerWiring(peer)
	w.BuildTopology = func(*amqp091.Channel, string, string, string, watermill.LoggerAdapter) error { return nil }
	pub, err := NewPublisher(Config[Wiring]{
		Channels:       1,
		ConfirmTimeout: time.Hour, // the call's bound, not the lane's, ends it
		PublishTimeout: 300 * time.Millisecond,
	}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	peer.next(t)

	// The first declares the topic (a wait with the call's context).
	if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("first"))); err != nil {
		t.Fatalf("first Publish: %v", err)
	}
	msg := message.NewMessage(watermill.NewUUID(), []byte("payload"))
	err = pub.Publish("orders", msg)
	var pe *PublishError
	if !errors.As(err, &pe) || len(pe.Unconfirmed) != 1 || pe.Unconfirmed[0] != msg.UUID {
		t.Fatalf("Publish = %v, want a PublishError naming %s", err, msg.UUID)
	}
	if !errors.Is(err, ErrNotConfirmed) || !errors.Is(err, errPublishTimeout) {
		t.Fatalf("Publish = %v, want ErrNotConfirmed for the publish timeout", err)
	}
}
