package core

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// scriptedLane plays a lane for an attempt, without a broker: it claims
// what it is handed and tells a fact chosen by decide, after a random
// delay, following the lane's rules (a stopped attempt's later messages are
// not sent). It records what it acked.
type scriptedLane struct {
	queue  chan *handoff
	dead   chan struct{}
	decide func(*rand.Rand, *outgoing) laneAnswer

	mu      sync.Mutex
	acked   map[string]bool
	handled map[string]int // claimed, by UUID
}

// laneAnswer is what a scripted lane tells of a message.
type laneAnswer int

const (
	answerAcked laneAnswer = iota
	answerNacked
	answerLost     // with its channel, for the connection's loss
	answerSuspect  // with its channel, for a reason that names no message
	answerReturned // by its own queue
	answerRefused  // too large to send
)

// fact is the fact a lane tells for a.
func (a laneAnswer) fact() fact {
	switch a {
	case answerAcked:
		return fact{kind: factAcked}
	case answerNacked:
		return fact{kind: factNacked}
	case answerSuspect:
		return fact{kind: factLost, cause: &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,7}", Server: true}, channelOnly: true}
	case answerReturned:
		return fact{kind: factReturned, returned: &amqp091.Return{ReplyCode: 312, ReplyText: "NO_ROUTE"}}
	case answerRefused:
		return fact{kind: factRefused, cause: ErrMessageTooLarge}
	}
	return fact{kind: factLost, cause: errConnectionLost}
}

func newScriptedLane(decide func(*rand.Rand, *outgoing) laneAnswer) *scriptedLane {
	return &scriptedLane{
		queue:   make(chan *handoff, 16),
		dead:    make(chan struct{}),
		decide:  decide,
		acked:   make(map[string]bool),
		handled: make(map[string]int),
	}
}

// run serves until stop is closed, then reports every handoff it still
// holds as lost and closes dead, as a session's lanes do when it ends.
func (l *scriptedLane) run(seed uint64, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(seed, seed))
	var held []*handoff
	defer func() {
		for _, d := range held {
			d.tell(fact{kind: factLost, cause: errConnectionLost})
		}
		close(l.dead)
	}()
	for {
		select {
		case <-stop:
			return
		case d := <-l.queue:
			if !d.claim() {
				continue
			}
			l.mu.Lock()
			l.handled[d.msg.uuid]++
			l.mu.Unlock()
			if d.callStopped() {
				d.tell(fact{kind: factUnsent, cause: errHeldBack})
				continue
			}
			held = append(held, d)
		case <-time.After(time.Duration(rng.IntN(200)) * time.Microsecond):
		}
		// Answer some of what is held, oldest first.
		for len(held) > 0 && rng.IntN(3) > 0 {
			d := held[0]
			held = held[1:]
			answer := l.decide(rng, d.msg)
			if answer == answerAcked {
				l.mu.Lock()
				l.acked[d.msg.uuid] = true
				l.mu.Unlock()
			}
			d.tell(answer.fact())
			if answer == answerLost {
				// Lost with its channel, as in a real lane: every later
				// message in flight on it is lost too, never confirmed
				// ahead of it (when it was, under -race, the retry skipped
				// messages 11 to 13 of TestAttemptStopKeepsCallOrder).
				for _, later := range held {
					later.tell(fact{kind: factLost, cause: errConnectionLost})
				}
				held = nil
			}
		}
	}
}

func newOutgoing(n int) []*outgoing {
	msgs := make([]*outgoing, n)
	for i := range msgs {
		msgs[i] = &outgoing{index: i, uuid: fmt.Sprintf("m%05d", i), ctx: context.Background(), ownQueue: true}
	}
	return msgs
}

