package resilient

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

var errConfirmTimeout = errors.New("confirm timeout: channel deemed stuck")

// lane is one confirm-mode channel and the one goroutine that owns it: it
// claims deliveries from its queue, writes them, and matches the
// broker's confirms to them by delivery tag, with up to MaxInFlight
// unconfirmed at once. Nothing else touches the channel, so no lock is held
// around the network. When the channel dies, the lane reports every
// unconfirmed delivery to its caller (to be re-sent, or failed when the
// broker's reason names it) and, while the connection lives, opens another.
type lane struct {
	sess    *session
	id      int
	queue   chan *delivery // deliveries waiting to be claimed
	logger  watermill.LoggerAdapter
	pending fifo
	// returned holds mandatory messages the broker returned, by message ID,
	// until their ack arrives (a return always precedes its ack). A return
	// carries no delivery tag: two mandatory messages in flight on one
	// channel with the same message ID (the same message published twice at
	// once) can have a return attributed to the wrong one.
	returned map[string]amqp091.Return
	// resumedAt is when the broker last unblocked the connection: time spent
	// blocked does not count against ConfirmTimeout.
	resumedAt time.Time
}

func newLane(sess *session, id int) *lane {
	return &lane{
		sess:     sess,
		id:       id,
		queue:    make(chan *delivery, sess.cfg.MaxInFlight),
		logger:   sess.logger.With(watermill.LogFields{"lane": id}),
		returned: make(map[string]amqp091.Return),
	}
}

func (l *lane) run() {
	defer l.sess.wg.Done()
	for {
		ch := l.open()
		if ch == nil {
			return
		}
		cause := l.serve(ch)
		l.failPending(cause)
		if cause == nil || l.sess.conn.IsClosed() {
			return
		}
		l.logger.Info("Publishing channel closed, reopening", watermill.LogFields{"reason": cause.Error()})
		select {
		case <-l.sess.stopping:
			return
		case <-time.After(defaultChannelReopenBackoff):
		}
	}
}

