package core

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

var (
	errConfirmTimeout = errors.New("confirm timeout: channel deemed stuck")
	// errHeldBack: not sent, because an earlier message of the same call
	// must be sent again first.
	errHeldBack = fmt.Errorf("%w: held back behind an earlier message of the call", errConnectionLost)
	// errReplaced: the lane replaced a channel the broker nacked on.
	errReplaced = fmt.Errorf("%w: channel replaced after a nack", errConnectionLost)
	// errStalled: the lane replaced a channel that confirmed nothing for
	// stallBound while it owed confirms.
	errStalled = fmt.Errorf("%w: channel replaced after confirming nothing for a while", errConnectionLost)
)

// How long a lane waits before reopening a channel, at first.
const channelReopenBackoff = 50 * time.Millisecond

// lane is one confirm-mode channel and the one goroutine that owns it: it
// claims handoffs from its queue, writes them, and matches the broker's
// confirms to them by delivery tag, with up to MaxInFlight unconfirmed at
// once. Nothing else touches the channel, so no lock is held around the
// network. When the channel dies, the lane reports every unconfirmed
// handoff to its caller (to be re-sent, or failed when the broker's reason
// names it) and, while the connection lives, opens another.
//
// A handoff marked solo (in flight when the broker closed a channel
// without saying which message was at fault) is sent alone: the lane waits
// until nothing else is in flight, sends it, and sends nothing more until
// it is settled. If the channel dies then, it was the culprit. A body larger
// than any the broker took on this connection goes alone too, so that a
// size the broker refuses costs no other message (sizelimit.go).
type lane struct {
	sess    *session
	id      int
	queue   chan *handoff // handoffs waiting to be claimed
	logger  watermill.LoggerAdapter
	pending inFlight
	held    *handoff // a claimed solo handoff, waiting for pending to empty
	// returned holds mandatory messages the broker returned, by message ID,
	// until their ack arrives (a return always precedes its ack). A return
	// carries no delivery tag, only the message: so that it is pinned on
	// the right one, no two mandatory messages with one ID are in flight on
	// a channel at once (the same message published twice at once: the
	// second is held until the channel is empty). mandatoryIDs counts those
	// in flight.
	returned     map[string]amqp091.Return
	mandatoryIDs map[string]int
	// resumedAt is when the broker last unblocked the connection: time spent
	// blocked does not count against ConfirmTimeout.
	resumedAt time.Time
	// heardAt is when the channel was opened or last confirmed a message:
	// one that owes confirms and hears nothing for stallBound is replaced.
	heardAt time.Time
	// unheard counts the channels the lane replaced, for a time-out or a
	// stall, since it last heard a confirm.
	unheard int
	// waitingSince is when the oldest message the first of those channels
	// owed was sent: since then the lane has waited in vain.
	waitingSince time.Time
	// replace: the broker nacked on this channel; take nothing more, and
	// open another at once, sending again what it still owes. A channel remembers
	// where it sent its first message to a quorum queue: one that did so
	// while the queue's leader was dead (RabbitMQ 3.10) is nacked until
	// that node returns, while a fresh channel reaches the new leader.
	// Only a channel older than nackReplaceMinAge is replaced so: a queue
	// that nacks whatever the channel (full, with x-overflow
	// reject-publish) would otherwise keep every lane replacing its
	// channel, and the other topics' calls waiting on them.
	replace  bool
	openedAt time.Time // of the current channel
}

// nackReplaceMinAge is how old a channel must be for a nack to replace it.
const nackReplaceMinAge = time.Second

func newLane(sess *session, id int) *lane {
	return &lane{
		sess:     sess,
		id:       id,
		queue:    make(chan *handoff, sess.cfg.MaxInFlight),
		logger:   sess.logger.With(watermill.LogFields{"lane": id}),
		returned: make(map[string]amqp091.Return),

		mandatoryIDs: make(map[string]int),
	}
}

func (l *lane) run() {
	defer l.sess.wg.Done()
	for {
		ch := l.open()
		if ch == nil {
			l.failPending(nil, false)
			return
		}
		// A new channel: whatever ended the last one (a nack, a time-out, the
		// broker), this one has not been nacked.
		now := time.Now()
		l.replace, l.openedAt, l.heardAt = false, now, now
		cause := l.serve(ch)
		// amqp091-go marks the connection closed before it closes its
		// channels: a channel that died alone sees it open.
		l.failPending(cause, !l.sess.conn.IsClosed())
		if cause == nil {
			return
		}
		switch cause {
		case errReplaced, errConfirmTimeout, errStalled:
			// Closed by us (a nack, or confirms not coming), the connection
			// lives: open another at once, the lane takes nothing
			// meanwhile. serve logged the time-out or the stall.
			if cause == errReplaced {
				l.logger.Debug("Publishing channel nacked: replacing it", nil)
			}
			continue
		}
		if l.sess.conn.IsClosed() {
			// Part of the connection's loss, which the supervisor logs.
			l.logger.Debug("Publishing channel closed with its connection", watermill.LogFields{"reason": cause.Error()})
		} else {
			l.logger.Info("Publishing channel closed, reopening", watermill.LogFields{"reason": cause.Error()})
		}
		select {
		case <-l.sess.stopping:
			return
		case <-time.After(channelReopenBackoff):
		}
	}
}

