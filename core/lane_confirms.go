package core

import (
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A lane's confirms: the broker's answers, matched to the handoffs in
// flight in delivery-tag order, and reported to their callers.

// readConfirms reports the oldest messages whose confirmation has arrived, in
// order, and stops at the first still waiting. It returns false when it
// meets a confirmation resolved negatively because the channel ended
// (amqp091-go resolves every outstanding one so when a channel closes): that
// is no nack, and stays pending for failPending.
func (l *lane) readConfirms(ch *amqp091.Channel, returns <-chan amqp091.Return) bool {
	for head := l.pending.oldest(); head != nil; head = l.pending.oldest() {
		if !l.sess.confirmsBelievable() {
			return true // a pulse is out: the lane waits for it
		}
		select {
		case <-head.dc.Done():
		default:
			return true
		}
		// A channel marks itself closed before it resolves its confirmations.
		if !head.dc.Acked() && ch.IsClosed() {
			return false
		}
		l.report(l.pending.pop(), head.dc.Acked(), returns)
	}
	return true
}

// readConfirmsAfterClose reports, once the channel is closed, the messages the
// broker confirmed before it closed, unless a pulse is out or went
// unanswered (pulse.go); the others stay pending for failPending.
// amqp091-go resolves every outstanding confirmation as it closes a
// channel, so the wait is short; it ends with the session anyway.
func (l *lane) readConfirmsAfterClose(returns <-chan amqp091.Return) {
	var unconfirmed inFlight
	for l.pending.len() > 0 {
		d := l.pending.pop()
		select {
		case <-d.dc.Done():
			if d.dc.Acked() && l.sess.confirmsBelievable() {
				l.report(d, true, returns)
				continue
			}
		case <-l.sess.stopping:
		}
		unconfirmed.push(d)
	}
	l.pending = unconfirmed
}

// collectReturns takes the returns the broker sent so far. amqp091-go hands
// a return over before it resolves the ack of the same message, so
// collecting them once that ack is seen attributes every one.
func (l *lane) collectReturns(returns <-chan amqp091.Return) {
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				return
			}
			l.returned[r.MessageId] = r
		default:
			return
		}
	}
}

// report tells d's caller how the broker answered.
func (l *lane) report(d *handoff, acked bool, returns <-chan amqp091.Return) {
	l.forgetMandatoryID(d)
	m := d.msg
	if m.mandatory {
		l.collectReturns(returns)
	}
	r, wasReturned := l.returned[m.publishing.MessageId]
	if wasReturned {
		delete(l.returned, m.publishing.MessageId)
	}
	switch {
	case !acked:
		l.replace = l.replace || time.Since(l.openedAt) >= nackReplaceMinAge
		d.report(outcomeNacked, ErrNacked)
	case wasReturned && m.mandatory:
		why := fmt.Errorf("%d %s (exchange %q, routing key %q)", r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey)
		switch {
		case m.ownQueue:
			d.report(outcomeReturned, why)
		case m.exclusive:
			d.report(outcomeFailed, fmt.Errorf("%w: %w: the queue is exclusive (Queue.Exclusive), so it exists only while a subscriber's connection holds it, and none does", ErrUnroutable, why))
		default:
			d.report(outcomeFailed, fmt.Errorf("%w: %w", ErrUnroutable, why))
		}
	default:
		d.report(outcomeAcked, nil)
	}
	if acked {
		l.sess.pace.observe(time.Since(later(d.sentAt, l.resumedAt)))
		l.sess.pub.size.took(len(m.publishing.Body))
		l.heardAt, l.unheard = time.Now(), 0
		l.sess.confirmed()
	}
	if l.pending.len() == 0 {
		clear(l.returned)
	}
}
