package decorate_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/resilientmq/watermill-rabbitmq/decorate"
)

func TestTimeoutBoundsPublishAndRestoresContexts(t *testing.T) {
	fake := &fakePublisher{script: []func([]*message.Message) error{blockUntilDone}}
	pub := wrap(t, decorate.Timeout(10*time.Millisecond), fake)
	msgs := newMessages(2)
	type key struct{}
	parent := context.WithValue(context.Background(), key{}, "kept")
	msgs[0].SetContext(parent)

	err := pub.Publish("t", msgs...)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish returned %v, want DeadlineExceeded", err)
	}
	if msgs[0].Context() != parent || msgs[1].Context().Done() != nil {
		t.Fatal("the messages' contexts were not put back")
	}
}

func TestTimeoutKeepsValuesAndSoonerDeadlines(t *testing.T) {
	type key struct{}
	soon := time.Now().Add(time.Minute)
	parent, cancel := context.WithDeadline(context.WithValue(context.Background(), key{}, "v"), soon)
	defer cancel()
	var gotDeadline time.Time
	var gotValue any
	var shared bool
	fake := &fakePublisher{script: []func([]*message.Message) error{func(msgs []*message.Message) error {
		gotDeadline, _ = msgs[0].Context().Deadline()
		gotValue = msgs[0].Context().Value(key{})
		shared = msgs[0].Context() == msgs[1].Context()
		return nil
	}}}
	msgs := newMessages(2)
	msgs[0].SetContext(parent)
	msgs[1].SetContext(parent)
	if err := wrap(t, decorate.Timeout(time.Hour), fake).Publish("t", msgs...); err != nil {
		t.Fatal(err)
	}
	if !gotDeadline.Equal(soon) || gotValue != "v" || !shared {
		t.Fatalf("deadline %v (want %v), value %v, shared %v", gotDeadline, soon, gotValue, shared)
	}
}

func TestTimeoutUnderRetryBoundsEachAttempt(t *testing.T) {
	// The first attempt hangs until its deadline; Retry tries again and the
	// second succeeds: a per-attempt deadline is not the caller's.
	fake := &fakePublisher{script: []func([]*message.Message) error{blockUntilDone}}
	pub := wrap(t, decorate.Timeout(10*time.Millisecond), fake)
	pub = wrap(t, decorate.Retry(fast()), pub)
	if err := pub.Publish("t", newMessages(1)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if n := len(fake.Calls()); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
}

func TestTimeoutOverRetryBoundsTheCall(t *testing.T) {
	// Every attempt hangs until the message's deadline: Timeout above Retry
	// is the deadline of the whole call, and Retry stops there.
	fake := &fakePublisher{script: []func([]*message.Message) error{blockUntilDone, blockUntilDone, blockUntilDone}}
	var gaveUp int
	cfg := fast()
	cfg.MaxAttempts = -1
	cfg.OnGiveUp = func(n int, _ error) { gaveUp = n }
	pub := wrap(t, decorate.Retry(cfg), fake)
	pub = wrap(t, decorate.Timeout(10*time.Millisecond), pub)
	err := pub.Publish("t", newMessages(1)...)
	if !errors.Is(err, context.DeadlineExceeded) || gaveUp != 1 || len(fake.Calls()) != 1 {
		t.Fatalf("err %v, gave up after %d, %d attempts; want DeadlineExceeded after 1", err, gaveUp, len(fake.Calls()))
	}
}

func TestTimeoutRejectsNonPositive(t *testing.T) {
	if _, err := decorate.Timeout(0)(&fakePublisher{}); err == nil {
		t.Fatal("Timeout(0) accepted")
	}
}

func TestMetrics(t *testing.T) {
	fake := &fakePublisher{script: failN(1, errTransient)}
	var got []decorate.PublishResult
	pub := wrap(t, decorate.Metrics(func(r decorate.PublishResult) { got = append(got, r) }), fake)
	_ = pub.Publish("a", newMessages(3)...)
	_ = pub.Publish("b", newMessages(1)...)
	if len(got) != 2 || got[0].Topic != "a" || got[0].Messages != 3 || !errors.Is(got[0].Err, errTransient) ||
		got[1].Topic != "b" || got[1].Messages != 1 || got[1].Err != nil {
		t.Fatalf("observed %+v", got)
	}
	if _, err := decorate.Metrics(nil)(&fakePublisher{}); err == nil {
		t.Fatal("Metrics(nil) accepted")
	}
}
