package core

import (
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
)

// noReplyError: the broker did not answer a request in time on a
// connection that still looked alive.
type noReplyError struct {
	what  string
	after time.Duration
}

func (e *noReplyError) Error() string {
	return fmt.Sprintf("no reply to %s within %s: connection deemed broken", e.what, e.after)
}

// Unwrap makes it a lost connection: what was in flight is re-sent on the
// next one.
func (e *noReplyError) Unwrap() error { return errConnectionLost }

// awaitReply runs rpc, a call that waits for the broker to answer (a
// channel opened or closed, a declaration, a consumer started).
//
// amqp091-go waits for such an answer for ever. On a connection that has
// died a heartbeat cuts the wait short, but a reply can also be lost on a
// connection that lives: a middlebox dropped some of its bytes while
// heartbeats still flow either side of the gap. Nothing would then end the
// wait, and whatever waits behind it (a topic's declaration, a lane closing
// a stuck channel, a consumer attaching) would wait too. So when no reply
// comes within replyBound, the connection is deemed broken and cut: rpc
// returns, the session ends, and the supervisor connects again.
func (sess *session) awaitReply(what string, rpc func() error) error {
	return sess.awaitReplyWithin(what, replyBound(sess.cfg), rpc)
}

// replyBound is how long a request may go unanswered: ConfirmTimeout, and
// at least two heartbeat intervals, so that a short ConfirmTimeout does not
// cut a connection whose broker takes its time over a declaration (a
// quorum queue's, on a cluster).
func replyBound(cfg *settings) time.Duration { return max(cfg.ConfirmTimeout, 2*cfg.Heartbeat) }

// awaitReplyWithin is awaitReply with a bound of its own. Time the broker
// spends blocking the connection (an alarm: it stops reading from it), and
// time the socket spends writing what was queued before the request (a
// large message, a slow uplink), extend the bound: when it runs out in
// either, it starts again.
func (sess *session) awaitReplyWithin(what string, bound time.Duration, rpc func() error) error {
	var mu sync.Mutex // the timer re-arms itself from its own callback
	var timer *time.Timer
	done := false
	_, flowChanged := sess.flowNow()
	mu.Lock()
	timer = time.AfterFunc(bound, func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return // answered as the timer fired
		}
		blocked, changed := sess.flowNow()
		if blocked || changed != flowChanged || sess.sock.writing() {
			// Blocked, or unblocked since the bound started: the bound
			// starts again from now.
			flowChanged = changed
			timer.Reset(bound)
			return
		}
		sess.breakOff(&noReplyError{what: what, after: bound})
	})
	mu.Unlock()
	defer func() {
		mu.Lock()
		done = true
		timer.Stop()
		mu.Unlock()
	}()
	return rpc()
}

// breakOff cuts a connection that still looks alive but can no longer be
// trusted, saying why (it wraps errConnectionLost): the supervisor reports
// that cause rather than the closed socket's. Confirms not yet reported are
// not believed from then on (bytes were lost). Once the session is ending,
// it does nothing: ending cuts the socket anyway.
func (sess *session) breakOff(why error) {
	sess.distrust.Store(true)
	select {
	case <-sess.stopping:
		return
	default:
	}
	if !sess.brokenBy.CompareAndSwap(nil, &why) {
		return // broken off already: the first cause is the one
	}
	// Absorbed: the supervisor reconnects and logs the fault's end.
	sess.logger.Info("Connection deemed broken: cutting it to reconnect", watermill.LogFields{"uri": sess.uri, "reason": why.Error()})
	sess.sock.cut()
}

// brokenCause is why breakOff cut the connection, or nil.
func (sess *session) brokenCause() error {
	if why := sess.brokenBy.Load(); why != nil {
		return *why
	}
	return nil
}
