package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"
)

var errPublishTimeout = errors.New("publish timeout")

// Pauses between two attempts of a call: after messages were lost with a
// channel while the connection lives (the lane reopens it), and after nacks
// (the broker refuses for now: a queue electing a leader, a full queue
// rejecting publishes), which back off exponentially.
const (
	retryPause      = 50 * time.Millisecond
	nackBackoffMax  = 2 * time.Second
	nackBackoffBase = 50 * time.Millisecond
)

// call is one Publish call, from its messages' preparation to its answer:
// it runs attempts (attempt.go) on the current connection's lanes, applies
// what the fates of their messages ask of it (fate.go: a pause after
// nacks, a declaration again), and answers nil only once every message was
// confirmed.
type call struct {
	p     *Publisher
	topic string
	batch []*outgoing
}

// run runs attempts until every message is confirmed or failed, and
// returns nil only if every one was confirmed.
func (c *call) run() (err error) {
	p, topic, batch := c.p, c.topic, c.batch
	if p.cfg.OnEvent != nil {
		start := time.Now() // read only for the event: the clock is not free
		p.cfg.emit(Event{Kind: PublishStarted, Messages: len(batch)})
		defer func() {
			p.cfg.emit(Event{Kind: PublishDone, Messages: len(batch), Duration: time.Since(start), Err: err, Handler: handlerOf(batch)})
		}()
	}
	ctx, watch, held := c.context()
	defer held.release()

	var failed []failure
	var nackBackoff *backoff.ExponentialBackOff
	var notDeclared error // why the last declaration failed, for a while
	remaining := batch
	for len(remaining) > 0 {
		sess, err := p.sup.await(ctx)
		if err != nil {
			failed = failAll(failed, remaining, deadlineErr(ctx, err))
			break
		}
		if refused, ok := p.refusedTopics.Load(topic); ok {
			failed = failAll(failed, remaining, refused.(error))
			break
		}
		if err := sess.pub.topology.ensure(ctx, topic, batch[0].exchange, p.buildTopic); err != nil {
			if isTransientQueueRefusal(err) {
				p.refusedTopics.Store(topic, err)
			}
			if errors.Is(err, errConnectionLost) || isTransientReply(err) {
				notDeclared = err
				pause(ctx, sess.stopping, retryPause)
				continue
			}
			if ctx.Err() != nil && notDeclared != nil {
				err = notDeclared
			}
			failed = failAll(failed, remaining, deadlineErr(ctx, err))
			break
		}
		notDeclared = nil
		lane := sess.pub.pickLane()
		a := newAttempt(remaining, p.cfg.MaxNackRetries)
		a.run(ctx, lane.queue, sess.dead, watch)
		failed = append(failed, a.failed...)
		remaining = a.retry
		c.report(a)
		c.apply(a, sess)
		switch {
		case len(remaining) == 0:
		case a.nacks > 0:
			if nackBackoff == nil {
				nackBackoff = newNackBackoff()
			}
			pause(ctx, sess.stopping, nackBackoff.NextBackOff())
		default:
			// Lost with a channel while the connection lives: give the lane
			// a moment to reopen it rather than spin. A lost connection ends
			// the pause at once.
			pause(ctx, sess.stopping, retryPause)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return c.fail(failed)
}

// apply does what the fates of a's messages ask of the call before its
// next attempt, on the connection they were sent on: declare a topic whose
// queue vanished again. (The pause after nacks is run's.)
func (c *call) apply(a *attempt, sess *session) {
	if a.returns > 0 {
		sess.pub.topology.forget(c.topic)
	}
}

// handlerOf names the Router handler whose output batch is, "" if none.
func handlerOf(batch []*outgoing) string {
	if len(batch) == 0 || batch[0].ctx == nil {
		return ""
	}
	return message.HandlerNameFromCtx(batch[0].ctx)
}

// report emits what an attempt's messages came to.
func (c *call) report(a *attempt) {
	p := c.p
	p.sup.countResent(len(a.retry))
	if p.cfg.OnEvent == nil {
		return
	}
	for _, e := range [...]Event{
		{Kind: MessagesConfirmed, Messages: a.confirmed},
		{Kind: MessagesNacked, Messages: a.nacks},
		{Kind: MessagesReturned, Messages: a.returns},
		{Kind: MessagesResent, Messages: len(a.retry)},
	} {
		if e.Messages > 0 {
			p.cfg.emit(e)
		}
	}
}

func newNackBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = nackBackoffBase
	b.MaxInterval = nackBackoffMax
	b.Reset()
	return b
}

func failAll(failed []failure, msgs []*outgoing, err error) []failure {
	for _, m := range msgs {
		failed = append(failed, failure{m, err})
	}
	return failed
}

// context is the context of the call, which ends when Close gives up on it
// (its cause is ErrClosed), after PublishTimeout, or once every message's
// Context() has ended; the watch of the messages' contexts (nil when none
// can end); and what frees them once the call is over.
func (c *call) context() (ctx context.Context, watch *contextWatch, release releaser) {
	p, batch := c.p, c.batch
	// The bound starts now, before the watch of many contexts is set up.
	deadline := time.Now().Add(p.cfg.PublishTimeout)
	if !anyCanEnd(batch) {
		// The usual case (context.Background()): nothing to watch, and a
		// context made only if something waits with it (lazydeadline.go).
		// It frees itself: a method value would cost an allocation.
		l := newLazyDeadline(p.abortCtx, &p.wake, deadline, p.timeoutCause)
		return l, nil, l
	}
	base, cancelBase := context.WithCancelCause(p.abortCtx)
	ctx, cancel := context.WithDeadlineCause(base, deadline, p.timeoutCause)
	watch = watchContexts(batch, cancelBase)
	return ctx, watch, &contextHold{watch, cancel, cancelBase}
}

// releaser frees what a call's context holds, once the call is over.
type releaser interface{ release() }

// contextHold is what a call's context holds when its messages'
// contexts can end: their watch, and the two contexts over Close's.
type contextHold struct {
	watch      *contextWatch
	cancel     context.CancelFunc
	cancelBase context.CancelCauseFunc
}

func (w *contextHold) release() {
	w.watch.stop()
	w.cancel()
	w.cancelBase(nil)
}

// deadlineErr turns the end of the call's context into the reason the
// messages were not confirmed; other errors pass through.
func deadlineErr(ctx context.Context, err error) error {
	if ctx.Err() == nil || IsPermanent(err) && !errors.Is(err, context.Canceled) {
		return err
	}
	if err == ctx.Err() {
		return fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(ctx))
	}
	return fmt.Errorf("%w: %w; %v", ErrNotConfirmed, context.Cause(ctx), err)
}

