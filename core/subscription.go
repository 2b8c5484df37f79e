package core

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// newUnreadableBackoff paces the nacks of messages the Marshaler cannot
// read: 100 ms, doubling, up to 5 s.
func newUnreadableBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.Reset()
	return b
}

// subscription is one Subscribe call. Its goroutine owns its channel, and
// is the only one that reads deliveries, acks and nacks.
type subscription struct {
	s                      *Subscriber
	ctx                    context.Context // the caller's, cancelled by Close too
	topic, queue, exchange string
	out                    chan *message.Message
	logger                 watermill.LoggerAdapter
	unreadable             *backoff.ExponentialBackOff // pauses before nacking what cannot be unmarshaled
	limit                  deliveryLimit               // its queue's, as far as its config tells
	// first, when Subscribe waits for it, gets the outcome of the first
	// attempt to attach (nil: attached, or not connected); nil afterwards.
	first chan<- error
	// leftUnseen: its probe last left a node, and no node counted it or
	// delivered to it since (idleprobe.go).
	leftUnseen bool
	// lateAttaches counts the attaches given up on that the broker
	// answered after all, since the last attach (attachhandoff.go).
	lateAttaches atomic.Int32
}

// reportFirst hands Subscribe the outcome of the first attempt to attach,
// once, and says whether the subscription must end: the attach failed in a
// way that Subscribe returns (see refusesSubscribe).
func (sub *subscription) reportFirst(err error) (end bool) {
	if sub.first == nil {
		return false
	}
	if err != nil && !refusesSubscribe(err) {
		err = nil // transient: attached later, as when not connected
	}
	sub.first <- err
	sub.first = nil
	return err != nil
}

// refusesSubscribe reports whether an attach that failed so fails
// Subscribe: a permanent refusal (an exclusive queue or consumer
// elsewhere, permissions), or no channel left under channel_max.
func refusesSubscribe(err error) bool {
	return IsPermanent(err) || errors.Is(err, ErrChannelLimit)
}

func (sub *subscription) run() {
	defer close(sub.out)
	defer sub.s.sup.limit.opened(sub) // no refusal outlives it
	// Paces the consumers that die as soon as they start (the broker
	// refusing what consume asked, with NoWait: an exclusive consumer
	// elsewhere), which would otherwise attach again in a tight loop.
	shortLived := sub.s.cfg.Reconnect.newBackoff()
	for attached := false; ; attached = true {
		c := sub.attach()
		if c == nil {
			sub.logger.Info("Stopped consuming", nil)
			return
		}
		if attached {
			sub.s.cfg.emit(Event{Kind: ConsumerReattached})
		}
		sub.logger.Info("Consuming", watermill.LogFields{"connection": c.sess.id})
		started := time.Now()
		stopping := sub.consume(c)
		_ = c.sess.trust.awaitReply("a consuming channel's closing", c.ch.Close) // unacked deliveries go back to the queue
		<-c.dead
		if c.cancelled && c.why == nil && !stopping {
			// Its channel lived on: reported here, not on its closing.
			sub.reportLost(errConsumerCancelled)
		}
		if stopping {
			sub.logger.Info("Stopped consuming", nil)
			return
		}
		sub.logger.Info("Consuming interrupted, resuming", watermill.LogFields{"reason": fmt.Sprint(c.why)})
		if time.Since(started) >= minConsumerLife {
			shortLived.Reset()
			continue
		}
		wait := time.NewTimer(shortLived.NextBackOff())
		select {
		case <-wait.C:
		case <-sub.ctx.Done():
			wait.Stop()
			sub.logger.Info("Stopped consuming", nil)
			return
		}
	}
}

// minConsumerLife: a consumer that ended sooner waits before attaching
// again, longer each time in a row.
const minConsumerLife = time.Second

