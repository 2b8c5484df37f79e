package decorate_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/resilientmq/watermill-rabbitmq/decorate"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// errNotConnected is what watermill-amqp's publisher returns while down.
var errNotConnected = errors.New("not connected to AMQP")

// failWhileDown makes the fake fail, as watermill-amqp's publisher does,
// when it is called while its connection is down.
func failWhileDown(f *connFake, n int) []func([]*message.Message) error {
	s := make([]func([]*message.Message) error, n)
	for i := range s {
		s[i] = func([]*message.Message) error {
			if !f.up.Load() {
				return errNotConnected
			}
			return nil
		}
	}
	return s
}

func TestReconnectPollsUntilConnected(t *testing.T) {
	fake := newConnFake(false)
	fake.script = failWhileDown(fake, 10)
	var waits []error
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{
		PollInterval: time.Millisecond,
		OnWait:       func(_ time.Duration, err error) { waits = append(waits, err) },
	}), fake)

	done := make(chan error, 1)
	go func() { done <- pub.Publish("t", newMessages(2)...) }()
	// Reconnect asks at once, then polls: wait for a poll, then connect.
	<-fake.askedDown
	<-fake.askedDown
	fake.up.Store(true)
	if err := <-done; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if n := len(fake.Calls()); n != 1 {
		t.Fatalf("%d publishes, want 1 (after the connection came back)", n)
	}
	if len(waits) != 1 || waits[0] != nil {
		t.Fatalf("OnWait got %v, want one successful wait", waits)
	}
}

func TestReconnectUsesWaitConnected(t *testing.T) {
	fake := newWaitFake()
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{}), fake)
	done := make(chan error, 1)
	go func() { done <- pub.Publish("t", newMessages(1)...) }()
	<-fake.waiting
	fake.connect()
	if err := <-done; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if fake.waits.Load() != 1 || len(fake.Calls()) != 1 {
		t.Fatalf("%d WaitConnected, %d publishes; want 1, 1", fake.waits.Load(), len(fake.Calls()))
	}
}

func TestReconnectConnectedPublishesAtOnce(t *testing.T) {
	fake := newConnFake(true)
	var waited atomic.Int32
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{
		OnWait: func(time.Duration, error) { waited.Add(1) },
	}), fake)
	if err := pub.Publish("t", newMessages(1)...); err != nil {
		t.Fatal(err)
	}
	if waited.Load() != 0 || len(fake.Calls()) != 1 {
		t.Fatalf("%d waits, %d publishes; want 0, 1", waited.Load(), len(fake.Calls()))
	}
}

func TestReconnectMessageContextEndsWait(t *testing.T) {
	for name, fake := range map[string]interface {
		message.Publisher
		Calls() [][]string
	}{
		"polling": newConnFake(false),
		"waiting": newWaitFake(),
	} {
		t.Run(name, func(t *testing.T) {
			pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{MaxWait: time.Hour}), fake)
			ctx, cancel := context.WithCancel(context.Background())
			msgs := newMessages(2)
			msgs[0].SetContext(ctx)
			done := make(chan error, 1)
			go func() { done <- pub.Publish("t", msgs...) }()
			switch f := fake.(type) {
			case *connFake:
				<-f.askedDown
			case *waitFake:
				<-f.waiting
			}
			cancel()
			err := <-done
			if !errors.Is(err, decorate.ErrNotConnected) || !errors.Is(err, context.Canceled) {
				t.Fatalf("Publish returned %v, want ErrNotConnected and context.Canceled", err)
			}
			if n := len(fake.Calls()); n != 0 {
				t.Fatalf("%d publishes, want none", n)
			}
		})
	}
}

