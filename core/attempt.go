package core

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
)

// attempt is one try at sending the remaining messages of a Publish call on
// one lane, and the bookkeeping of their fates. It runs on the caller's
// goroutine; lanes talk to it only through its facts channel and its
// stopped flag, carried by each handoff.
//
// Every message ends the attempt in exactly one of three ways: confirmed,
// to be sent again (retry), or failed. decide is the only way there: it
// asks fateOf (fate.go) what a fact means, and does nothing for a handoff
// already decided, so a message is counted once only, whichever of the
// lane's fact, the caller's giving up or the session's death comes first.
type attempt struct {
	handoffs []handoff // in call order
	// one holds the handoff of an attempt of one message, the usual call:
	// handoffs is then one[:], and the attempt one allocation fewer.
	one            [1]handoff
	facts          chan fact
	maxNackRetries int

	// stopped is set by the lane once a message of this attempt must be
	// sent again: it then writes none of the later ones (they come back
	// unsent), so that the re-sends go out in call order.
	stopped atomic.Bool

	handed int // handoffs[:handed] were handed to the lane, or decided before
	open   int // handoffs not decided yet

	confirmed int
	retry     []*outgoing // in call order once run returns
	failed    []failure

	// What the call does before its next attempt (see fate).
	nacks   int // messages nacked: back off
	returns int // messages back from their own queue: declare it again
}

type failure struct {
	msg *outgoing
	err error
}

func newAttempt(msgs []*outgoing, maxNackRetries int) *attempt {
	a := &attempt{
		facts:          make(chan fact, len(msgs)),
		maxNackRetries: maxNackRetries,
		open:           len(msgs),
	}
	if len(msgs) == 1 {
		a.handoffs = a.one[:]
	} else {
		a.handoffs = make([]handoff, len(msgs))
	}
	for i, m := range msgs {
		d := &a.handoffs[i]
		d.msg, d.alone, d.facts, d.stopped = m, m.suspect, a.facts, &a.stopped
		m.slot = i
	}
	return a
}

// run hands the handoffs, in order, to laneQueue, and decides their fates
// until every one is decided. It gives up on a message when its Context()
// ends (watch says which did) and on all of them when ctx ends; when dead
// is closed (the session's lanes have all exited, each having told what it
// claimed) the rest are to be sent again.
func (a *attempt) run(ctx context.Context, laneQueue chan<- *handoff, dead <-chan struct{}, watch *contextWatch) {
	ends := waitEndsOf(ctx, dead)
	// What ended before the wake channel was taken did not close it.
	look := ends.wake != nil
	for a.open > 0 {
		if look {
			look = false
			a.lookAgain(ctx, dead)
			continue
		}
		next := a.nextToHand()
		if a.open == 0 {
			break
		}
		var handTo chan<- *handoff
		if next != nil {
			// Room in the lane's queue, the usual case: no need to watch
			// every other channel for it.
			select {
			case laneQueue <- next:
				a.handed++
				continue
			default:
			}
			handTo = laneQueue
		}
		select {
		case handTo <- next:
			a.handed++
		case f := <-a.facts:
			a.decide(f)
		case <-watch.woken():
			a.takeFacts() // a confirm already in beats a context that ended
			watch.takeEnded(func(m *outgoing) {
				if m.slot < len(a.handoffs) && a.handoffs[m.slot].msg == m {
					a.giveUpOn(&a.handoffs[m.slot], messageContextEnded(m))
				}
			})
		case <-ends.ended:
			a.contextEnded(ctx)
		case <-ends.expired:
			a.contextEnded(ctx)
		case <-ends.dead:
			a.afterSessionDeath()
		case <-ends.wake:
			ends, look = waitEndsOf(ctx, dead), true
		}
	}
	slices.SortFunc(a.retry, func(x, y *outgoing) int { return x.index - y.index })
}

// lookAgain, after a wake, ends the wait if what the wake stands for has
// ended: the call's context (Close gave up), or the session. (Its
// deadline has a timer of its own once it is nearer than the next tick.)
func (a *attempt) lookAgain(ctx context.Context, dead <-chan struct{}) {
	switch {
	case contextCut(ctx):
		a.contextEnded(ctx)
	case isDone(dead):
		a.afterSessionDeath()
	}
}

// contextEnded gives up on every message not decided, once the call's
// context ended: a confirm already in beats it.
func (a *attempt) contextEnded(ctx context.Context) {
	a.takeFacts()
	a.giveUp(deadlineErr(ctx, ctx.Err()))
}

// nextToHand returns the next handoff to hand to the lane, deciding on the
// way those whose Context() ended (never handed over) and, once the lane
// stopped the attempt, the rest (sent again by the next attempt, in order).
func (a *attempt) nextToHand() *handoff {
	for ; a.handed < len(a.handoffs); a.handed++ {
		d := &a.handoffs[a.handed]
		switch {
		case d.decided:
		case d.msg.ctx.Err() != nil:
			d.abandon()
			a.decide(fact{d: d, kind: factAbandoned, cause: messageContextEnded(d.msg)})
		case a.stopped.Load():
			d.abandon()
			a.decide(fact{d: d, kind: factUnsent, cause: errHeldBack})
		default:
			return d
		}
	}
	return nil
}

// giveUp stops waiting for every message not decided yet.
func (a *attempt) giveUp(err error) {
	for i := range a.handoffs {
		a.giveUpOn(&a.handoffs[i], err)
	}
}

// giveUpOn stops waiting for d, unless it is decided. A queued one is
// abandoned, so no lane will send it; one a lane claimed already is no
// longer waited for (its fact is ignored): it is reported unconfirmed,
// which it may or may not be.
func (a *attempt) giveUpOn(d *handoff, err error) {
	if d.decided {
		return
	}
	d.abandon()
	a.decide(fact{d: d, kind: factAbandoned, cause: err})
}

// afterSessionDeath decides what the lanes told before they exited, and
// then sends again every message not decided: none was claimed, or its
// fact would be among those told.
func (a *attempt) afterSessionDeath() {
	a.takeFacts()
	for i := range a.handoffs {
		if d := &a.handoffs[i]; !d.decided {
			d.abandon()
			a.decide(fact{d: d, kind: factUnsent, cause: errConnectionLost})
		}
	}
}

// takeFacts decides the facts the lanes told already. select picks at
// random among ready cases: without this, a deadline or a message's context
// that ended beside a confirm would report a confirmed message as failed,
// and a caller's retry would send it twice.
func (a *attempt) takeFacts() {
	for {
		select {
		case f := <-a.facts:
			a.decide(f)
		default:
			return
		}
	}
}

// decide records f's fate (fateOf), once per handoff.
func (a *attempt) decide(f fact) {
	d := f.d
	if d.decided {
		return
	}
	d.decided = true
	a.open--
	fate := fateOf(f, a.maxNackRetries)
	switch {
	case fate.confirmed:
		a.confirmed++
	case fate.resend:
		a.retry = append(a.retry, d.msg)
	default:
		a.failed = append(a.failed, failure{d.msg, fate.err})
	}
	if fate.nacked {
		a.nacks++
	}
	if fate.returned {
		a.returns++
	}
}

// messageContextEnded is why a message whose Context() ended was not
// confirmed.
func messageContextEnded(m *outgoing) error {
	return fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(m.ctx))
}