// attach waits for a connection, opens a channel, declares the topology,
// sets Qos and starts consuming, retrying with a fresh backoff until it
// succeeds; nil means the subscription ends.
func (sub *subscription) attach() *consumer {
	b := sub.s.cfg.Reconnect.newBackoff()
	for attempt := 1; ; attempt++ {
		sess, err := sub.s.sup.await(sub.ctx)
		if err != nil {
			sub.reportFirst(nil)
			if sub.ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return nil
			}
			// Dialing fails permanently for now (e.g. credentials revoked):
			// keep waiting, the supervisor keeps dialing.
			sub.logger.Error("Cannot consume: not connected", err, watermill.LogFields{"attempt": attempt})
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
				// needs a person; anything else the retry absorbs.
				if IsPermanent(err) {
					sub.logger.Error("Cannot consume, will retry", err, watermill.LogFields{"attempt": attempt})
				} else {
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

// consume hands c's deliveries out one at a time until the channel or the
// connection dies (false: attach again) or the subscription ends (true).
//
// A consumer that has had no delivery for idleReattach attaches again too:
// deliveries the broker counts as sent to it, but that never arrived (one
// lost with none after it to show a gap; a quorum queue's delivery lost
// in a leader change, seen on RabbitMQ 3.10), stay unacked for as long as
// its channel lives. Closing it hands them back to the queue.
//
// Not for an auto-delete queue (closing its only consumer deletes it) nor
// an exclusive consumer (another could take the queue meanwhile).
func (sub *subscription) consume(c *consumer) (stopping bool) {
	idleAfter := idleReattach(sub.s.cfg.Heartbeat)
	idle := time.NewTimer(idleAfter)
	defer idle.Stop()
	var idleOver <-chan time.Time // never, for those it would harm
	if cfg := sub.s.cfg.AMQP; !cfg.QueueAutoDelete && !cfg.Consume.Exclusive {
		idleOver = idle.C
	}
	leaveCheck, stopLeaveChecks := leaveChecks(c.sess) // nodesleft.go
	defer stopLeaveChecks()
	heard := time.Now()
	var probe idleProbe // idleprobe.go
	probe.reset(heard)
	// Whatever ends the consumer, the acks it holds go first while its
	// channel lives (ackbatch.go). Not on a channel or connection that is
	// going (a write could wait for a frozen link): the broker delivers
	// those messages again.
	defer c.acks.stop()
	defer func() {
		if !isDone(c.dead) && !isDone(c.sess.stopping) {
			sub.flushAcks(c)
		}
	}()
	for {
		var d amqp091.Delivery
		var ok, got bool
		if c.acks.pending() {
			// The handler is done: a delivery ready goes on the batch,
			// none means the handler is idle, and the acks held go now.
			d, ok, got = nextReady(c.deliveries)
			if !got && !sub.flushAcks(c) {
				return false
			}
		}
		if !got {
			select {
			case now := <-leaveCheck:
				if sub.followPublisherOff(c, heard) || probe.probe(sub, c, heard, now) {
					return false
				}
				continue
			case <-idleOver:
				// Counted from the handler's last verdict: the timer is not
				// reset for every message, but armed again for the rest.
				if quiet := time.Since(heard); quiet < idleAfter {
					idle.Reset(idleAfter - quiet)
					continue
				}
				sub.logger.Info("No delivery for a while: attaching again, so that any the broker stranded come back", watermill.LogFields{"idle": idleAfter.String()})
				return false
			case d, ok = <-c.deliveries:
			case <-c.dead:
				return false
			case <-c.sess.stopping:
				return false
			case <-sub.ctx.Done():
				return true
			}
		}
		if !ok {
			// The channel died, or the broker cancelled the consumer
			// (queue deleted): never hand out the zero Delivery.
			c.cancelled = true
			return sub.ctx.Err() != nil
		}
		if d.DeliveryTag != c.lastTag+1 {
			// The broker numbers a channel's deliveries 1, 2, 3...: a
			// gap is a delivery lost on a link that lives (bytes
			// dropped between heartbeats). The broker holds it as
			// unacked until the channel closes: closing it, and
			// attaching again, has it delivered again.
			sub.logger.Info("Deliveries lost in transit: attaching again to have them redelivered", // absorbed
				watermill.LogFields{"expected_tag": c.lastTag + 1, "got_tag": d.DeliveryTag})
			return false
		}
		c.lastTag = d.DeliveryTag
		if stop, alive := sub.handle(c, d); stop || !alive {
			return stop
		}
		heard = time.Now() // the idle bound counts from here
		probe.reset(heard)
		sub.leftUnseen = false
	}
}

// handle hands one delivery to the handler and acks or nacks it as the
// handler says. alive is false when c's channel is gone: an outcome can no
// longer be sent for it (delivery tags belong to their channel), and the
// broker will deliver the message again.
func (sub *subscription) handle(c *consumer, d amqp091.Delivery) (stop, alive bool) {
	select {
	case <-c.dead: // a delivery read after its channel died is requeued already
		return false, false
	default:
	}
	cfg := sub.s.cfg.AMQP
	msg, err := unmarshal(cfg.Marshaler, cfg.StringHeadersOnly, d)
	if err != nil {
		if !sub.flushAcks(c) { // the acks held go before the pause
			return false, false
		}
		// It can never reach a handler; requeued at once it would come back
		// at once, for ever: pause first, longer each time in a row.
		wait := sub.unreadable.NextBackOff()
		sub.logger.Error("Cannot unmarshal message, nacking it after a pause", err, watermill.LogFields{"message_id": d.MessageId, "pause": wait.String()})
		select {
		case <-time.After(wait):
		case <-sub.ctx.Done():
			return true, true
		case <-c.dead:
			return false, false
		}
		return false, sub.nack(c, d, "its Marshaler cannot read it: "+err.Error(), "")
	}
	sub.unreadable.Reset()
	ctx, cancel := context.WithCancel(sub.ctx)
	defer cancel()
	msg.SetContext(ctx)

	if sub.ctx.Err() != nil { // not offered to a reader still there: the channel closes, the message goes back
		return true, true
	}
	// A reader waiting already (a Router keeping up) takes it at once,
	// without the whole select. Otherwise, while the reader takes it and
	// the handler works on it, the acks held go once the oldest has waited
	// AckBatchWait (ackbatch.go).
	offered := false
	select {
	case sub.out <- msg:
		offered = true
	default:
	}
	for !offered {
		select {
		case sub.out <- msg:
			offered = true
		case <-c.acks.dueC():
			if !sub.flushAcks(c) {
				return false, false
			}
		case <-sub.ctx.Done():
			return true, true // the channel closes: the message goes back
		case <-c.dead:
			return false, false
		case <-c.sess.stopping:
			return false, false
		}
	}
	sub.s.cfg.emit(Event{Kind: MessageDelivered, Messages: 1, Redelivered: d.Redelivered})
	// The reader it woke runs next on this thread: a yield lets a quick
	// handler give its verdict before this goroutine waits for it, which
	// then finds it there instead of being woken for it.
	runtime.Gosched()

	// The handler has it: wait for its verdict even if the channel dies
	// meanwhile, so that the redelivered copy is not handled concurrently.
	var ack, verdict bool
	select { // given already (the yield above), without the whole select
	case <-msg.Acked():
		ack, verdict = true, true
	default:
	}
	due := c.acks.dueC()
	for !verdict {
		select {
		case <-due:
			due = nil
			sub.flushAcks(c) // failed: the channel is dying, which the verdict's send finds out
		case <-msg.Acked():
			ack, verdict = true, true
		case <-msg.Nacked():
			verdict = true
		case <-sub.ctx.Done():
			// A verdict given before the cancel is sent: select picks at
			// random among ready cases, and an ack dropped here would have
			// the broker deliver a handled message again. Then the
			// subscription ends (stop), handing out nothing more.
			stop, verdict = true, true
			select {
			case <-msg.Acked():
				ack = true
			case <-msg.Nacked():
			default:
				return true, true
			}
		}
	}
	select {
	case <-c.dead:
		// One per message in hand: a detail of the fault logged once.
		sub.logger.Debug("Channel lost before the handler's outcome: the broker delivers the message again", watermill.LogFields{"message_uuid": msg.UUID})
		sub.noteLast(c, d, "its channel closed before the handler's outcome")
		return false, false
	default:
	}
	handler := message.HandlerNameFromCtx(msg.Context()) // set by a Router before its verdict
	if ack {
		sent, err := c.acks.add(c.ch, d.DeliveryTag, handler)
		return stop, sub.settle(c, err, MessageAcked, sent, handler)
	}
	return stop, sub.nack(c, d, "the handler nacked it", handler)
}

// flushAcks sends the acks c holds (ackbatch.go), and reports whether they
// went: when not, the channel is closing and the broker delivers those
// messages again.
func (sub *subscription) flushAcks(c *consumer) (alive bool) {
	sent, err := c.acks.flush(c.ch)
	return sub.settle(c, err, MessageAcked, sent, c.acks.handler)
}

// nack nacks d, requeueing it unless Consume.NoRequeueOnNack, for reason;
// handler is the Router handler's name, where known.
func (sub *subscription) nack(c *consumer, d amqp091.Delivery, reason, handler string) (alive bool) {
	requeue := !sub.s.cfg.AMQP.Consume.NoRequeueOnNack
	if !sub.flushAcks(c) { // the acks held before it go first
		return false
	}
	alive = sub.settle(c, d.Nack(false, requeue), MessageNacked, 1, handler)
	if alive && requeue {
		sub.noteLast(c, d, reason)
	}
	return alive
}

// noteLast says so, in the log and with DeliveryLimitReached, when d went
// back to its queue for reason past the queue's delivery limit: the broker
// drops it or dead-letters it, and tells no one (deliverylimit.go).
func (sub *subscription) noteLast(c *consumer, d amqp091.Delivery, reason string) {
	why, last := sub.limit.last(d, brokerMajor(c.sess.conn))
	if !last {
		return
	}
	err := fmt.Errorf("message %s went back to its queue (%s), which keeps it no longer: %s", d.MessageId, reason, why)
	sub.logger.Error("Message dropped or dead-lettered by the broker: its delivery limit reached", err, watermill.LogFields{"message_id": d.MessageId})
	sub.s.cfg.emit(Event{Kind: DeliveryLimitReached, Messages: 1, Err: err})
}

// settle reports whether an ack or nack (what) was sent, of n messages
// handler consumed (n is 0 when acks are held back, and no event is
// emitted); when it was not, the channel is closing and the messages will
// be delivered again.
func (sub *subscription) settle(c *consumer, err error, what EventKind, n int, handler string) (alive bool) {
	if err != nil {
		// One per message in hand: a detail of the fault logged once.
		sub.logger.Debug("Cannot ack or nack (channel closing): the broker delivers the message again", watermill.LogFields{"err": err.Error()})
		return false
	}
	if n > 0 {
		sub.s.cfg.emit(Event{Kind: what, Messages: n, Handler: handler})
	}
	return true
}

// idleReattach is how long a consumer may go without a delivery before it
// attaches again: five heartbeat intervals (50 s by default).
func idleReattach(heartbeat time.Duration) time.Duration { return 5 * heartbeat }

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

// reportLost reports a consumer lost while the subscription runs: not one
// that Close or the subscription's end takes down.
func (sub *subscription) reportLost(why error) {
	if sub.ctx.Err() == nil {
		sub.s.cfg.emit(Event{Kind: ConsumerLost, Err: why})
	}
}

// followPublisherOff breaks c's connection off when a Publisher of this
// process left its node after heard, the consumer's last delivery (or its
// start), and reports whether it did.
func (sub *subscription) followPublisherOff(c *consumer, heard time.Time) bool {
	if !nodeLeftSince(c.sess.uri, heard) {
		return false
	}
	sub.logger.Info("Leaving a node a publisher of this process left, with nothing delivered since", // absorbed
		watermill.LogFields{"silent": time.Since(heard).Round(time.Millisecond).String()})
	c.sess.trust.breakOff(&nodeLeftError{})
	return true
}
