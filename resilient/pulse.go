package resilient

import (
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Telling a link that went dark from a broker that is busy.
//
// A link can go dark and come back: a middlebox discards every byte for a
// while (a proxy's blackhole, lifted), then forwards again, the connection
// never closed. Whole messages may have vanished then, and the broker would
// confirm each later message by the number the lane gave an earlier one,
// vouching for messages it never got. Heartbeats find a dark link out only
// after 1.5 intervals, long after it may have come back.
//
// Owed confirms make silence telling much sooner. When a lane has waited
// pulseAfter for a confirm and not a byte has arrived meanwhile, the
// session sends a pulse: a request any live broker answers at once
// (basic.qos on a channel of its own), busy or not. Until it is answered no
// lane reports a confirm, so that none that came back with the link is
// believed; answered, they are reported. Unanswered within the bound of a
// pulse (a tenth of ConfirmTimeout, at least 500 ms), the link is cut, and
// every message not yet reported is sent again on the next connection.
//
// A link dark for less than pulseAfter can come back unnoticed: no proxy
// that discards bytes is that quick, and no TCP link loses bytes at all.

// pulseAfter is how long a lane waits for a confirm on a silent link
// before it asks for a pulse.
const pulseAfter = 250 * time.Millisecond

// pulseBound is how long a pulse may go unanswered.
func pulseBound(confirmTimeout time.Duration) time.Duration {
	return min(confirmTimeout, max(confirmTimeout/10, 500*time.Millisecond))
}

// startPulse sends a pulse, unless one is out already. Called by lanes,
// which the session's wait group counts, so adding to it is safe.
func (sess *session) startPulse() {
	done := make(chan struct{})
	if !sess.pulseOut.CompareAndSwap(nil, &done) {
		return
	}
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		err := sess.awaitReplyWithin("a pulse (confirms owed, the link silent)", pulseBound(sess.cfg.ConfirmTimeout), func() error {
			if sess.pulseCh == nil {
				ch, err := sess.conn.Channel()
				if err != nil {
					return err
				}
				sess.pulseCh = ch
			}
			return sess.pulseCh.Qos(0, 0, false)
		})
		if err != nil {
			// Unanswered: what came back meanwhile is not believed, on
			// this connection or any reply it may still bring.
			sess.pulseMissed.Store(true)
			sess.breakOff(err)
		}
		sess.pulseOut.Store(nil)
		close(done)
	}()
}

// pulseOutstanding is closed once the pulse out now is answered or given
// up on; nil when none is out.
func (sess *session) pulseOutstanding() <-chan struct{} {
	if p := sess.pulseOut.Load(); p != nil {
		return *p
	}
	return nil
}

// confirmsBelievable reports whether a confirm that arrived may be
// reported: no pulse is out, and none went unanswered on this connection.
func (sess *session) confirmsBelievable() bool {
	return sess.pulseOut.Load() == nil && !sess.pulseMissed.Load()
}

// pulseState is a session's pulse. pulseCh is only touched by the one pulse
// out at a time.
type pulseState struct {
	pulseOut    atomic.Pointer[chan struct{}]
	pulseMissed atomic.Bool
	pulseCh     *amqp091.Channel
}
