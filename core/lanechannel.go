package core

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A lane's channel, opened and given up on: opened in confirm mode (retried
// until the session ends), replaced when it confirms nothing in time or
// after a nack without waiting for the broker to close it, and why it
// closed.

// open returns a channel in confirm mode, or nil once the session ends.
func (l *lane) open() *amqp091.Channel {
	wait := channelReopenBackoff
	for {
		var ch *amqp091.Channel
		err := l.sess.trust.awaitReply("a publishing channel's opening", func() (err error) {
			if ch, err = l.sess.openChannel(); err != nil {
				return err
			}
			if err = ch.Confirm(false); err != nil {
				_ = ch.Close()
			}
			return err
		})
		if err == nil {
			l.sess.limit.opened(laneKey(l.id))
			return ch
		}
		switch {
		case errors.Is(err, ErrChannelLimit):
			l.sess.limit.refusedBy(laneKey(l.id), fmt.Sprintf("publishing lane %d", l.id), err)
		case !l.sess.conn.IsClosed() && !isConnectionFault(err):
			l.logger.Info("Cannot open publishing channel, retrying", watermill.LogFields{"reason": err.Error()}) // absorbed
		}
		select {
		case <-l.sess.stopping:
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// giveUpOn retires ch, which owes confirms and confirmed nothing in time,
// counting it against the node (unconfirming.go).
func (l *lane) giveUpOn(ch *amqp091.Channel, returns <-chan amqp091.Return) {
	if l.unheard == 0 {
		l.waitingSince = l.pending.oldest().sentAt
	}
	l.unheard++
	l.retire(ch, returns)
}

// retire gives up on ch at once, without waiting for the broker: the
// confirms that arrived are reported, what is still owed stays pending for
// lose (sent again on a fresh channel now), and ch is closed in the
// background (closeInBackground). A stuck channel never holds a message:
// its broker may answer the close only much later (a channel bound to a
// quorum queue leader on the far side of a partition answers after the
// heal). Whatever the old channel confirms later is not counted: the
// message was sent again, at worst a duplicate.
func (l *lane) retire(ch *amqp091.Channel, returns <-chan amqp091.Return) {
	var owed inFlight
	for l.pending.len() > 0 {
		d := l.pending.pop()
		if isDone(d.dc.Done()) && l.sess.trust.believable() && (d.dc.Acked() || !ch.IsClosed()) {
			l.answered(d, d.dc.Acked(), returns, time.Now())
			continue
		}
		owed.push(d)
	}
	l.pending = owed
	l.sess.closeInBackground(ch)
}

// closeCause is why a channel closed, from its close notification.
func closeCause(e *amqp091.Error, ok bool) error {
	if ok && e != nil {
		return e
	}
	return errConnectionLost
}

// laneKey names a lane's refusals in channelLimit: the same lane number on
// the next connection clears them.
type laneKey int
