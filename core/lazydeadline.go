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
// wait on abort's channel and a timer of their own instead (waitOn).
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
	deadline time.Time
	cause    error // why it ends at deadline

	ctx    context.Context // made on first use, then what every method reads
	cancel context.CancelFunc
	timer  *time.Timer // waitOn's while ctx is not made
}

func newLazyDeadline(abort context.Context, deadline time.Time, cause error) *lazyDeadline {
	return &lazyDeadline{abort: abort, deadline: deadline, cause: cause}
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

// waitOn returns what ends a wait of the call without making the context:
// abort's channel, and a timer's that fires at deadline. Once either fired,
// Err and context.Cause say why (the context made then has ended already).
// With the context made, it is its Done channel, and no timer.
func (l *lazyDeadline) waitOn() (<-chan struct{}, <-chan time.Time) {
	if l.ctx != nil {
		return l.ctx.Done(), nil
	}
	if l.timer == nil {
		l.timer = time.NewTimer(time.Until(l.deadline))
	}
	return l.abort.Done(), l.timer.C
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

// waitChannels returns what ends a wait with ctx: for a call's lazy
// deadline, without making its context (see lazyDeadline.waitOn).
func waitChannels(ctx context.Context) (<-chan struct{}, <-chan time.Time) {
	if l, ok := ctx.(*lazyDeadline); ok {
		return l.waitOn()
	}
	return ctx.Done(), nil
}