// open returns a channel in confirm mode, or nil once the connection is gone
// or the session ends.
func (l *lane) open() *amqp091.Channel {
	wait := defaultChannelReopenBackoff
	for {
		ch, err := l.sess.conn.Channel()
		if err == nil {
			if err = ch.Confirm(false); err == nil {
				return ch
			}
			_ = ch.Close()
		}
		if l.sess.conn.IsClosed() {
			return nil
		}
		l.logger.Error("Cannot open publishing channel, retrying", err, nil)
		select {
		case <-l.sess.stopping:
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
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
	watchdog := time.NewTicker(l.sess.cfg.ConfirmTimeout / 4)
	defer watchdog.Stop()

	wasBlocked := false
	for {
		blocked, flowChanged := l.sess.flowNow()
		if wasBlocked && !blocked {
			l.resumedAt = time.Now()
		}
		wasBlocked = blocked
		var intake <-chan *delivery
		if !blocked && l.pending.len() < window {
			intake = l.queue
		}
		var oldestDone <-chan struct{}
		if head := l.pending.peek(); head != nil {
			oldestDone = head.dc.Done()
		}
		select {
		case <-l.sess.stopping:
			return nil
		case <-flowChanged:
		case d := <-intake:
			l.take(ch, d)
			if len(l.queue) > 0 && l.pending.len() < window {
				// A run is queued behind it (a batch, or many callers): take
				// it without going round the whole select each time, and
				// write it in one go.
				l.sess.cork.cork()
				for more := true; more && l.pending.len() < window; {
					select {
					case d := <-l.queue:
						l.take(ch, d)
					default:
						more = false
					}
				}
				l.sess.cork.uncork()
			}
		case r, ok := <-returns:
			if !ok {
				returns = nil // closed with the channel: closed says why
				continue
			}
			l.returned[r.MessageId] = r
		case <-oldestDone:
			if !l.settle(ch, returns) {
				// Resolved by the channel's end, not by the broker: its
				// close notification is on its way, and says why.
				var cause error = errConnectionLost
				select {
				case e, ok := <-closed:
					cause = closeCause(e, ok)
				case <-l.sess.stopping:
				}
				l.settleAfterClose(returns)
				return cause
			}
		case e, ok := <-closed:
			l.settleAfterClose(returns)
			return closeCause(e, ok)
		case <-watchdog.C:
			if blocked, _ := l.sess.flowNow(); blocked {
				continue
			}
			if head := l.pending.peek(); head != nil && time.Since(later(head.sentAt, l.resumedAt)) > l.sess.cfg.ConfirmTimeout {
				l.logger.Error("No confirm in time: closing the channel to re-send", errConfirmTimeout,
					watermill.LogFields{"unconfirmed": l.pending.len(), "timeout": l.sess.cfg.ConfirmTimeout.String()})
				_ = ch.Close()
				l.settleAfterClose(returns)
				return errConfirmTimeout
			}
		}
	}
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

// take claims d and sends it, unless its caller gave up on it.
func (l *lane) take(ch *amqp091.Channel, d *delivery) {
	if !d.claim() {
		return // its caller gave up on it
	}
	if err := d.msg.ctx.Err(); err != nil {
		d.report(outcomeFailed, fmt.Errorf("%w: %w", ErrNotConfirmed, context.Cause(d.msg.ctx)))
		return
	}
	l.send(ch, d)
}

func (l *lane) send(ch *amqp091.Channel, d *delivery) {
	m := d.msg
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
}

// settle reports the oldest messages whose confirmation has arrived, in
// order, and stops at the first still waiting. It returns false when it
// meets a confirmation resolved negatively because the channel ended
// (amqp091-go resolves every outstanding one so when a channel closes): that
// is no nack, and stays pending for failPending.
func (l *lane) settle(ch *amqp091.Channel, returns <-chan amqp091.Return) bool {
	for head := l.pending.peek(); head != nil; head = l.pending.peek() {
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

// settleAfterClose reports, once the channel is closed, the messages the
// broker confirmed before it closed; the others stay pending for
// failPending. amqp091-go resolves every outstanding confirmation as it
// closes a channel, so the wait is short; it ends with the session anyway.
func (l *lane) settleAfterClose(returns <-chan amqp091.Return) {
	var unconfirmed fifo
	for l.pending.len() > 0 {
		d := l.pending.pop()
		select {
		case <-d.dc.Done():
			if d.dc.Acked() {
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
func (l *lane) report(d *delivery, acked bool, returns <-chan amqp091.Return) {
	id := d.msg.publishing.MessageId
	if d.msg.mandatory {
		l.collectReturns(returns)
	}
	switch {
	case !acked:
		delete(l.returned, id)
		d.report(outcomeNacked, ErrNacked)
	case d.msg.mandatory && len(l.returned) > 0:
		if r, ok := l.returned[id]; ok {
			delete(l.returned, id)
			d.report(outcomeFailed, fmt.Errorf("%w: %d %s (exchange %q, routing key %q)",
				ErrUnroutable, r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey))
			return
		}
		d.report(outcomeAcked, nil)
	default:
		d.report(outcomeAcked, nil)
	}
	if l.pending.len() == 0 {
		clear(l.returned)
	}
}

func (l *lane) failPending(cause error) {
	if cause == nil {
		cause = errConnectionLost
	}
	blame, exchange := blameFor(cause)
	innocent := cause
	if blame != nil {
		// The broker named the culprit: the others were merely in flight on
		// the same channel, and must not count it against themselves.
		innocent = fmt.Errorf("%w: channel closed by another message's fault (%v)", errConnectionLost, cause)
	}
	if exchange != "" {
		l.sess.suspectExchange(exchange)
	}
	for l.pending.len() > 0 {
		d := l.pending.pop()
		switch {
		case blame != nil && blame(d.msg) && errors.Is(classifyBroker(cause), ErrNotFound):
			d.report(outcomeLost, cause) // a strike: see maxStrikes
		case blame != nil && blame(d.msg):
			d.report(outcomeFailed, classifyBroker(cause))
		default:
			d.report(outcomeLost, innocent)
		}
	}
	clear(l.returned)
}

// blameFor reads a channel's close reason and returns which messages it
// names as the fault (nil when it names none), and the exchange it names.
func blameFor(cause error) (blame func(*outgoing) bool, exchange string) {
	var ae *amqp091.Error
	if !errors.As(cause, &ae) || !ae.Server {
		return nil, ""
	}
	switch ae.Code {
	case amqp091.NotFound, amqp091.AccessRefused:
		// "NOT_FOUND - no exchange 'x' in vhost '/'"
		if !strings.Contains(ae.Reason, "exchange '") {
			return nil, ""
		}
		name, ok := quotedName(ae.Reason)
		if !ok {
			return nil, ""
		}
		return func(m *outgoing) bool { return m.exchange == name }, name
	case amqp091.PreconditionFailed:
		// "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024"
		const marker = "max size "
		i := strings.LastIndex(ae.Reason, marker)
		if i < 0 {
			return nil, ""
		}
		limit, err := strconv.Atoi(strings.TrimSpace(ae.Reason[i+len(marker):]))
		if err != nil {
			return nil, ""
		}
		return func(m *outgoing) bool { return len(m.publishing.Body) > limit }, ""
	}
	return nil, ""
}