// open returns a channel in confirm mode, or nil once the session ends.
func (l *lane) open() *amqp091.Channel {
	wait := channelReopenBackoff
	for {
		var ch *amqp091.Channel
		err := l.sess.awaitReply("a publishing channel's opening", func() (err error) {
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

// laneKey names a lane's refusals in channelLimit: the same lane number on
// the next connection clears them.
type laneKey int

// canTake reports whether the lane may claim another handoff now.
func (l *lane) canTake(window int) bool {
	if l.replace || l.held != nil || l.pending.len() >= window {
		return false
	}
	head := l.pending.oldest()
	return head == nil || !head.solo // nothing goes out beside a solo one
}

// serve runs the channel until it dies, returning why, or until the session
// ends, returning nil.
func (l *lane) serve(ch *amqp091.Channel) error {
	window := l.sess.cfg.MaxInFlight
	// Confirms are read from each message's DeferredConfirmation, oldest
	// first, rather than from NotifyPublish: amqp091-go hands a NotifyPublish
	// listener one confirmation per tag, arming a timer for each, so a
	// multiple-ack of 200 messages would wake this goroutine 200 times
	// instead of once.
	returns := ch.NotifyReturn(make(chan amqp091.Return, window))
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	watchdog := time.NewTicker(pulseAfter / 2)
	defer watchdog.Stop()

	wasBlocked := false
	for {
		blocked, flowChanged := l.sess.flowNow()
		if wasBlocked && !blocked {
			l.resumedAt = time.Now()
		}
		wasBlocked = blocked
		var intake <-chan *handoff
		if !blocked && l.canTake(window) {
			intake = l.queue
		}
		// No confirm is reported while a pulse is out (pulse.go): wait for
		// its answer first.
		var oldestDone <-chan struct{}
		pulse := l.sess.pulseOutstanding()
		if head := l.pending.oldest(); head != nil && pulse == nil && !l.sess.distrust.Load() {
			oldestDone = head.dc.Done()
		}
		select {
		case <-l.sess.stopping:
			return nil
		case <-flowChanged:
		case <-pulse:
		case d := <-intake:
			l.take(ch, d)
			if len(l.queue) > 0 && l.canTake(window) {
				// A run is queued behind it (a batch, or many callers): take
				// it without going round the whole select each time, and
				// write it in one go.
				l.sess.sock.cork()
				for more := true; more && l.canTake(window); {
					select {
					case d := <-l.queue:
						l.take(ch, d)
					default:
						more = false
					}
				}
				l.sess.sock.uncork()
			}
		case r, ok := <-returns:
			if !ok {
				returns = nil // closed with the channel: closed says why
				continue
			}
			l.returned[r.MessageId] = r
		case <-oldestDone:
			if !l.readConfirms(ch, returns) {
				// Resolved by the channel's end, not by the broker: its
				// close notification is on its way, and says why.
				var cause error = errConnectionLost
				select {
				case e, ok := <-closed:
					cause = closeCause(e, ok)
				case <-l.sess.stopping:
				}
				l.readConfirmsAfterClose(returns)
				return cause
			}
			if l.replace {
				// Nacked: what is still owed goes to a fresh channel now,
				// not once this one drained (it may never).
				l.retire(ch, returns)
				return errReplaced
			}
			if l.pending.len() == 0 && l.held != nil {
				d := l.held
				l.held = nil
				l.send(ch, d)
			}
		case e, ok := <-closed:
			l.readConfirmsAfterClose(returns)
			return closeCause(e, ok)
		case <-watchdog.C:
			if blocked, _ := l.sess.flowNow(); blocked {
				continue
			}
			head := l.pending.oldest()
			if head == nil {
				continue
			}
			owedFor := time.Since(later(head.sentAt, l.resumedAt))
			if owedFor > pulseAfter && l.sess.sock.silentFor() > pulseAfter {
				l.sess.startPulse() // dark, or busy? See pulse.go.
			}
			if isDone(head.dc.Done()) || l.sess.pulseOutstanding() != nil {
				continue // a confirm a pulse holds, or one being read
			}
			// As configured, unless the broker answers slowly (pace.go).
			confirmTimeout := l.sess.pace.stretch(l.sess.cfg.ConfirmTimeout)
			if leave := leaveBound(confirmTimeout); l.unheard > 0 && l.sess.canLeaveNode() &&
				time.Since(later(later(l.waitingSince, l.sess.lastConfirm()), l.resumedAt)) > leave {
				// Nothing confirmed on this connection for leaveBound,
				// though its channels were replaced meanwhile (stalled):
				// leave the node for another URI. See unconfirming.go.
				noteNodeLeft(l.sess.uri) // for a Subscriber on it (nodesleft.go)
				l.sess.breakOff(&unconfirmingNodeError{after: leave})
				continue // the connection's end follows
			}
			if owedFor > confirmTimeout {
				// Absorbed: the messages are sent again on a new channel.
				l.logger.Info("No confirm in time: replacing the channel to re-send",
					watermill.LogFields{"unconfirmed": l.pending.len(), "timeout": confirmTimeout.String()})
				l.giveUpOn(ch, returns)
				return errConfirmTimeout
			}
			if stalled := time.Since(later(later(head.sentAt, l.heardAt), l.resumedAt)); stalled > stallBound(confirmTimeout) && !l.sess.sock.writing() {
				l.logger.Info("No confirm on the channel for a while: replacing it to re-send", watermill.LogFields{
					"unconfirmed": l.pending.len(), "stalled": stalled.Round(time.Millisecond).String()})
				l.giveUpOn(ch, returns)
				return errStalled
			}
		}
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
// failPending (sent again on a fresh channel now), and ch is closed in the
// background (closeInBackground). A stuck channel never holds a message:
// its broker may answer the close only much later (a channel bound to a
// quorum queue leader on the far side of a partition answers after the
// heal). Whatever the old channel confirms later is not counted: the
// message was sent again, at worst a duplicate.
func (l *lane) retire(ch *amqp091.Channel, returns <-chan amqp091.Return) {
	var owed inFlight
	for l.pending.len() > 0 {
		d := l.pending.pop()
		if isDone(d.dc.Done()) && l.sess.confirmsBelievable() && (d.dc.Acked() || !ch.IsClosed()) {
			l.report(d, d.dc.Acked(), returns)
			continue
		}
		owed.push(d)
	}
	l.pending = owed
	l.sess.closeInBackground(ch)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// closeCause is why a channel closed, from its close notification.
func closeCause(e *amqp091.Error, ok bool) error {
	if ok && e != nil {
		return e
	}
	return errConnectionLost
}

// take claims d and sends it, unless its caller gave up on it, or an earlier
// message of its call must be sent again first, or it must go alone (a
// suspect), or a mandatory message with its ID is in flight: then it is held
// until the channel is empty.
func (l *lane) take(ch *amqp091.Channel, d *handoff) {
	if !d.claim() {
		return // its caller gave up on it
	}
	if l.refuseOversized(d) {
		return
	}
	// A body larger than any the broker took on this connection goes alone
	// too: if the broker refuses it, it loses no other message its channel
	// (sizelimit.go).
	d.solo = d.solo || l.sess.pub.size.alone(len(d.msg.publishing.Body))
	if l.pending.len() > 0 && (d.solo || d.msg.mandatory && l.mandatoryIDs[d.msg.publishing.MessageId] > 0) {
		l.held = d
		return
	}
	l.send(ch, d)
}

// refuseOversized fails d at once when its body is larger than the limit
// the broker named when it refused another one on this connection: sent,
// it would only close the channel again.
func (l *lane) refuseOversized(d *handoff) bool {
	n := len(d.msg.publishing.Body)
	limit, over := l.sess.pub.size.over(n)
	if over {
		d.report(outcomeFailed, fmt.Errorf("%w: %s has %d bytes, more than the broker's max_message_size (%d, as it said when it refused a message on this connection); not sent",
			ErrMessageTooLarge, d.msg.uuid, n, limit))
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

func (l *lane) send(ch *amqp091.Channel, d *handoff) {
	m := d.msg
	if d.att.cut.Load() {
		d.report(outcomeLost, errHeldBack)
		return
	}
	if err := m.ctx.Err(); err != nil {
		d.report(outcomeFailed, messageContextEnded(m))
		return
	}
	if l.refuseOversized(d) {
		return
	}
	if frameMax := l.sess.conn.Config.FrameSize; frameMax > 0 && m.headerFrame > frameMax {
		d.report(outcomeFailed, fmt.Errorf("%w: %s has %d bytes of properties and headers, more than the connection's frame_max (%d), which would close the connection",
			ErrMessageTooLarge, m.uuid, m.headerFrame, frameMax))
		return
	}
	dc, err := ch.PublishWithDeferredConfirm(m.exchange, m.routingKey, m.mandatory, false, m.publishing)
	if err != nil {
		// A write error: the channel or connection is going, and its close
		// notification follows. (What amqp091-go cannot encode never gets
		// here: Publish validates properties and headers first.)
		d.report(outcomeLost, fmt.Errorf("%w: %w", errConnectionLost, err))
		return
	}
	if dc == nil {
		// amqp091-go gives none when the channel is not in confirm mode,
		// which open made sure of; never wait on nothing.
		d.report(outcomeLost, fmt.Errorf("%w: channel not in confirm mode", errConnectionLost))
		return
	}
	d.dc, d.sentAt = dc, time.Now()
	l.pending.push(d)
	if l.sess.sock.silentFor() > pulseAfter {
		// Sent on a link silent for a while (idle, or dark): a pulse
		// after it, before its confirm is believed. See pulse.go.
		l.sess.startPulse()
	}
	if m.mandatory {
		l.mandatoryIDs[m.publishing.MessageId]++
	}
}
