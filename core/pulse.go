package core

import (
	"errors"
	"fmt"
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
// pulse (see pulseBound), the link is cut, and every message not yet
// reported is sent again on the next connection. A message sent on a link
// already silent for pulseAfter gets a pulse right after it, so that a
// link dark since before it is found out before anything comes back.
//
// A link dark for less than pulseAfter can come back unnoticed: no proxy
// that discards bytes is that quick, and no TCP link loses bytes at all.

// pulseAfter is how long a lane waits for a confirm on a silent link
// before it asks for a pulse; a message sent on a link silent this long
// gets a pulse right after it.
const pulseAfter = 250 * time.Millisecond

// pulseBound is how long a pulse may go unanswered: a fifth of
// ConfirmTimeout, at least 1 s (at most ConfirmTimeout), not counting time
// the connection is blocked or the socket is still writing what went
// before it. Meanwhile no
// confirm is believed, so a longer bound costs no safety, only the time to
// recover once a dark link is back; a shorter one would cut a connection
// whose broker is merely slow to read (its internal flow control).
func pulseBound(confirmTimeout time.Duration) time.Duration {
	return min(confirmTimeout, max(confirmTimeout/5, time.Second))
}

// keepPulse sends a pulse every heartbeat interval while the session
// lives, whatever the lanes owe: AMQP heartbeats only tell each side that
// bytes arrive, not that they make sense. A stream that lost bytes in the
// middle of a frame can leave amqp091-go reading a made-up frame out of
// the heartbeats that follow, for ever; a consumer whose deliveries were
// lost waits for ever too. A pulse unanswered finds both out.
func (sess *session) keepPulse() {
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		tick := time.NewTicker(sess.cfg.Heartbeat)
		defer tick.Stop()
		for {
			select {
			case <-sess.stopping:
				return
			case <-tick.C:
				if blocked, _ := sess.flowNow(); !blocked { // a blocked broker reads nothing
					sess.startPulse()
				}
			}
		}
	}()
}

// startPulse sends a pulse, unless one is out already or the session is
// ending. Called by lanes, keepPulse and idle consumers (idleprobe.go).
func (sess *session) startPulse() {
	done := make(chan struct{})
	if !sess.pulseOut.CompareAndSwap(nil, &done) {
		return
	}
	if !sess.goTracked(func() { sess.pulse(done) }) {
		// Ending: no pulse to be had, so nothing that came back is
		// believed, as when one fails.
		sess.distrust.Store(true)
		sess.pulseOut.Store(nil)
		close(done)
	}
}

// pulse sends one, and closes done once it is answered or given up on.
func (sess *session) pulse(done chan struct{}) {
	sent := time.Now()
	err := sess.awaitReplyWithin("a pulse", sess.pace.stretch(pulseBound(sess.cfg.ConfirmTimeout)), func() error {
		if sess.pulseCh == nil {
			ch, err := sess.openChannel()
			if err != nil {
				return err
			}
			sess.pulseCh = ch
		}
		return sess.pulseCh.Qos(0, 0, false)
	})
	var reply *amqp091.Error
	switch {
	case err == nil:
		sess.pace.observe(time.Since(sent))
	case errors.Is(err, amqp091.ErrChannelMax):
		// No channel to spare for a pulse (channel_max): none this
		// time, and nothing learned.
	case errors.As(err, &reply) && reply.Server && !sess.conn.IsClosed():
		// The broker answered, if with a refusal: the link carries
		// bytes both ways. Another channel next time.
		sess.pulseCh = nil
	default:
		// Unanswered (the bound cut the link, or it was lost): what
		// came back meanwhile is not believed.
		sess.pulseCh = nil
		sess.breakOff(fmt.Errorf("%w: a pulse failed: %v", errConnectionLost, err))
	}
	sess.pulseOut.Store(nil)
	close(done)
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
// reported: no pulse is out, and the connection was not deemed broken.
func (sess *session) confirmsBelievable() bool {
	return sess.pulseOut.Load() == nil && !sess.distrust.Load()
}

// pulseState is a session's pulse. pulseCh is only touched by the one pulse
// out at a time.
type pulseState struct {
	pulseOut atomic.Pointer[chan struct{}]
	distrust atomic.Bool // set by breakOff
	pulseCh  *amqp091.Channel
}
