package decorate_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/cenkalti/backoff/v5"

	"github.com/resilientmq/watermill-rabbitmq/decorate"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// retryEvents records the hooks of a Retry.
type retryEvents struct {
	retries []time.Duration // the waits, by attempt
	errs    []error
	gaveUp  int // attempts reported by OnGiveUp, 0 if not called
	lastErr error
}

func (e *retryEvents) config(cfg decorate.RetryConfig) decorate.RetryConfig {
	cfg.OnRetry = func(attempt int, err error, wait time.Duration) {
		if attempt != len(e.retries)+1 {
			panic(fmt.Sprintf("OnRetry attempt %d after %d retries", attempt, len(e.retries)))
		}
		e.retries = append(e.retries, wait)
		e.errs = append(e.errs, err)
	}
	cfg.OnGiveUp = func(attempts int, err error) { e.gaveUp, e.lastErr = attempts, err }
	return cfg
}

// fast keeps the unit tests quick: waits of a millisecond.
func fast() decorate.RetryConfig {
	return decorate.RetryConfig{InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond}
}

func wrap(t *testing.T, dec message.PublisherDecorator, pub message.Publisher) message.Publisher {
	t.Helper()
	out, err := dec(pub)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRetryTransientThenSuccess(t *testing.T) {
	fake := &fakePublisher{script: failN(3, errTransient)}
	var ev retryEvents
	pub := wrap(t, decorate.Retry(ev.config(fast())), fake)

	if err := pub.Publish("t", newMessages(2)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if n := len(fake.Calls()); n != 4 {
		t.Fatalf("%d attempts, want 4 (3 failures, then success)", n)
	}
	if len(ev.retries) != 3 || ev.gaveUp != 0 {
		t.Fatalf("OnRetry %d times, OnGiveUp after %d attempts; want 3 retries, no give-up", len(ev.retries), ev.gaveUp)
	}
	for _, err := range ev.errs {
		if !errors.Is(err, errTransient) {
			t.Fatalf("OnRetry got %v", err)
		}
	}
}

func TestRetryBackoffGrowsWithJitter(t *testing.T) {
	cfg := decorate.RetryConfig{
		InitialInterval: time.Millisecond, MaxInterval: 8 * time.Millisecond,
		Multiplier: 2, RandomizationFactor: 0.5, MaxAttempts: 7,
	}
	fake := &fakePublisher{script: failN(100, errTransient)}
	var ev retryEvents
	pub := wrap(t, decorate.Retry(ev.config(cfg)), fake)
	if err := pub.Publish("t", newMessages(1)...); err == nil {
		t.Fatal("Publish succeeded against a publisher that always fails")
	}
	if len(ev.retries) != 6 {
		t.Fatalf("%d waits, want 6 (7 attempts)", len(ev.retries))
	}
	distinct := map[time.Duration]bool{}
	for i, wait := range ev.retries {
		nominal := float64(time.Millisecond) * math.Pow(2, float64(i))
		nominal = math.Min(nominal, float64(8*time.Millisecond))
		if lo, hi := time.Duration(nominal*0.5), time.Duration(nominal*1.5); wait < lo || wait > hi {
			t.Errorf("wait %d = %s, outside [%s, %s]", i+1, wait, lo, hi)
		}
		distinct[wait] = true
	}
	if len(distinct) < 2 {
		t.Errorf("waits %v: no jitter", ev.retries)
	}
}

func TestRetryPermanentErrorsAreNotRetried(t *testing.T) {
	for name, err := range map[string]error{
		"typed sentinel":    fmt.Errorf("declare: %w", resilient.ErrAccessRefused),
		"context.Canceled":  fmt.Errorf("publish: %w", context.Canceled),
		"not temporary":     &resilient.PublishError{Topic: "t", Unconfirmed: []string{"a"}, Err: resilient.ErrNotFound},
		"closed publisher":  resilient.ErrClosed,
		"backoff.Permanent": backoff.Permanent(resilient.ErrMarshal),
	} {
		t.Run(name, func(t *testing.T) {
			fake := &fakePublisher{script: failN(5, err)}
			var ev retryEvents
			pub := wrap(t, decorate.Retry(ev.config(fast())), fake)
			got := pub.Publish("t", newMessages(1)...)
			if len(fake.Calls()) != 1 || len(ev.retries) != 0 {
				t.Fatalf("%d attempts, %d retries for a permanent error; want 1, 0", len(fake.Calls()), len(ev.retries))
			}
			if !errors.Is(got, err) && !errors.Is(got, resilient.ErrMarshal) {
				t.Fatalf("Publish returned %v, want it to wrap %v", got, err)
			}
			if ev.gaveUp != 1 {
				t.Fatalf("OnGiveUp after %d attempts, want 1", ev.gaveUp)
			}
		})
	}
}

func TestRetryNeverLeaksBackoffPermanentError(t *testing.T) {
	// Whatever the wrapped publisher returns, Retry's own errors never carry
	// backoff's wrapper; one the publisher returned is passed through as is.
	fake := &fakePublisher{script: failN(10, errTransient)}
	pub := wrap(t, decorate.Retry(decorate.RetryConfig{InitialInterval: time.Millisecond, MaxInterval: time.Millisecond, MaxAttempts: 3}), fake)
	err := pub.Publish("t", newMessages(1)...)
	var pe *backoff.PermanentError
	if err == nil || errors.As(err, &pe) {
		t.Fatalf("Publish returned %#v", err)
	}
}

func TestRetryClassify(t *testing.T) {
	errMine := errors.New("mine: quota exceeded")
	classify := func(err error) decorate.Decision {
		switch {
		case errors.Is(err, errMine):
			return decorate.Permanent
		case errors.Is(err, resilient.ErrUnroutable):
			return decorate.Transient // a binding is on its way
		}
		return decorate.Undecided
	}
	t.Run("permanent", func(t *testing.T) {
		fake := &fakePublisher{script: failN(3, errMine)}
		cfg := fast()
		cfg.Classify = classify
		err := wrap(t, decorate.Retry(cfg), fake).Publish("t", newMessages(1)...)
		if !errors.Is(err, errMine) || len(fake.Calls()) != 1 {
			t.Fatalf("err %v after %d attempts; want errMine after 1", err, len(fake.Calls()))
		}
	})
	t.Run("transient overrides built-in", func(t *testing.T) {
		fake := &fakePublisher{script: failN(2, resilient.ErrUnroutable)}
		cfg := fast()
		cfg.Classify = classify
		if err := wrap(t, decorate.Retry(cfg), fake).Publish("t", newMessages(1)...); err != nil || len(fake.Calls()) != 3 {
			t.Fatalf("err %v after %d attempts; want success after 3", err, len(fake.Calls()))
		}
	})
	t.Run("undecided falls back", func(t *testing.T) {
		fake := &fakePublisher{script: append(failN(1, errTransient), fail(resilient.ErrNotFound))}
		cfg := fast()
		cfg.Classify = classify
		err := wrap(t, decorate.Retry(cfg), fake).Publish("t", newMessages(1)...)
		if !errors.Is(err, resilient.ErrNotFound) || len(fake.Calls()) != 2 {
			t.Fatalf("err %v after %d attempts; want ErrNotFound after 2", err, len(fake.Calls()))
		}
	})
}

func TestRetryMaxAttempts(t *testing.T) {
	fake := &fakePublisher{script: failN(100, errTransient)}
	var ev retryEvents
	cfg := fast()
	cfg.MaxAttempts = 4
	err := wrap(t, decorate.Retry(ev.config(cfg)), fake).Publish("t", newMessages(1)...)
	if !errors.Is(err, errTransient) {
		t.Fatalf("Publish returned %v", err)
	}
	if len(fake.Calls()) != 4 || ev.gaveUp != 4 || !errors.Is(ev.lastErr, errTransient) {
		t.Fatalf("%d attempts, OnGiveUp(%d, %v); want 4 attempts, OnGiveUp(4, errTransient)", len(fake.Calls()), ev.gaveUp, ev.lastErr)
	}
}

func TestRetryMaxElapsedTime(t *testing.T) {
	fake := &fakePublisher{script: failN(10000, errTransient)}
	var ev retryEvents
	cfg := decorate.RetryConfig{
		InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond,
		MaxAttempts: -1, MaxElapsedTime: 100 * time.Millisecond,
	}
	err := wrap(t, decorate.Retry(ev.config(cfg)), fake).Publish("t", newMessages(1)...)
	if !errors.Is(err, errTransient) || ev.gaveUp == 0 {
		t.Fatalf("Publish returned %v, OnGiveUp after %d", err, ev.gaveUp)
	}
	// Retry never starts a wait that would end past MaxElapsedTime.
	var total time.Duration
	for _, w := range ev.retries {
		total += w
	}
	if total > cfg.MaxElapsedTime {
		t.Fatalf("waited %s in all, more than MaxElapsedTime %s", total, cfg.MaxElapsedTime)
	}
	if len(ev.retries) == 0 {
		t.Fatal("no retry at all")
	}
}

func TestRetryStopsWhenMessageContextEnds(t *testing.T) {
	fake := &fakePublisher{script: failN(10, errTransient)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs := newMessages(3)
	msgs[1].SetContext(ctx) // one message's context is enough
	var ev retryEvents
	cfg := decorate.RetryConfig{InitialInterval: time.Hour, MaxInterval: time.Hour, MaxElapsedTime: -1}
	cfg = ev.config(cfg)
	onRetry := cfg.OnRetry
	cfg.OnRetry = func(attempt int, err error, wait time.Duration) {
		onRetry(attempt, err, wait)
		cancel() // the caller gives up during the hour-long wait
	}
	err := wrap(t, decorate.Retry(cfg), fake).Publish("t", msgs...)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) {
		t.Fatalf("Publish returned %v, want the cancellation and the last error", err)
	}
	if len(fake.Calls()) != 1 || ev.gaveUp != 1 {
		t.Fatalf("%d attempts, OnGiveUp after %d; want 1, 1", len(fake.Calls()), ev.gaveUp)
	}
}

func TestRetryDeadlineOfOneAttemptIsRetried(t *testing.T) {
	// A deadline that is not the caller's (the publisher's own timeout, a
	// Timeout under Retry) does not stop Retry.
	fake := &fakePublisher{script: failN(2, fmt.Errorf("confirm: %w", context.DeadlineExceeded))}
	if err := wrap(t, decorate.Retry(fast()), fake).Publish("t", newMessages(1)...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if len(fake.Calls()) != 3 {
		t.Fatalf("%d attempts, want 3", len(fake.Calls()))
	}
	// The caller's deadline does.
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	msgs := newMessages(1)
	msgs[0].SetContext(ctx)
	fake = &fakePublisher{script: failN(5, fmt.Errorf("confirm: %w", context.DeadlineExceeded))}
	err := wrap(t, decorate.Retry(fast()), fake).Publish("t", msgs...)
	if !errors.Is(err, context.DeadlineExceeded) || len(fake.Calls()) != 1 {
		t.Fatalf("err %v after %d attempts, want DeadlineExceeded after 1", err, len(fake.Calls()))
	}
}

func TestRetryResendsOnlyUnconfirmed(t *testing.T) {
	msgs := newMessages(4)
	ids := []string{msgs[0].UUID, msgs[1].UUID, msgs[2].UUID, msgs[3].UUID}
	fake := &fakePublisher{script: []func([]*message.Message) error{
		fail(&resilient.PublishError{Topic: "t", Unconfirmed: []string{ids[1], ids[3]}, Err: resilient.ErrNotConfirmed}),
		fail(&resilient.PublishError{Topic: "t", Unconfirmed: []string{ids[3]}, Err: resilient.ErrNacked}),
		fail(&resilient.PublishError{Topic: "t", Unconfirmed: []string{ids[3]}, Err: resilient.ErrNacked}),
	}}
	cfg := fast()
	cfg.MaxAttempts = 3
	err := wrap(t, decorate.Retry(cfg), fake).Publish("t", msgs...)
	want := [][]string{ids, {ids[1], ids[3]}, {ids[3]}}
	if got := fake.Calls(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("attempts sent %v, want %v", got, want)
	}
	var pe *resilient.PublishError
	if !errors.As(err, &pe) || !slices.Equal(pe.Unconfirmed, []string{ids[3]}) {
		t.Fatalf("Publish returned %v, want a PublishError naming only %s", err, ids[3])
	}
}

func TestRetryResendsAllForOtherPublishers(t *testing.T) {
	msgs := newMessages(3)
	ids := []string{msgs[0].UUID, msgs[1].UUID, msgs[2].UUID}
	fake := &fakePublisher{script: failN(1, errTransient)}
	if err := wrap(t, decorate.Retry(fast()), fake).Publish("t", msgs...); err != nil {
		t.Fatal(err)
	}
	if got := fake.Calls(); len(got) != 2 || !slices.Equal(got[1], ids) {
		t.Fatalf("attempts sent %v, want all three twice", got)
	}
}

func TestRetryCloseEndsWait(t *testing.T) {
	fake := &fakePublisher{script: failN(10, errTransient)}
	var pub message.Publisher
	cfg := decorate.RetryConfig{InitialInterval: time.Hour, MaxInterval: time.Hour, MaxElapsedTime: -1}
	cfg.OnRetry = func(int, error, time.Duration) {
		if err := pub.Close(); err != nil {
			t.Error(err)
		}
	}
	pub = wrap(t, decorate.Retry(cfg), fake)
	err := pub.Publish("t", newMessages(1)...)
	if !errors.Is(err, errTransient) || len(fake.Calls()) != 1 {
		t.Fatalf("err %v after %d attempts; want errTransient after 1", err, len(fake.Calls()))
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if n := fake.closed.Load(); n != 2 {
		t.Fatalf("wrapped Close called %d times, want 2 (forwarded each time)", n)
	}
}

func TestRetryValidate(t *testing.T) {
	for name, cfg := range map[string]decorate.RetryConfig{
		"multiplier below 1":           {Multiplier: 0.5},
		"max below initial":            {InitialInterval: time.Second, MaxInterval: time.Millisecond},
		"negative interval":            {InitialInterval: -time.Second},
		"randomization factor above 1": {RandomizationFactor: 1.5},
		"negative, not NoJitter":       {RandomizationFactor: -0.5},
	} {
		if _, err := decorate.Retry(cfg)(&fakePublisher{}); err == nil {
			t.Errorf("%s: Retry accepted %+v", name, cfg)
		}
		if cfg.Validate() == nil {
			t.Errorf("%s: Validate accepted %+v", name, cfg)
		}
	}
	// The zero value is valid, as documented, and so are NoJitter and a
	// first wait longer than the default cap (the cap follows it).
	for _, cfg := range []decorate.RetryConfig{{}, {RandomizationFactor: decorate.NoJitter}, {InitialInterval: 10 * time.Second}} {
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v", cfg, err)
		}
		if _, err := decorate.Retry(cfg)(&fakePublisher{}); err != nil {
			t.Errorf("Retry(%+v): %v", cfg, err)
		}
	}
	if err := (decorate.ReconnectConfig{}).Validate(); err != nil {
		t.Errorf("zero ReconnectConfig: %v", err)
	}
	if (decorate.ReconnectConfig{MaxWait: -time.Second}).Validate() == nil {
		t.Error("a negative MaxWait was accepted")
	}
}

func TestDecoratorsForwardConnectionMethods(t *testing.T) {
	decorators := map[string]message.PublisherDecorator{
		"Retry":     decorate.Retry(decorate.RetryConfig{}),
		"Reconnect": decorate.Reconnect(decorate.ReconnectConfig{}),
		"Timeout":   decorate.Timeout(time.Second),
		"Metrics":   decorate.Metrics(func(decorate.PublishResult) {}),
	}
	for name, dec := range decorators {
		t.Run(name, func(t *testing.T) {
			plain := wrap(t, dec, &fakePublisher{})
			if _, ok := plain.(decorate.ConnectionReporter); ok {
				t.Error("claims IsConnected over a publisher without it")
			}
			if _, ok := plain.(decorate.ConnectionWaiter); ok {
				t.Error("claims WaitConnected over a publisher without it")
			}
			cf := newConnFake(true)
			rep, ok := wrap(t, dec, cf).(decorate.ConnectionReporter)
			if !ok || !rep.IsConnected() {
				t.Fatal("IsConnected not forwarded")
			}
			cf.up.Store(false)
			if rep.IsConnected() {
				t.Fatal("IsConnected not forwarded")
			}
			wf := newWaitFake()
			w, ok := wrap(t, dec, wf).(decorate.ConnectionWaiter)
			if !ok {
				t.Fatal("WaitConnected not forwarded")
			}
			wf.connect()
			if err := w.WaitConnected(context.Background()); err != nil || wf.waits.Load() != 1 {
				t.Fatalf("WaitConnected: %v, %d calls", err, wf.waits.Load())
			}
		})
	}
}

func TestRetryOverGoChannel(t *testing.T) {
	// A stock watermill publisher, to show Retry is not tied to ours.
	gc := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	pub := wrap(t, decorate.Retry(fast()), gc)
	defer pub.Close()
	msgs := newMessages(3)
	if err := pub.Publish("t", msgs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in, err := gc.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{msgs[0].UUID: true, msgs[1].UUID: true, msgs[2].UUID: true}
	for range msgs {
		got := <-in
		if !want[got.UUID] {
			t.Fatalf("got %s, not one of %v (or twice)", got.UUID, want)
		}
		delete(want, got.UUID)
		got.Ack()
	}
	if _, ok := pub.(decorate.ConnectionReporter); ok {
		t.Fatal("gochannel reports no connection; Retry must not claim one")
	}
}