func TestReconnectMaxWaitPublishesAnyway(t *testing.T) {
	fake := newConnFake(false)
	fake.script = failWhileDown(fake, 1)
	var waitErr = errors.New("OnWait not called")
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{
		MaxWait: 10 * time.Millisecond, PollInterval: time.Millisecond,
		OnWait: func(_ time.Duration, err error) { waitErr = err },
	}), fake)
	err := pub.Publish("t", newMessages(1)...)
	if !errors.Is(err, errNotConnected) || len(fake.Calls()) != 1 {
		t.Fatalf("err %v after %d publishes; want the publisher's own error after 1", err, len(fake.Calls()))
	}
	if waitErr != nil {
		t.Fatalf("OnWait got %v, want nil (the publish was let through)", waitErr)
	}
}

func TestReconnectCloseEndsWait(t *testing.T) {
	fake := newConnFake(false)
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{MaxWait: time.Hour}), fake)
	done := make(chan error, 1)
	go func() { done <- pub.Publish("t", newMessages(1)...) }()
	<-fake.askedDown
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, decorate.ErrNotConnected) || len(fake.Calls()) != 0 {
		t.Fatalf("err %v after %d publishes; want ErrNotConnected after 0", err, len(fake.Calls()))
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectWaitErrorIsReturned(t *testing.T) {
	// A waiter that says it is closed (resilient.Publisher's ErrClosed) ends
	// the wait with its error, which Retry takes as permanent.
	fake := &closedWaiter{}
	var attempts int
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{}), fake)
	pub = wrap(t, decorate.Retry(decorate.RetryConfig{OnGiveUp: func(n int, _ error) { attempts = n }}), pub)
	err := pub.Publish("t", newMessages(1)...)
	if !errors.Is(err, resilient.ErrClosed) || attempts != 1 || len(fake.Calls()) != 0 {
		t.Fatalf("err %v, %d attempts, %d publishes; want ErrClosed, 1, 0", err, attempts, len(fake.Calls()))
	}
}

type closedWaiter struct{ fakePublisher }

func (*closedWaiter) IsConnected() bool                   { return false }
func (*closedWaiter) WaitConnected(context.Context) error { return resilient.ErrClosed }

func TestReconnectDoesNotWaitForAClosedPublisher(t *testing.T) {
	fake := &closedFake{connFake: newConnFake(false)}
	fake.script = []func([]*message.Message) error{fail(errors.New("pub/sub is closed"))}
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{MaxWait: time.Hour}), fake)
	if err := pub.Publish("t", newMessages(1)...); err == nil || len(fake.Calls()) != 1 {
		t.Fatalf("err %v after %d publishes; want the publisher's error after 1", err, len(fake.Calls()))
	}
}

// closedFake reports Closed() like watermill-amqp's ConnectionWrapper.
type closedFake struct{ *connFake }

func (*closedFake) Closed() bool { return true }

func TestReconnectWithoutReporterIsTransparent(t *testing.T) {
	gc := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{}), gc)
	defer pub.Close()
	if err := pub.Publish("t", newMessages(1)...); err != nil {
		t.Fatal(err)
	}
}

func TestRetryOverReconnect(t *testing.T) {
	// The stack the package recommends: the connection drops for a while; the
	// attempts made while it is down wait instead of failing, so few are
	// spent however long it stays down.
	fake := newConnFake(true)
	fake.script = append(failN(1, errNotConnected), failWhileDown(fake, 10)...)
	fake.up.Store(false)
	var retries int
	pub := wrap(t, decorate.Reconnect(decorate.ReconnectConfig{PollInterval: time.Millisecond, MaxWait: time.Hour}), fake)
	pub = wrap(t, decorate.Retry(decorate.RetryConfig{
		InitialInterval: time.Millisecond, MaxAttempts: 3,
		OnRetry: func(int, error, time.Duration) { retries++ },
	}), pub)

	done := make(chan error, 1)
	go func() { done <- pub.Publish("t", newMessages(1)...) }()
	for range 20 { // twenty polls while down: many more than MaxAttempts
		<-fake.askedDown
	}
	fake.up.Store(true)
	if err := <-done; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if retries > 2 {
		t.Fatalf("%d retries spent while the connection was down", retries)
	}
}
