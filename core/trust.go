package core

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// trust is whether what a connection brings back can be believed, and the
// one place that decides it. Its invariant:
//
//	No confirm is reported while a pulse is out, or once the session broke
//	off (cut a connection it could no longer trust).
//
// Lanes ask gate before they report a confirm; everything that can make a
// confirm unbelievable goes through trust: pulses (sent, answered, given up
// on), requests left unanswered (awaitReply, in awaitreply.go), breaking
// off, and the time the broker blocks the connection, which no bound
// counts.
//
// # Pulses: a link that went dark, or a broker that is busy?
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
//
// # Requests left unanswered
//
// amqp091-go waits for the answer to a request (a channel opened or closed,
// a declaration, a consumer started) for ever. On a connection that has
// died a heartbeat cuts the wait short, but a reply can also be lost on a
// connection that lives: a middlebox dropped some of its bytes while
// heartbeats still flow either side of the gap. So awaitReply bounds every
// request: unanswered within replyBound, the connection is deemed broken
// and cut (breakOff), and nothing it confirms from then on is believed.
//
// # Time blocked
//
// A broker under a resource alarm blocks the connection: it stops reading
// from it. No bound counts that time: a request's bound (a pulse's too)
// starts again once the broker unblocks, neither keepPulse nor a lane's
// watchdog starts a pulse while it blocks, and a lane measures how long a
// confirm is owed from the later of its sending and the last unblocking
// (waitedSince), whether or not it was looking when the broker unblocked.
type trust struct {
	sess *session

	// pulseOut is closed once the pulse out now is answered or given up
	// on; nil when none is out.
	pulseOut atomic.Pointer[chan struct{}]
	pulseCh  *amqp091.Channel // only touched by the one pulse out at a time
	pulses   atomic.Uint64    // pulses started: see pulsedSince
	// broken is set by breakOff, for good: nothing from this connection is
	// believed any more. brokenBy is why it cut the socket.
	broken   atomic.Bool
	brokenBy atomic.Pointer[error]

	flow atomic.Pointer[flowState] // read by every lane at every step: no lock
}

// flowState is whether the broker blocks the connection, when it last
// stopped blocking it, and the channel closed when that changes.
type flowState struct {
	blocked   bool
	resumedAt time.Time
	changed   chan struct{}
}

// init readies t for sess, as newSession creates it.
func (t *trust) init(sess *session) {
	t.sess = sess
	t.flow.Store(&flowState{changed: make(chan struct{})})
}

// gate reports whether a confirm that arrived may be reported now; when a
// pulse holds it, pulseDone is closed once that pulse is answered or given
// up on (then ask again).
func (t *trust) gate() (open bool, pulseDone <-chan struct{}) {
	if p := t.pulseOut.Load(); p != nil {
		return false, *p
	}
	return !t.broken.Load(), nil
}

// believable reports whether a confirm that arrived may be reported now.
func (t *trust) believable() bool {
	open, _ := t.gate()
	return open
}

// pulseCount is how many pulses were started so far: a lane notes it when it
// sends a message, and pulsedSince tells whether a pulse may have held its
// confirm.
func (t *trust) pulseCount() uint64 { return t.pulses.Load() }

// pulsedSince reports whether a pulse started after pulseCount returned n:
// a confirm that waited for it says how fast the pulse was, not the broker.
func (t *trust) pulsedSince(n uint64) bool { return t.pulses.Load() != n }

// pulseOutstanding is closed once the pulse out now is answered or given
// up on; nil when none is out.
func (t *trust) pulseOutstanding() <-chan struct{} {
	if p := t.pulseOut.Load(); p != nil {
		return *p
	}
	return nil
}

// pulseAfter is how long a lane waits for a confirm on a silent link
// before it asks for a pulse; a message sent on a link silent this long
// gets a pulse right after it.
const pulseAfter = 250 * time.Millisecond

// pulseBound is how long a pulse may go unanswered: a fifth of
// ConfirmTimeout, at least 1 s (at most ConfirmTimeout), not counting time
// the connection is blocked or the socket is still writing what went
// before it. Meanwhile no confirm is believed, so a longer bound costs no
// safety, only the time to recover once a dark link is back; a shorter one
// would cut a connection whose broker is merely slow to read (its internal
// flow control).
func pulseBound(confirmTimeout time.Duration) time.Duration {
	return min(confirmTimeout, max(confirmTimeout/5, time.Second))
}

// sent is told by a lane that it sent a message at now: on a link silent
// for pulseAfter (idle, or dark), a pulse follows it, before its confirm is
// believed.
func (t *trust) sent(now time.Time) {
	if t.sess.sock.silentAt(now) > pulseAfter {
		t.startPulse()
	}
}

// owed is told by a lane how long its oldest message has waited for its
// confirm (waitedSince): past pulseAfter on a link silent as long, it is
// dark or the broker is busy, and a pulse tells which.
func (t *trust) owed(wait time.Duration) {
	if wait > pulseAfter && t.sess.sock.silentFor() > pulseAfter {
		t.startPulse()
	}
}

