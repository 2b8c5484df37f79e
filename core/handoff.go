package core

import (
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Handoff states. A lane claims a queued handoff before writing it; the
// caller abandons a queued one it no longer waits for. Whoever wins the CAS
// owns it, so a message is never written after its caller gave up on it.
const (
	handoffQueued int32 = iota
	handoffTaken
	handoffAbandoned
)

// handoff is an outgoing message handed to a lane, for one attempt to send
// it. The lane that claims it tells exactly one fact to its attempt (tell),
// over the attempt's facts channel, buffered for every handoff of the
// attempt, so a lane never blocks on a caller. The lane knows nothing else
// of the attempt: only whether the call stopped (a message of it must be
// sent again, so the later ones are not written).
type handoff struct {
	msg   *outgoing
	alone bool // the lane sends it alone: msg.suspect at hand-over, or a body larger than the connection has seen taken (sizelimit.go)
	state atomic.Int32

	facts   chan<- fact  // the attempt's
	stopped *atomic.Bool // the attempt's: see callStopped

	decided bool // owned by the attempt: its fate is decided

	// Owned by the lane once claimed.
	dc     *amqp091.DeferredConfirmation
	sentAt time.Time
	pulses uint64 // trust.pulseCount when sent
}

func (d *handoff) claim() bool   { return d.state.CompareAndSwap(handoffQueued, handoffTaken) }
func (d *handoff) abandon() bool { return d.state.CompareAndSwap(handoffQueued, handoffAbandoned) }

// tell gives d's attempt a fact about it. A fact that may mean the message
// is sent again stops its call: the lane then writes none of the later
// messages of the attempt, which come back unsent, so that the call keeps
// its order.
func (d *handoff) tell(f fact) {
	f.d = d
	if f.stopsItsCall() {
		d.stopped.Store(true)
	}
	d.facts <- f
}

// callStopped reports whether a message of d's attempt must be sent again:
// d must not be written before it.
func (d *handoff) callStopped() bool { return d.stopped.Load() }
