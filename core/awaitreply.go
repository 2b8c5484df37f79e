package core

import (
	"fmt"
	"sync"
	"time"
)

// How a request to the broker is bounded (a channel opened or closed, a
// declaration, a consumer started): a connection whose broker stops
// answering while it still looks alive is deemed broken and cut, through
// the session's trust.

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
// channel opened or closed, a declaration, a consumer started), within
// replyBound: unanswered by then, the connection is deemed broken and cut,
// rpc returns, the session ends, and the supervisor connects again.
// Whatever waited behind the request (a topic's declaration, a lane
// closing a stuck channel, a consumer attaching) is freed with it.
func (t *trust) awaitReply(what string, rpc func() error) error {
	return t.awaitReplyWithin(what, replyBound(t.sess.cfg), rpc)
}

// replyBound is how long a request may go unanswered: ConfirmTimeout, and
// at least two heartbeat intervals, so that a short ConfirmTimeout does not
// cut a connection whose broker takes its time over a declaration (a
// quorum queue's, on a cluster).
func replyBound(cfg *settings) time.Duration { return max(cfg.ConfirmTimeout, 2*cfg.Heartbeat) }

// awaitReplyWithin is awaitReply with a bound of its own. Time the broker
// spends blocking the connection, and time the socket spends writing what
// was queued before the request (a large message, a slow uplink), extend
// the bound: when it runs out in either, it starts again.
func (t *trust) awaitReplyWithin(what string, bound time.Duration, rpc func() error) error {
	var mu sync.Mutex // the timer re-arms itself from its own callback
	var timer *time.Timer
	done := false
	_, flowChanged := t.flowNow()
	mu.Lock()
	timer = time.AfterFunc(bound, func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return // answered as the timer fired
		}
		blocked, changed := t.flowNow()
		if blocked || changed != flowChanged || t.sess.sock.writing() {
			// Blocked, or unblocked since the bound started: the bound
			// starts again from now.
			flowChanged = changed
			timer.Reset(bound)
			return
		}
		t.breakOff(&noReplyError{what: what, after: bound})
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
