package core

import (
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The handler's verdict, sent to the broker: acks held back and sent as one
// (ackbatch.go), a nack sent at once after them, a message gone back to its
// queue past its delivery limit told, and what a send that failed means (the
// channel is going: the broker delivers those messages again).

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
