package core

import (
	"context"
	"time"
)

// lazyDeadline is the context of a call whose messages' contexts cannot
// end (context.Background(), the usual case): it ends when Close gives up
// on the call (abort) or at deadline (PublishTimeout), with cause. The
// real context is made only when something waits with it: a call on a
// live connection, to a topic declared already, never does. Its attempts
// wait on the publisher's waker instead (waitEndsOf), and on a timer of
// their own once the deadline is less than a tick away.
//
// Why: a context.WithDeadlineCause per call costs a timer always in the
// runtime's heap, a done channel, and a child registered under Close's
// context, whose lock every call takes twice: at 16 goroutines publishing,
// about 7 % of the publisher's CPU (pprof, RabbitMQ 3.10.8).
//
// A call's goroutine owns it: the context is made on first use, unlocked,
// so it is not to be handed to another goroutine.
type lazyDeadline struct {
	abort    context.Context // Publisher.abortCtx
	wake     *waker          // the publisher's: poked when abort ends
	deadline time.Time
	cause    error // why it ends at deadline

	ctx    context.Context // made on first use, then what every method reads
	cancel context.CancelFunc
	timer  *time.Timer // armed in the last tick before deadline, while ctx is not made
}

func newLazyDeadline(abort context.Context, wake *waker, deadline time.Time, cause error) *lazyDeadline {
	return &lazyDeadline{abort: abort, wake: wake, deadline: deadline, cause: cause}
}

// made returns the real context, making it on first use.
func (l *lazyDeadline) made() context.Context {
	if l.ctx == nil {
		l.ctx, l.cancel = context.WithDeadlineCause(l.abort, l.deadline, l.cause)
	}
	return l.ctx
}

func (l *lazyDeadline) Deadline() (time.Time, bool) { return l.deadline, true }
func (l *lazyDeadline) Done() <-chan struct{}       { return l.made().Done() }
func (l *lazyDeadline) Err() error                  { return l.made().Err() }

// Value is the real context's: context.Cause finds its cause through it.
func (l *lazyDeadline) Value(key any) any { return l.made().Value(key) }

// aborted reports, without making the context, whether Close gave up on
// the call (for a context made: whether it ended). Its deadline is not
// looked at: waitEndsOf arms a timer for it before a tick could come
// after it.
func (l *lazyDeadline) aborted() bool {
	if l.ctx != nil {
		return l.ctx.Err() != nil
	}
	return l.abort.Err() != nil
}

// release frees what the context holds, once the call is over.
func (l *lazyDeadline) release() {
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.cancel != nil {
		l.cancel()
	}
}

// waitEnds is what ends an attempt's wait for its facts: the call's
// context (ended, or for a lazy deadline its own timer, expired), the
// connection's session (dead), or a wake, after which the attempt looks at
// what may have ended (lookAgain) and waits on the next one. Nil channels
// are not waited on.
type waitEnds struct {
	ended   <-chan struct{}
	expired <-chan time.Time
	dead    <-chan struct{}
	// wake stands for ended and dead: the publisher's waker, poked when
	// Close gives up and when a session ends, and ticking meanwhile.
	wake <-chan struct{}
}

// waitEndsOf returns what ends a wait with ctx on the session whose dead
// channel is dead: for a call's lazy deadline, without making its context.
// Whatever ended before a wake channel was taken does not close it: after
// waitEndsOf, look again.
func waitEndsOf(ctx context.Context, dead <-chan struct{}) waitEnds {
	l, ok := ctx.(*lazyDeadline)
	if !ok || l.ctx != nil {
		return waitEnds{ended: ctx.Done(), dead: dead}
	}
	tick := l.wake.next()
	ends := waitEnds{wake: tick.c}
	if l.timer == nil && !l.deadline.After(tick.at) {
		// The tick would come after the deadline: a timer of its own.
		l.timer = time.NewTimer(time.Until(l.deadline))
	}
	if l.timer != nil {
		ends.expired = l.timer.C
	}
	return ends
}

// contextCut reports whether ctx has ended other than by its lazy
// deadline's timer, which the attempt waits on: without making the
// context.
func contextCut(ctx context.Context) bool {
	if l, ok := ctx.(*lazyDeadline); ok {
		return l.aborted()
	}
	return ctx.Err() != nil
}
