package health_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/resilientmq/watermill-rabbitmq/health"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// The rules, state by state, with the default bound of a minute.
func TestProbeRules(t *testing.T) {
	lost := errors.New("Exception (320) Reason: \"CONNECTION_FORCED\"")
	cases := []struct {
		state       resilient.State
		age         time.Duration
		err         error
		ready, live bool
	}{
		{resilient.StateConnected, time.Hour, nil, true, true},
		{resilient.StateConnecting, time.Second, nil, false, true},
		{resilient.StateConnecting, 2 * time.Minute, errors.New("dial tcp: connection refused"), false, false},
		{resilient.StateReconnecting, 59 * time.Second, lost, false, true},
		{resilient.StateReconnecting, 61 * time.Second, lost, false, false},
		{resilient.StateBlocked, time.Hour, errors.New("blocked: low on memory"), false, true},
		{resilient.StateClosed, 0, nil, false, false},
		{resilient.State(99), 0, nil, false, false},
	}
	ctx := context.Background()
	for _, c := range cases {
		checker := health.NewChecker(0).Add("pub", newFake(c.state, c.age, c.err))
		ready, live := checker.Ready(ctx), checker.Live(ctx)
		if (ready == nil) != c.ready || (live == nil) != c.live {
			t.Errorf("%s for %s: ready=%v live=%v, want ready %v live %v", c.state, c.age, ready, live, c.ready, c.live)
		}
	}
}

func TestMaxDisconnected(t *testing.T) {
	f := newFake(resilient.StateReconnecting, 10*time.Second, nil)
	if err := health.NewChecker(5*time.Second).Add("sub", f).Live(context.Background()); err == nil {
		t.Error("reconnecting for 10s with a bound of 5s: live, want not live")
	}
	if err := health.NewChecker(20*time.Second).Add("sub", f).Live(context.Background()); err != nil {
		t.Errorf("reconnecting for 10s with a bound of 20s: %v, want live", err)
	}
}

// The error names each failing component, its state and why; healthy ones
// are left out.
func TestCheckerNamesWhatFails(t *testing.T) {
	pub := newFake(resilient.StateConnected, time.Minute, nil)
	sub := newFake(resilient.StateBlocked, 2*time.Second, errors.New("blocked: low on memory"))
	checker := health.NewChecker(0).Add("publisher", pub).Add("subscriber", sub)
	ctx := context.Background()

	err := checker.Ready(ctx)
	if err == nil {
		t.Fatal("ready with a blocked subscriber")
	}
	msg := err.Error()
	if !contains(msg, "subscriber: blocked for 2s: blocked: low on memory") || contains(msg, "publisher") {
		t.Errorf("Ready: %q", msg)
	}
	if err := checker.Live(ctx); err != nil {
		t.Errorf("Live while blocked: %v, want nil", err)
	}

	sub.set(resilient.StateConnected, 0, nil)
	if err := checker.Ready(ctx); err != nil {
		t.Errorf("Ready once unblocked: %v", err)
	}
	pub.set(resilient.StateClosed, 0, nil)
	sub.set(resilient.StateReconnecting, 3*time.Minute, errors.New("dial tcp 127.0.0.1:5672: connect: connection refused"))
	err = checker.Live(ctx)
	if err == nil || !contains(err.Error(), "publisher: closed") || !contains(err.Error(), "subscriber: reconnecting for 3m0s: dial tcp") {
		t.Errorf("Live: %v, want both named", err)
	}
}

func TestCheckerEdges(t *testing.T) {
	empty := health.NewChecker(0)
	if err := empty.Ready(context.Background()); err != nil {
		t.Errorf("no components: %v, want ready", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ok := health.NewChecker(0).Add("pub", newFake(resilient.StateConnected, 0, nil))
	if err := ok.Ready(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ready with a cancelled context: %v", err)
	}
}

// Components added while probes run: no race.
func TestCheckerConcurrent(t *testing.T) {
	checker := health.NewChecker(0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			checker.Add("c", newFake(resilient.StateConnected, 0, nil))
		}
	}()
	for range 100 {
		_ = checker.Ready(context.Background())
		_ = checker.Live(context.Background())
	}
	<-done
}

// Connected but degraded (channels refused under the broker's
// channel_max): not ready, still live, and the error says why.
func TestDegradedIsNotReady(t *testing.T) {
	f := newFake(resilient.StateConnected, time.Hour, nil)
	f.mu.Lock()
	f.h.Degraded = fmt.Errorf("4 channel(s) refused: %w", resilient.ErrChannelLimit)
	f.mu.Unlock()
	checker := health.NewChecker(0).Add("sub", f)
	ready, live := checker.Ready(context.Background()), checker.Live(context.Background())
	if ready == nil || !strings.Contains(ready.Error(), "degraded: 4 channel(s) refused") {
		t.Errorf("ready: %v, want the degradation", ready)
	}
	if live != nil {
		t.Errorf("live: %v", live)
	}
}
