package core

import (
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// What a lane reports, in order, to the attempts it serves: the broker's
// answers (acked, nacked, returned), read from each message's deferred
// confirmation oldest first, and, once its channel is gone, every message it
// still holds as lost or not sent (fact.go).

// readConfirms reports the oldest messages whose confirmation has arrived, in
// order, and stops at the first still waiting. It returns false when it
// meets a confirmation resolved negatively because the channel ended
// (amqp091-go resolves every outstanding one so when a channel closes): that
// is no nack, and stays pending for lose.
func (l *lane) readConfirms(ch *amqp091.Channel, returns <-chan amqp091.Return) bool {
	var now time.Time // read once, for every confirm read now
	for head := l.pending.oldest(); head != nil; head = l.pending.oldest() {
		if !l.sess.trust.believable() {
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
		if now.IsZero() {
			now = time.Now()
		}
		l.answered(l.pending.pop(), head.dc.Acked(), returns, now)
	}
	return true
}

// readConfirmsAfterClose reports, once the channel is closed, the messages the
// broker confirmed before it closed, unless the session's trust holds them
// (a pulse out or unanswered); the others stay pending for lose.
// amqp091-go resolves every outstanding confirmation as it closes a
// channel, so the wait is short; it ends with the session anyway.
func (l *lane) readConfirmsAfterClose(returns <-chan amqp091.Return) {
	var unconfirmed inFlight
	for l.pending.len() > 0 {
		d := l.pending.pop()
		select {
		case <-d.dc.Done():
			if d.dc.Acked() && l.sess.trust.believable() {
				l.answered(d, true, returns, time.Now())
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

// answered tells d's attempt how the broker answered it, as read at now:
// acked, nacked, or returned (and acked).
func (l *lane) answered(d *handoff, acked bool, returns <-chan amqp091.Return, now time.Time) {
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
		d.tell(fact{kind: factNacked})
	case wasReturned && m.mandatory:
		returned := r // on the heap only when returned: r is read for every message
		d.tell(fact{kind: factReturned, returned: &returned})
	default:
		d.tell(fact{kind: factAcked})
	}
	if acked {
		if !l.sess.trust.pulsedSince(d.pulses) { // a pulse may have held it
			l.sess.pace.observe(l.sess.trust.waitedUntil(d.sentAt, now))
		}
		l.size.took(len(m.publishing.Body))
		l.heardAt, l.unheard = now, 0
		l.sess.confirmed(now)
	}
	if l.pending.len() == 0 {
		clear(l.returned)
	}
}

// lose reports every handoff the lane holds once its channel is gone
// (cause, nil when the session ends; channelOnly: the connection lives):
// those in flight as lost, the one parked as not sent. What cause teaches
// about the connection is recorded first, for every lane and call of it,
// whoever waits for the messages: a size limit the broker named (larger
// bodies are refused before they are sent from now on), an exchange it
// says is missing or refused (checked on a channel of its own from now
// on).
func (l *lane) lose(cause error, channelOnly bool) {
	if cause == nil {
		cause = errConnectionLost
	}
	b := blameFor(cause)
	if b.sizeLimit > 0 {
		l.size.refuse(b.sizeLimit)
	}
	if b.exchange != "" {
		l.exchanges.suspectExchange(b.exchange)
	}
	for l.pending.len() > 0 {
		d := l.pending.pop()
		l.forgetMandatoryID(d)
		d.tell(fact{kind: factLost, cause: cause, channelOnly: channelOnly})
	}
	if l.parked != nil {
		l.parked.tell(fact{kind: factUnsent, cause: errTurnLost})
		l.parked = nil
	}
	clear(l.returned)
}