// checkDecisions asserts the attempt's invariants: each message ended in
// exactly one of confirmed, retry and failed; every message not listed in
// retry or failed was acked by the lane; retry is in call order.
func checkDecisions(t *testing.T, a *attempt, msgs []*outgoing, lane *scriptedLane) {
	t.Helper()
	if a.open != 0 {
		t.Fatalf("%d messages still open after run", a.open)
	}
	seen := make(map[string]string, len(msgs))
	for _, m := range a.retry {
		if prev, dup := seen[m.uuid]; dup {
			t.Fatalf("%s counted twice: %s and retry", m.uuid, prev)
		}
		seen[m.uuid] = "retry"
	}
	for _, f := range a.failed {
		if prev, dup := seen[f.msg.uuid]; dup {
			t.Fatalf("%s counted twice: %s and failed", f.msg.uuid, prev)
		}
		seen[f.msg.uuid] = "failed"
	}
	if got := a.confirmed + len(a.retry) + len(a.failed); got != len(msgs) {
		t.Fatalf("confirmed %d + retry %d + failed %d = %d, want %d", a.confirmed, len(a.retry), len(a.failed), got, len(msgs))
	}
	lane.mu.Lock()
	defer lane.mu.Unlock()
	for _, m := range msgs {
		if _, listed := seen[m.uuid]; !listed && !lane.acked[m.uuid] {
			t.Fatalf("%s neither listed nor acked: reported confirmed without a confirm", m.uuid)
		}
		if n := lane.handled[m.uuid]; n > 1 {
			t.Fatalf("%s handed to the lane %d times in one attempt", m.uuid, n)
		}
	}
	if !slices.IsSortedFunc(a.retry, func(x, y *outgoing) int { return x.index - y.index }) {
		t.Fatal("retry is not in call order")
	}
}

// Half the messages carry contexts cancelled 1-10 ms into the call, the
// other half context.Background(): the defect of a call's bookkeeping
// counting a message twice (the give-up path, then the hand-over loop) made
// the outstanding count reach zero early, and messages never sent were
// neither listed nor confirmed.
func TestAttemptCancelledContextsAreCountedOnce(t *testing.T) {
	for round := range 200 {
		msgs := newOutgoing(300)
		var cancels []context.CancelFunc
		for i, m := range msgs {
			if i%2 == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%10)*time.Millisecond)
				m.ctx = ctx
				cancels = append(cancels, cancel)
			}
		}
		lane := newScriptedLane(func(*rand.Rand, *outgoing) laneAnswer { return answerAcked })
		stop := make(chan struct{})
		go lane.run(uint64(round), stop)

		a := newAttempt(msgs, 0)
		ctx, watch, release := watchedContext(msgs)
		a.run(ctx, lane.queue, lane.dead, watch)
		release()
		close(stop)
		<-lane.dead
		checkDecisions(t, a, msgs, lane)
		for _, f := range a.failed {
			if f.msg.index%2 == 1 {
				t.Fatalf("round %d: %s has no deadline, yet failed: %v", round, f.msg.uuid, f.err)
			}
		}
		for _, cancel := range cancels {
			cancel()
		}
	}
}

// watchedContext is a call's context the way call.context makes it, without
// a publisher.
func watchedContext(msgs []*outgoing) (context.Context, *contextWatch, func()) {
	base, cancel := context.WithCancelCause(context.Background())
	watch := watchContexts(msgs, cancel)
	return base, watch, func() { watch.stop(); cancel(nil) }
}

