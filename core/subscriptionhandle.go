package core

import (
	"context"
	"runtime"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

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
	cfg := &sub.s.cfg.AMQP // not a copy: this runs for every delivery
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
	// then finds it there instead of being woken for it. Not at prefetch 1:
	// no other delivery can come before this one's ack, so the wait is
	// paid anyway, and the yield (to the runtime's global queue, where the
	// idle processor the handler's wake-up started may take this goroutine
	// away from the handler's) cost more than it saved (duels of 40 pairs
	// against raw handing over the same way: CPU 1.10 and 1.12 of raw's
	// with it, 1.05 and 1.08 without). At prefetch 100 and 500 it saves:
	// 1.05 and 1.00 of the CPU of raw batching acks with it, 1.12 and 1.09
	// without (30 pairs each).
	if cfg.Consume.PrefetchCount != 1 {
		runtime.Gosched()
	}

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
