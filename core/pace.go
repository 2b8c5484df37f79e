package core

import (
	"sync/atomic"
	"time"
)

// How fast the broker answers, so that a broker merely slow is not taken for
// a stuck channel or a dark link.
//
// Giving up on a channel re-sends all it owes, and cutting a connection
// re-sends all its lanes owe: when the broker is slow because it is
// loaded, that only adds to its load, and with a bound shorter than its
// answers no message is ever confirmed again (a congestion collapse, seen
// with ConfirmTimeout 500 ms on a loaded machine: every re-send of a 100
// messages timed out in turn for ten seconds). As TCP does with its
// retransmission timeout, the bounds grow with the answers' smoothed
// latency: at least the configured bound, at least four times the
// latency, at most four times the configured bound. A broker that answers
// as fast as usual leaves them as configured; a stuck channel or a dark
// link gives no answer to learn from, so it is found out as soon as ever.

// pace is a session's smoothed latency of the broker's answers: confirms
// (from the message's sending to the lane reading its confirm) and pulses.
type pace struct {
	smoothed atomic.Int64 // nanoseconds; 0 until the first answer
}

// observe takes one answer's latency into the average (weight 1/8, as TCP's
// SRTT).
func (p *pace) observe(latency time.Duration) {
	for {
		old := p.smoothed.Load()
		next := int64(latency)
		if old != 0 {
			next = old + (int64(latency)-old)/8
		}
		if p.smoothed.CompareAndSwap(old, next) {
			return
		}
	}
}

// stretch is a bound configured as base, given how fast the broker answers
// now: within [base, 4*base], at least four times the smoothed latency.
func (p *pace) stretch(base time.Duration) time.Duration {
	return min(4*base, max(base, 4*time.Duration(p.smoothed.Load())))
}
