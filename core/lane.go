package core

import (
	"errors"
	"runtime"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Why a lane ended a channel of its own accord, the connection alive: what
// the channel owed is sent again on a fresh one at once.
var (
	errConfirmTimeout = errors.New("confirm timeout: channel deemed stuck")
	// errReplaced: the lane replaced a channel the broker nacked on.
	errReplaced = errors.New("channel replaced after a nack")
	// errStalled: the lane replaced a channel that confirmed nothing for
	// stallBound while it owed confirms.
	errStalled = errors.New("channel replaced after confirming nothing for a while")
)

// errHeldBack: not sent, because an earlier message of the same call must
// be sent again first.
var errHeldBack = errors.New("held back behind an earlier message of the call")

// errTurnLost: not sent, because its channel ended before its turn came.
var errTurnLost = errors.New("not sent: its channel ended before its turn")

// How long a lane waits before reopening a channel, at first.
const channelReopenBackoff = 50 * time.Millisecond

// lane is one confirm-mode channel and the one goroutine that owns it: it
// claims handoffs from its queue, writes them, and matches the broker's
// confirms to them by delivery tag, with up to MaxInFlight unconfirmed at
// once. Nothing else touches the channel, so no lock is held around the
// network. It reports facts only (acked, nacked, returned, lost, not sent:
// fact.go) to each handoff's attempt; what they mean for the message is
// decided in fate.go. When the channel dies, the lane reports every handoff
// it still holds as lost and, while the connection lives, opens another.
//
// A handoff marked alone (a suspect: in flight when the broker closed a
// channel without saying which message was at fault) is sent alone: the
// lane parks it until nothing else is in flight, sends it, and sends
// nothing more until the broker answered it. If the channel dies then, it
// was the culprit. A body larger than any the broker took on this
// connection goes alone too, so that a size the broker refuses costs no
// other message (sizelimit.go).
//
// A confirm is reported only when the session's trust says it may be
// (trust.go): not while a pulse is out, nor once the connection was
// broken off.
type lane struct {
	sess  *session
	id    int
	queue chan *handoff // handoffs waiting to be claimed
	size  *sizeLimit    // what the connection learned of max_message_size
	// exchanges is the connection's topology cache, told of an exchange
	// the broker says is missing or refused (and nothing else).
	exchanges exchangeSuspicion
	logger    watermill.LoggerAdapter

	pending inFlight
	// parked is a claimed handoff waiting for pending to empty: one that
	// goes alone, or a mandatory message whose ID is in flight already.
	parked *handoff
	// returned holds mandatory messages the broker returned, by message ID,
	// until their ack arrives (a return always precedes its ack). A return
	// carries no delivery tag, only the message: so that it is pinned on
	// the right one, no two mandatory messages with one ID are in flight on
	// a channel at once (the same message published twice at once: the
	// second is parked until the channel is empty). mandatoryIDs counts
	// those in flight.
	returned     map[string]amqp091.Return
	mandatoryIDs map[string]int
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

// exchangeSuspicion is what a lane may tell the connection's topology
// cache: an exchange the broker named missing or refused, to be checked
// on a channel of its own when a topic publishing to it is declared next.
type exchangeSuspicion interface{ suspectExchange(exchange string) }

// newLane is lane id of sess; size is what the connection learns of
// max_message_size and exchanges its topology cache, both shared by its
// lanes.
func newLane(sess *session, id int, size *sizeLimit, exchanges exchangeSuspicion) *lane {
	return &lane{
		sess:      sess,
		id:        id,
		queue:     make(chan *handoff, sess.cfg.MaxInFlight),
		size:      size,
		exchanges: exchanges,
		logger:    sess.logger.With(watermill.LogFields{"lane": id}),
		returned:  make(map[string]amqp091.Return),

		mandatoryIDs: make(map[string]int),
	}
}

func (l *lane) run() {
	defer l.sess.wg.Done()
	for {
		ch := l.open()
		if ch == nil {
			l.lose(nil, false)
			return
		}
		// A new channel: whatever ended the last one (a nack, a time-out, the
		// broker), this one has not been nacked.
		now := time.Now()
		l.replace, l.openedAt, l.heardAt = false, now, now
		cause := l.serve(ch)
		// amqp091-go marks the connection closed before it closes its
		// channels: a channel that died alone sees it open.
		l.lose(cause, !l.sess.conn.IsClosed())
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

// canTake reports whether the lane may claim another handoff now.
func (l *lane) canTake(window int) bool {
	if l.replace || l.parked != nil || l.pending.len() >= window {
		return false
	}
	head := l.pending.oldest()
	return head == nil || !head.alone // nothing goes out beside one that goes alone
}

// serve runs the channel until it dies, returning why, or until the session
// ends, returning nil.
func (l *lane) serve(ch *amqp091.Channel) error {
	window := l.sess.cfg.MaxInFlight
	trust := &l.sess.trust
	// Confirms are read from each message's DeferredConfirmation, oldest
	// first, rather than from NotifyPublish: amqp091-go hands a NotifyPublish
	// listener one confirmation per tag, arming a timer for each, so a
	// multiple-ack of 200 messages would wake this goroutine 200 times
	// instead of once.
	//
	// Returns are not waited on: amqp091-go hands a return over before it
	// resolves the ack of the same message, so they are collected when a
	// mandatory message's ack is read (collectReturns). The buffer holds
	// them meanwhile, and never fills: only a message in flight can come
	// back, once, and no more than window are in flight.
	returns := ch.NotifyReturn(make(chan amqp091.Return, window))
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	watchdog := time.NewTicker(pulseAfter / 2)
	defer watchdog.Stop()

	for {
		blocked, flowChanged := trust.flowNow()
		var claimable <-chan *handoff
		if !blocked && l.canTake(window) {
			claimable = l.queue
		}
		// A confirm that arrived waits while a pulse is out (trust.go).
		var oldestDone <-chan struct{}
		believable, pulse := trust.gate()
		if head := l.pending.oldest(); head != nil && believable {
			oldestDone = head.dc.Done()
		}
		select {
		case <-l.sess.stopping:
			return nil
		case <-flowChanged:
		case <-pulse:
		case d := <-claimable:
			// Take it, and the run queued behind it (a batch, or many
			// callers), without going round the whole select each time, and
			// write them in one go. On a busy lane (confirms owed), the
			// callers the last confirms woke hand their next messages over
			// as this one is taken: a yield lets them, so that theirs go in
			// this write rather than one write each. An idle lane's message
			// (a lone caller's) goes at once.
			busy, now := l.pending.len() > 0, time.Now()
			l.sess.sock.cork()
			l.take(ch, d, now)
			if busy && len(l.queue) == 0 {
				runtime.Gosched()
			}
			for more := true; more && l.canTake(window); {
				select {
				case d := <-l.queue:
					l.take(ch, d, now)
				default:
					more = false
				}
			}
			l.sess.sock.uncork()
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
			if l.pending.len() == 0 && l.parked != nil {
				d := l.parked
				l.parked = nil
				l.send(ch, d, time.Now())
			}
		case e, ok := <-closed:
			l.readConfirmsAfterClose(returns)
			return closeCause(e, ok)
		case <-watchdog.C:
			// Waited on even while nothing is owed, though there is
			// nothing to do then: left out while idle, it cost CPU at one
			// goroutine publishing (1.18 times raw's instead of 1.11, 10
			// rounds on RabbitMQ 3.10.8; the runtime likely takes a ticker
			// no one waits on out of its timers, and puts it back each time).
			if blocked, _ := trust.flowNow(); blocked {
				continue
			}
			head := l.pending.oldest()
			if head == nil {
				continue
			}
			owedFor := trust.waitedSince(head.sentAt)
			trust.owed(owedFor) // dark, or busy? A pulse tells.
			if isDone(head.dc.Done()) || trust.pulseOutstanding() != nil {
				continue // a confirm a pulse holds, or one being read
			}
			// As configured, unless the broker answers slowly (pace.go).
			confirmTimeout := l.sess.pace.stretch(l.sess.cfg.ConfirmTimeout)
			if leave := leaveBound(confirmTimeout); l.unheard > 0 && l.sess.canLeaveNode() &&
				trust.waitedSince(later(l.waitingSince, l.sess.lastConfirm())) > leave {
				// Nothing confirmed on this connection for leaveBound,
				// though its channels were replaced meanwhile (stalled):
				// leave the node for another URI. See unconfirming.go.
				noteNodeLeft(l.sess.uri) // for a Subscriber on it (nodesleft.go)
				trust.breakOff(&unconfirmingNodeError{after: leave})
				continue // the connection's end follows
			}
			if owedFor > confirmTimeout {
				// Absorbed: the messages are sent again on a new channel.
				l.logger.Info("No confirm in time: replacing the channel to re-send",
					watermill.LogFields{"unconfirmed": l.pending.len(), "timeout": confirmTimeout.String()})
				l.giveUpOn(ch, returns)
				return errConfirmTimeout
			}
			if stalled := trust.waitedSince(later(head.sentAt, l.heardAt)); stalled > stallBound(confirmTimeout) && !l.sess.sock.writing() {
				l.logger.Info("No confirm on the channel for a while: replacing it to re-send", watermill.LogFields{
					"unconfirmed": l.pending.len(), "stalled": stalled.Round(time.Millisecond).String()})
				l.giveUpOn(ch, returns)
				return errStalled
			}
		}
	}
}
