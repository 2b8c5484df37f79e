package core

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
)

// maxReturns is how many times a message may come back from the
// publisher's own queue (each time declared again) before it fails with
// ErrUnroutable: a queue that exists and still returns it means the routing
// key does not lead to it.
const maxReturns = 3

// attempt is one try at sending the remaining messages of a Publish call on
// one lane, and the bookkeeping of their outcomes. It runs on the caller's
// goroutine; lanes talk to it only through its results channel and its cut
// flag.
//
// Every message ends the attempt in exactly one of three ways: confirmed,
// to be sent again (retry), or failed. decide is the only way there, and it
// does nothing for a handoff already decided, so a message can be counted
// once only, whichever of the lane's report, the caller's giving up or the
// session's death comes first.
type attempt struct {
	handoffs       []handoff // in call order
	results        chan outcome
	maxNackRetries int

	// cut is set by the lane once a message of this attempt must be sent
	// again: it then writes none of the later ones (they come back as lost),
	// so that the re-sends go out in call order.
	cut atomic.Bool

	handed int // handoffs[:handed] were handed to the lane, or settled before
	open   int // handoffs not settled yet

	confirmed int
	nacks     int         // messages nacked: back off before the next attempt
	returns   int         // messages back from their own queue: declare it again
	retry     []*outgoing // in call order once run returns
	failed    []failure
}

type failure struct {
	msg *outgoing
	err error
}

func newAttempt(msgs []*outgoing, maxNackRetries int) *attempt {
	a := &attempt{
		handoffs:       make([]handoff, len(msgs)),
		results:        make(chan outcome, len(msgs)),
		maxNackRetries: maxNackRetries,
		open:           len(msgs),
	}
	for i, m := range msgs {
		a.handoffs[i].msg, a.handoffs[i].att, a.handoffs[i].solo = m, a, m.solo
		m.slot = i
	}
	return a
}

// run hands the handoffs, in order, to a lane's intake, and settles their
// outcomes until every one is settled. It gives up on a message when its
// Context() ends (watch says which did) and on all of them when ctx ends;
// when dead is closed (the session's lanes have all exited, each having
// reported what it claimed) the rest are to be sent again.
func (a *attempt) run(ctx context.Context, intake chan<- *handoff, dead <-chan struct{}, watch *contextWatch) {
	for a.open > 0 {
		next := a.nextToHand()
		if a.open == 0 {
			break
		}
		var handTo chan<- *handoff
		if next != nil {
			// Room in the lane's queue, the usual case: no need to watch
			// every other channel for it.
			select {
			case intake <- next:
				a.handed++
				continue
			default:
			}
			handTo = intake
		}
		select {
		case handTo <- next:
			a.handed++
		case o := <-a.results:
			a.decide(o.d, o.kind, o.err)
		case <-watch.woken():
			a.takeResults() // a confirm already in beats a context that ended
			watch.takeEnded(func(m *outgoing) {
				if m.slot < len(a.handoffs) && a.handoffs[m.slot].msg == m {
					a.giveUpOn(&a.handoffs[m.slot], messageContextEnded(m))
				}
			})
		case <-ctx.Done():
			a.takeResults()
			a.giveUp(deadlineErr(ctx, ctx.Err()))
		case <-dead:
			a.afterSessionDeath()
		}
	}
	slices.SortFunc(a.retry, func(x, y *outgoing) int { return x.index - y.index })
}

// nextToHand returns the next handoff to hand to the lane, settling on the
// way those whose Context() ended (never handed over) and, once the attempt
// is cut, the rest (sent again by the next attempt, in order).
func (a *attempt) nextToHand() *handoff {
	for ; a.handed < len(a.handoffs); a.handed++ {
		d := &a.handoffs[a.handed]
		switch {
		case d.decided:
		case d.msg.ctx.Err() != nil:
			d.abandon()
			a.decide(d, outcomeFailed, messageContextEnded(d.msg))
		case a.cut.Load():
			d.abandon()
			a.decide(d, outcomeLost, errHeldBack)
		default:
			return d
		}
	}
	return nil
}

// giveUp stops waiting for every message not settled yet.
func (a *attempt) giveUp(err error) {
	for i := range a.handoffs {
		a.giveUpOn(&a.handoffs[i], err)
	}
}

// giveUpOn stops waiting for d, unless it is settled. A queued one is
// abandoned, so no lane will send it; one a lane claimed already is no
// longer waited for (its outcome is ignored): it is reported unconfirmed,
// which it may or may not be.
func (a *attempt) giveUpOn(d *handoff, err error) {
	if d.decided {
		return
	}
	d.abandon()
	a.decide(d, outcomeFailed, err)
}

// afterSessionDeath settles what the lanes reported before they exited, and
// then sends again every message not settled: none was claimed, or its
// outcome would be among the results.
func (a *attempt) afterSessionDeath() {
	a.takeResults()
	for i := range a.handoffs {
		if d := &a.handoffs[i]; !d.decided {
			d.abandon()
			a.decide(d, outcomeLost, errConnectionLost)
		}
	}
}

// takeResults decides the outcomes the lanes reported already. select
// picks at random among ready cases: without this, a deadline or a
// message's context that ended beside a confirm would report a confirmed
// message as failed, and a caller's retry would send it twice.
func (a *attempt) takeResults() {
	for {
		select {
		case o := <-a.results:
			a.decide(o.d, o.kind, o.err)
		default:
			return
		}
	}
}

// decide decides d's outcome, once.
func (a *attempt) decide(d *handoff, kind outcomeKind, err error) {
	if d.decided {
		return
	}
	d.decided = true
	a.open--
	m := d.msg
	switch kind {
	case outcomeAcked:
		a.confirmed++
	case outcomeNacked:
		m.nacks++
		a.nacks++
		if a.maxNackRetries < 0 || a.maxNackRetries > 0 && m.nacks > a.maxNackRetries {
			a.failed = append(a.failed, failure{m, fmt.Errorf("%w %d time(s)", ErrNacked, m.nacks)})
			return
		}
		a.retry = append(a.retry, m)
	case outcomeLost:
		a.retry = append(a.retry, m)
	case outcomeSuspect:
		m.solo = true
		a.retry = append(a.retry, m)
	case outcomeReturned:
		m.returns++
		a.returns++
		if m.returns > maxReturns {
			a.failed = append(a.failed, failure{m, fmt.Errorf("%w: returned %d times by its own queue, declared again each time: %w", ErrUnroutable, m.returns, err)})
			return
		}
		a.retry = append(a.retry, m)
	case outcomeFailed:
		a.failed = append(a.failed, failure{m, err})
	}
}

// messageContextEnded is why a message whose Context() ended was not
// confirmed.
func messageContextEnded(m *outgoing) error {
	return fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(m.ctx))
}
