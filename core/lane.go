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
// it is settled. If the channel dies then, it was the culprit.
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
	// replace: the broker nacked on this channel; take nothing more, and
	// open another once what is in flight is settled. A channel remembers
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
		l.replace, l.openedAt = false, time.Now()
		cause := l.serve(ch)
		// amqp091-go marks the connection closed before it closes its
		// channels: a channel that died alone sees it open.
		l.failPending(cause, !l.sess.conn.IsClosed())
		if cause == nil {
			return
		}
		if cause == errReplaced {
			// Closed by us, the connection lives: open another at once,
			// the lane takes nothing meanwhile.
			l.logger.Debug("Publishing channel nacked: replacing it", nil)
			continue
		}
		l.logger.Info("Publishing channel closed, reopening", watermill.LogFields{"reason": cause.Error()})
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
			l.logger.Error("Cannot open publishing channel, retrying", err, nil)
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
			if l.pending.len() == 0 && l.replace {
				l.closeChannel(ch)
				l.readConfirmsAfterClose(returns)
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
			if owedFor > l.sess.cfg.ConfirmTimeout && !isDone(head.dc.Done()) { // not a confirm a pulse holds
				l.logger.Error("No confirm in time: closing the channel to re-send", errConfirmTimeout,
					watermill.LogFields{"unconfirmed": l.pending.len(), "timeout": l.sess.cfg.ConfirmTimeout.String()})
				l.closeChannel(ch)
				l.readConfirmsAfterClose(returns)
				return errConfirmTimeout
			}
		}
	}
}

// closeChannel closes ch, waiting for the broker's close-ok within bounds.
func (l *lane) closeChannel(ch *amqp091.Channel) {
	_ = l.sess.awaitReply("a publishing channel's closing", ch.Close)
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
	if l.pending.len() > 0 && (d.solo || d.msg.mandatory && l.mandatoryIDs[d.msg.publishing.MessageId] > 0) {
		l.held = d
		return
	}
	l.send(ch, d)
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