func pause(ctx context.Context, stop <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-stop:
	case <-t.C:
	}
}

// fail is the call's answer when messages failed: a PublishError naming
// them in call order, with the most telling cause: a permanent one if any,
// so that IsPermanent errs on the side of not retrying a publish that
// cannot succeed.
func (c *call) fail(failed []failure) error {
	p, topic := c.p, c.topic
	slices.SortFunc(failed, func(x, y failure) int { return x.msg.index - y.msg.index })
	ids := make([]string, len(failed))
	var cause error
	var byClass failureCounts
	defer byClass.emit(p.cfg)
	closed := false
	for i, f := range failed {
		ids[i] = f.msg.uuid
		err := f.err
		if f.msg.nacks > 0 && errors.Is(err, ErrNotConfirmed) {
			err = fmt.Errorf("%w (nacked %d time(s) before: %w)", err, f.msg.nacks, ErrNacked)
		}
		if p.cfg.OnEvent != nil {
			byClass.add(err)
		}
		if cause == nil || IsPermanent(err) && !IsPermanent(cause) {
			cause = err
		}
		closed = closed || errors.Is(err, ErrClosed)
	}
	if closed {
		p.abandonedMu.Lock()
		p.abandoned = append(p.abandoned, ids...)
		p.abandonedMu.Unlock()
	}
	p.logger.Debug("Publish failed", watermill.LogFields{"topic": topic, "unconfirmed": len(ids), "error": cause.Error()})
	return &PublishError{Topic: topic, Unconfirmed: ids, Err: cause}
}

// failureCounts counts failed messages by ErrorClass, so that a call
// reports one MessagesFailed event per class (with the first error of it),
// not one per message.
type failureCounts []failureCount

type failureCount struct {
	class string
	first error
	n     int
}

func (c *failureCounts) add(err error) {
	class := ErrorClass(err)
	for i := range *c {
		if (*c)[i].class == class {
			(*c)[i].n++
			return
		}
	}
	*c = append(*c, failureCount{class, err, 1})
}

func (c failureCounts) emit(cfg *settings) {
	for _, f := range c {
		cfg.emit(Event{Kind: MessagesFailed, Messages: f.n, Err: f.first})
	}
}