// Random facts, random cancellations, a call deadline and a session that
// dies mid-attempt: whatever happens, every message is decided once and
// only acked ones go unlisted.
func TestAttemptRandomized(t *testing.T) {
	for round := range 300 {
		rng := rand.New(rand.NewPCG(uint64(round), 7))
		msgs := newOutgoing(1 + rng.IntN(400))
		for _, m := range msgs {
			if rng.IntN(4) == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(5000))*time.Microsecond)
				defer cancel()
				m.ctx = ctx
			}
		}
		answers := []laneAnswer{answerAcked, answerAcked, answerAcked, answerNacked, answerLost, answerSuspect, answerReturned, answerRefused}
		lane := newScriptedLane(func(rng *rand.Rand, _ *outgoing) laneAnswer { return answers[rng.IntN(len(answers))] })
		stop := make(chan struct{})
		go lane.run(uint64(round), stop)
		// The session dies at a random moment, or never.
		if rng.IntN(3) == 0 {
			time.AfterFunc(time.Duration(rng.IntN(3000))*time.Microsecond, func() { close(stop) })
		} else {
			defer close(stop)
		}

		a := newAttempt(msgs, rng.IntN(3)-1)
		ctx, watch, release := watchedContext(msgs)
		deadline, cancel := context.WithTimeout(ctx, time.Duration(1+rng.IntN(10))*time.Millisecond)
		a.run(deadline, lane.queue, lane.dead, watch)
		cancel()
		release()
		checkDecisions(t, a, msgs, lane)
	}
}

// Once a message is lost, the lane writes no later message of the call, and
// the attempt hands none over: they are all sent again, in order.
func TestAttemptStopKeepsCallOrder(t *testing.T) {
	msgs := newOutgoing(100)
	lane := newScriptedLane(func(_ *rand.Rand, m *outgoing) laneAnswer {
		if m.index == 10 {
			return answerLost
		}
		return answerAcked
	})
	stop := make(chan struct{})
	defer close(stop)
	go lane.run(1, stop)
	a := newAttempt(msgs, 0)
	a.run(context.Background(), lane.queue, lane.dead, nil)
	checkDecisions(t, a, msgs, lane)
	if len(a.retry) == 0 || a.retry[0].index != 10 {
		t.Fatalf("retry starts at %v, want the lost message 10", a.retry)
	}
	for i, m := range a.retry {
		if m.index != 10+i {
			t.Fatalf("retry %d is message %d: the messages after the lost one must all come back, in order", i, m.index)
		}
	}
}

// A nacked message is re-sent without bound by default, fails with ErrNacked
// past a positive MaxNackRetries, and at once with -1.
func TestAttemptNackPolicy(t *testing.T) {
	for _, c := range []struct {
		maxRetries, nacksBefore int
		wantFailed              bool
	}{{0, 100, false}, {2, 1, false}, {2, 2, true}, {-1, 0, true}} {
		msgs := newOutgoing(1)
		msgs[0].nacks = c.nacksBefore
		lane := newScriptedLane(func(*rand.Rand, *outgoing) laneAnswer { return answerNacked })
		stop := make(chan struct{})
		go lane.run(1, stop)
		a := newAttempt(msgs, c.maxRetries)
		a.run(context.Background(), lane.queue, lane.dead, nil)
		close(stop)
		checkDecisions(t, a, msgs, lane)
		failed := len(a.failed) == 1 && errors.Is(a.failed[0].err, ErrNacked)
		if failed != c.wantFailed || a.nacks != 1 {
			t.Fatalf("MaxNackRetries %d after %d nacks: failed %v, want %v", c.maxRetries, c.nacksBefore, failed, c.wantFailed)
		}
	}
}

// A confirm already reported when the call's deadline ends counts as a
// confirm: select picks at random among ready cases, and a confirmed
// message reported failed would be sent twice by a caller's retry.
func TestAttemptConfirmBeatsAnEndedContext(t *testing.T) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for round := range 100 {
		msgs := newOutgoing(2)
		a := newAttempt(msgs, 0)
		for i := range a.handoffs {
			a.handoffs[i].claim()
			a.handoffs[i].tell(fact{kind: factAcked})
		}
		never := make(chan *handoff) // no lane reads: only the facts and ctx are ready
		a.run(ended, never, nil, nil)
		if a.confirmed != len(msgs) {
			t.Fatalf("round %d: %d of %d confirmed; failed %v", round, a.confirmed, len(msgs), a.failed)
		}
	}
}
