package core

import (
	"errors"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// How a subscription gets a consumer (subscription.run asks for one each
// time it attaches): a connection, a channel, its topology declared, Qos
// and Consume, the attach bounded, and retried until it has one or ends.

// attach waits for a connection, opens a channel, declares the topology,
// sets Qos and starts consuming, retrying with a fresh backoff until it
// succeeds; nil means the subscription ends.
func (sub *subscription) attach() *consumer {
	b := sub.s.cfg.Reconnect.newBackoff()
	var refused lastRefusal
	for attempt := 1; ; attempt++ {
		sess, err := sub.s.sup.await(sub.ctx)
		if err != nil {
			sub.reportFirst(nil)
			if sub.ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return nil
			}
			// Dialing fails permanently for now (e.g. credentials revoked):
			// keep waiting, the supervisor keeps dialing. It logged the
			// refusal once, at ERROR: every subscription saying so again
			// at every attempt would bury it.
			sub.logger.Debug("Cannot consume: not connected", watermill.LogFields{"attempt": attempt, "reason": err.Error()})
		} else {
			c, err := sub.open(sess, attachBound(sess, int(sub.lateAttaches.Load())))
			if sub.reportFirst(err) {
				return nil // Subscribe returns err
			}
			if err == nil {
				sub.lateAttaches.Store(0)
				sub.s.sup.limit.opened(sub)
				return c
			}
			switch {
			case errors.Is(err, ErrChannelLimit):
				sub.s.sup.limit.refusedBy(sub, "subscription to "+sub.queue, err)
			case !errors.Is(err, errConnectionLost):
				// A permanent refusal (a missing queue, access refused)
				// needs a person: ERROR once, and again whenever the
				// broker's reason changes (the next step refused once an
				// operator fixed the first); anything else the retry
				// absorbs.
				switch {
				case IsPermanent(err) && refused.isNew(err):
					sub.logger.Error("Cannot consume, will retry", err, watermill.LogFields{"attempt": attempt})
				case IsPermanent(err):
					sub.logger.Debug("Cannot consume, still refused, will retry", watermill.LogFields{"attempt": attempt, "reason": err.Error()})
				default:
					sub.logger.Info("Cannot consume yet, will retry", watermill.LogFields{"attempt": attempt, "reason": err.Error()})
				}
			}
		}
		wait := time.NewTimer(b.NextBackOff())
		select {
		case <-wait.C:
		case <-sub.ctx.Done():
			wait.Stop()
			return nil
		}
	}
}

// open starts a consumer on sess, and waits for it at most bound: an
// attach unanswered by then is given up on, and open returns an
// attachStalledError. The attach itself is bounded as any request is
// (startBounded). One that may not be given up on is only that.
func (sub *subscription) open(sess *session, bound time.Duration) (*consumer, error) {
	if !sub.mayGiveUp() {
		return sub.started(sess, sub.startBounded(sess))
	}
	h := newAttachHandoff()
	if !sess.goTracked(func() {
		o := sub.startBounded(sess)
		if !h.deliver(o) && o.c != nil {
			sub.lateAttaches.Add(1)
			o.c.abandon()
		}
	}) {
		return nil, errConnectionLost
	}
	timer := time.NewTimer(bound)
	defer timer.Stop()
	var o attachOutcome
	var givenUp error // what open returns if the attach is given up on
	select {
	case o = <-h.done:
	case <-timer.C:
		givenUp = &attachStalledError{queue: sub.queue, after: bound}
	case <-sub.ctx.Done():
		givenUp = errConnectionLost // the subscription ends: nothing to report
	}
	if givenUp != nil {
		var arrived bool
		if o, arrived = h.giveUp(); !arrived {
			return nil, givenUp
		}
	}
	return sub.started(sess, o)
}

// startBounded starts a consumer on sess within the bound of a reply (see
// awaitReply).
func (sub *subscription) startBounded(sess *session) (o attachOutcome) {
	o.err = sess.trust.awaitReply("the start of a consumer of "+sub.queue, func() (err error) {
		o.c, err = sub.start(sess)
		return err
	})
	return o
}

// started takes the consumer of an attach that ended with o as the
// subscription's, or says why there is none.
func (sub *subscription) started(sess *session, o attachOutcome) (*consumer, error) {
	if o.err != nil {
		return nil, sess.channelErr(o.err)
	}
	o.c.markStarted(sub)
	return o.c, nil
}

// mayGiveUp reports whether an attach of sub may be given up on: not for
// an auto-delete queue (closing a late consumer that is its only one
// deletes it) nor an exclusive consumer (the late one and the fresh one
// would race for the queue).
func (sub *subscription) mayGiveUp() bool {
	cfg := sub.s.cfg.AMQP
	return !cfg.QueueAutoDelete && !cfg.Consume.Exclusive
}

// start opens a channel, declares the topology on it, sets the prefetch
// and starts consuming. A failure at any step closes the channel.
func (sub *subscription) start(sess *session) (*consumer, error) {
	cfg := sub.s.cfg.AMQP
	ch, err := sess.openChannel()
	if err != nil {
		return nil, err
	}
	c := &consumer{sess: sess, ch: ch, dead: make(chan struct{}),
		acks: newAckBatch(sub.s.cfg.AckBatch, sub.s.cfg.AckBatchWait, cfg.Consume.PrefetchCount)}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	go func() { // ends when amqp091-go closes the notification channel
		for e := range closed {
			if sess.conn.IsClosed() { // part of the connection's loss, which the supervisor logs
				sub.logger.Debug("Channel closed with its connection", watermill.LogFields{"reason": e.Error()})
			} else {
				sub.logger.Info("Channel closed", watermill.LogFields{"reason": e.Error()})
			}
			c.mu.Lock()
			c.why = e
			report := c.started && !c.reported
			c.reported = c.reported || report
			c.mu.Unlock()
			if report {
				sub.reportLost(e)
			}
		}
		close(c.dead)
	}()
	fail := func(err error) (*consumer, error) {
		_ = ch.Close()
		<-c.dead
		return nil, err
	}
	if err := cfg.BuildTopology(ch, sub.topic, sub.queue, sub.exchange, sub.logger); err != nil {
		return fail(err)
	}
	if q := cfg.Consume; q.PrefetchCount != 0 || q.PrefetchSize != 0 {
		// Per consumer, whatever Qos.Global says: this channel has one
		// consumer, so it is the same limit, and quorum queues refuse a
		// global one (540 NOT_IMPLEMENTED, closing the whole connection).
		if err := ch.Qos(q.PrefetchCount, q.PrefetchSize, false); err != nil {
			return fail(err)
		}
	}
	c.deliveries, err = ch.Consume(sub.queue, cfg.Consume.Consumer, false,
		cfg.Consume.Exclusive, cfg.Consume.NoLocal, cfg.Consume.NoWait, cfg.Consume.Arguments)
	if err != nil {
		return fail(err)
	}
	return c, nil // started by the subscription: see markStarted
}
