package core

import (
	"context"
	"errors"
	"fmt"
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

// idleReattach is how long a consumer may go without a delivery before it
// attaches again: five heartbeat intervals (50 s by default).
func idleReattach(heartbeat time.Duration) time.Duration { return 5 * heartbeat }

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
