package core

import (
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// How a lane sends: it claims a handoff from its queue, parks one that must
// wait for the channel to be empty (one that goes alone, or a mandatory
// message whose ID is in flight), refuses one the broker would refuse, and
// writes the rest, in order, as deferred confirmations it then waits on
// (laneanswers.go).

// take claims d and sends it at now, unless its caller gave up on it, or
// it is larger than the broker takes, or it must go alone, or a mandatory
// message with its ID is in flight: then it is parked until the channel is
// empty.
func (l *lane) take(ch *amqp091.Channel, d *handoff, now time.Time) {
	if !d.claim() {
		return // its caller gave up on it
	}
	if l.refuseOversized(d) {
		return
	}
	// A body larger than any the broker took on this connection goes alone
	// too: if the broker refuses it, it loses no other message its channel
	// (sizelimit.go).
	d.alone = d.alone || l.size.alone(len(d.msg.publishing.Body))
	if l.pending.len() > 0 && (d.alone || d.msg.mandatory && l.mandatoryIDs[d.msg.publishing.MessageId] > 0) {
		l.parked = d
		return
	}
	l.send(ch, d, now)
}

// refuseOversized refuses d at once when its body is larger than the limit
// the broker named when it refused another one on this connection: sent,
// it would only close the channel again.
func (l *lane) refuseOversized(d *handoff) bool {
	n := len(d.msg.publishing.Body)
	limit, over := l.size.over(n)
	if over {
		d.tell(fact{kind: factRefused, cause: fmt.Errorf("%w: %s has %d bytes, more than the broker's max_message_size (%d, as it said when it refused a message on this connection); not sent",
			ErrMessageTooLarge, d.msg.uuid, n, limit)})
	}
	return over
}

// forgetMandatoryID forgets d's message ID once d left the channel
// (confirmed, nacked or lost).
func (l *lane) forgetMandatoryID(d *handoff) {
	if !d.msg.mandatory {
		return
	}
	id := d.msg.publishing.MessageId
	if l.mandatoryIDs[id] <= 1 {
		delete(l.mandatoryIDs, id)
	} else {
		l.mandatoryIDs[id]--
	}
}

// send writes d, at now (one reading of the clock for a run: the socket is
// corked, and the run leaves in one write).
func (l *lane) send(ch *amqp091.Channel, d *handoff, now time.Time) {
	m := d.msg
	if d.callStopped() {
		d.tell(fact{kind: factUnsent, cause: errHeldBack})
		return
	}
	if err := m.ctx.Err(); err != nil {
		d.tell(fact{kind: factRefused, cause: messageContextEnded(m)})
		return
	}
	if l.refuseOversized(d) {
		return
	}
	if frameMax := l.sess.conn.Config.FrameSize; frameMax > 0 && m.headerFrame > frameMax {
		d.tell(fact{kind: factRefused, cause: fmt.Errorf("%w: %s has %d bytes of properties and headers, more than the connection's frame_max (%d), which would close the connection",
			ErrMessageTooLarge, m.uuid, m.headerFrame, frameMax)})
		return
	}
	dc, err := ch.PublishWithDeferredConfirm(m.exchange, m.routingKey, m.mandatory, false, m.publishing)
	if err != nil {
		// A write error: the channel or connection is going, and its close
		// notification follows. (What amqp091-go cannot encode never gets
		// here: Publish validates properties and headers first.)
		d.tell(fact{kind: factLost, cause: fmt.Errorf("%w: %w", errConnectionLost, err)})
		return
	}
	if dc == nil {
		// amqp091-go gives none when the channel is not in confirm mode,
		// which open made sure of; never wait on nothing.
		d.tell(fact{kind: factLost, cause: fmt.Errorf("%w: channel not in confirm mode", errConnectionLost)})
		return
	}
	d.dc, d.sentAt, d.pulses = dc, now, l.sess.trust.pulseCount()
	l.pending.push(d)
	l.sess.trust.sent(now)
	if m.mandatory {
		l.mandatoryIDs[m.publishing.MessageId]++
	}
}