// keepPulse sends a pulse every heartbeat interval while the session
// lives, whatever the lanes owe: AMQP heartbeats only tell each side that
// bytes arrive, not that they make sense. A stream that lost bytes in the
// middle of a frame can leave amqp091-go reading a made-up frame out of
// the heartbeats that follow, for ever; a consumer whose deliveries were
// lost waits for ever too. A pulse unanswered finds both out.
func (t *trust) keepPulse() {
	sess := t.sess
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
				if blocked, _ := t.flowNow(); !blocked { // a blocked broker reads nothing
					t.startPulse()
				}
			}
		}
	}()
}

// startPulse sends a pulse, unless one is out already or the session is
// ending. Called by lanes, keepPulse and idle consumers (idleprobe.go).
func (t *trust) startPulse() {
	done := make(chan struct{})
	if !t.pulseOut.CompareAndSwap(nil, &done) {
		return
	}
	t.pulses.Add(1)
	if !t.sess.goTracked(func() { t.pulse(done) }) {
		// Ending: no pulse to be had, so nothing that came back is
		// believed, as when one fails.
		t.broken.Store(true)
		t.pulseOut.Store(nil)
		close(done)
	}
}

// pulse sends one, and closes done once it is answered or given up on.
func (t *trust) pulse(done chan struct{}) {
	sess := t.sess
	sent := time.Now()
	bound := sess.pace.stretch(pulseBound(sess.cfg.ConfirmTimeout))
	err := t.awaitReplyWithin("a pulse", bound, func() error {
		if t.pulseCh == nil {
			ch, err := sess.openChannel()
			if err != nil {
				return err
			}
			t.pulseCh = ch
		}
		return t.pulseCh.Qos(0, 0, false)
	})
	var reply *amqp091.Error
	switch {
	case err == nil:
		// Answered past its bound, the pulse waited out a block (the
		// bound starts again then): that time is the alarm's, not the
		// broker's pace, even before the supervisor has seen the
		// unblocking.
		if took := t.waitedSince(sent); took <= bound {
			sess.pace.observe(took)
		}
	case errors.Is(err, amqp091.ErrChannelMax):
		// No channel to spare for a pulse (channel_max): none this
		// time, and nothing learned.
	case errors.As(err, &reply) && reply.Server && !sess.conn.IsClosed():
		// The broker answered, if with a refusal: the link carries
		// bytes both ways. Another channel next time.
		t.pulseCh = nil
	case sess.conn.IsClosed():
		// The connection closed under it (the broker closed it, or a
		// heartbeat found it dead): what came back meanwhile is not
		// believed, and the supervisor reports the close's own cause.
		t.pulseCh = nil
		t.broken.Store(true)
	default:
		// Unanswered (the bound cut the link, or it was lost): what
		// came back meanwhile is not believed.
		t.pulseCh = nil
		t.breakOff(fmt.Errorf("%w: a pulse failed: %v", errConnectionLost, err))
	}
	t.pulseOut.Store(nil)
	close(done)
}

// breakOff cuts a connection that still looks alive but can no longer be
// trusted, saying why (it wraps errConnectionLost): the supervisor reports
// that cause rather than the closed socket's. Confirms not yet reported are
// not believed from then on (bytes were lost), even when the session is
// ending already; then nothing else is done: ending cuts the socket anyway.
func (t *trust) breakOff(why error) {
	t.broken.Store(true)
	sess := t.sess
	select {
	case <-sess.stopping:
		return
	default:
	}
	if !t.brokenBy.CompareAndSwap(nil, &why) {
		return // broken off already: the first cause is the one
	}
	// Absorbed: the supervisor reconnects and logs the fault's end.
	sess.logger.Info("Connection deemed broken: cutting it to reconnect", watermill.LogFields{"uri": sess.uri, "reason": why.Error()})
	sess.sock.cut()
}

// brokenCause is why breakOff cut the connection, or nil.
func (t *trust) brokenCause() error {
	if why := t.brokenBy.Load(); why != nil {
		return *why
	}
	return nil
}

// setBlocked is called by the supervisor goroutine only, when the broker
// blocks or unblocks the connection.
func (t *trust) setBlocked(blocked bool) {
	old := t.flow.Load()
	if old.blocked == blocked {
		return
	}
	next := &flowState{blocked: blocked, resumedAt: old.resumedAt, changed: make(chan struct{})}
	if !blocked {
		next.resumedAt = time.Now()
	}
	t.flow.Store(next)
	close(old.changed)
}

// flowNow reports whether the broker blocks the connection, and a channel
// closed when that changes.
func (t *trust) flowNow() (blocked bool, changed <-chan struct{}) {
	f := t.flow.Load()
	return f.blocked, f.changed
}

// waitedSince is how long ago since was, not counting time blocked before
// the broker last unblocked the connection: how long a message sent then
// has been waiting for the broker.
func (t *trust) waitedSince(since time.Time) time.Duration { return t.waitedUntil(since, time.Now()) }

// waitedUntil is waitedSince as of now (never negative: the broker may
// have unblocked the connection since now was read).
func (t *trust) waitedUntil(since, now time.Time) time.Duration {
	return max(0, now.Sub(later(since, t.flow.Load().resumedAt)))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
