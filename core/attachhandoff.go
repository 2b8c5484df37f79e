package core

import (
	"fmt"
	"sync"
	"time"
)

// An attach that the broker does not answer is given up on, not waited for.
//
// A consumer that attaches to a quorum queue whose leader was on a node just
// lost (the far side of a partition) can wait until that node is declared
// down, net_ticktime later (seen on RabbitMQ 4.0: 7.7 s, where a fresh
// attach on another channel succeeded as soon as the new leader was
// elected). As a lane does with a stuck channel, the subscription gives up
// on an attach unanswered within attachBound and tries again on a fresh
// channel. An attach given up on that the broker answers after all shows
// a broker merely slow (a quorum queue's declaration on a loaded
// cluster): each such late answer doubles the bound of the next attaches,
// up to the bound of any reply, until one succeeds. One still unanswered
// (stuck, as behind a lost node) does not: an attach that began before the
// cluster recovered is as stuck as the first, and the next is tried within
// the stall bound again (with doubling, a RabbitMQ 3.10 partition run's
// subscriber attached only 5.9 s after the cluster could deliver). The attach given
// up on goes on in a goroutine of the session's (which its end frees), and
// closes the consumer it may start after all, reporting no loss for it.
//
// It stays bounded as any request is (awaitReply: unanswered within the
// bound of a reply, 20 s by default, the connection is cut). A reply lost
// on a link that lives (bytes dropped) would otherwise leave a consumer the
// broker started, and that nobody reads, holding its prefetch of messages
// unacked for as long as the connection lives: seen in
// TestLostFramesToTheSubscriber, whose basic.consume-ok is dropped. The
// price: an attach that the broker answers only once a lost node is
// declared down, later than that bound (RabbitMQ's default net_ticktime,
// 60 s), cuts the connection once, and the fresh consumer attaches again
// on the next one. Not for an auto-delete queue nor an exclusive consumer
// (mayGiveUp): those only wait as any request does.

// attachBound is how long an attach may go unanswered, after late attaches
// given up on were answered after all: the stall bound (3.75 s by default,
// stretched while the broker answers slowly), doubled per late answer, at
// most the bound of a reply.
func attachBound(sess *session, late int) time.Duration {
	bound := sess.pace.stretch(stallBound(sess.cfg.ConfirmTimeout))
	limit := replyBound(sess.cfg)
	for ; late > 0 && bound < limit; late-- {
		bound *= 2
	}
	return min(bound, limit)
}

// attachStalledError: an attach unanswered within its bound, given up on.
type attachStalledError struct {
	queue string
	after time.Duration
}

func (e *attachStalledError) Error() string {
	return fmt.Sprintf("no answer to the start of a consumer of %s within %s: trying again on a fresh channel", e.queue, e.after.Round(time.Millisecond))
}

// attachOutcome is what an attach ended with.
type attachOutcome struct {
	c   *consumer
	err error
}

// attachHandoff hands an attach's outcome to the subscription waiting for
// it or, once it gave up, to nobody.
type attachHandoff struct {
	mu      sync.Mutex
	givenUp bool
	done    chan attachOutcome
}

func newAttachHandoff() *attachHandoff {
	return &attachHandoff{done: make(chan attachOutcome, 1)}
}

// deliver hands o over, and reports false when the subscription gave up on
// the attach: its consumer is then the attach's to close.
func (h *attachHandoff) deliver(o attachOutcome) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.givenUp {
		return false
	}
	h.done <- o
	return true
}

// giveUp gives up on the attach, unless its outcome arrived meanwhile:
// then it returns it.
func (h *attachHandoff) giveUp() (o attachOutcome, arrived bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case o = <-h.done:
		return o, true
	default:
		h.givenUp = true
		return o, false
	}
}
