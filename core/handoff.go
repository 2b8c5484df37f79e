package core

import (
	"context"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// outgoing is one message of a Publish call, marshaled and validated once,
// and owned by that call's goroutine across every attempt to send it.
type outgoing struct {
	index      int // in the Publish call
	uuid       string
	ctx        context.Context
	exchange   string
	routingKey string
	// mandatory: sent with the mandatory flag, because the user asked for
	// it or because ownQueue.
	mandatory bool
	// ownQueue: it goes to a queue the publisher declares itself, so a
	// return means the queue vanished under the live connection: declare it
	// again and re-send, rather than let the broker confirm and drop it.
	ownQueue bool
	// exclusive: it goes to an exclusive queue, a subscriber's, that exists
	// only while its connection holds it (Publisher.subscriberQueue).
	exclusive   bool
	publishing  amqp091.Publishing
	headerFrame int // the size of its header frame (frame.go)

	slot    int  // its handoff's index in the current attempt
	nacks   int  // broker nacks so far
	returns int  // returns from its own queue so far
	solo    bool // in flight when the broker closed a channel without naming the culprit
}

// Handoff states. A lane claims a queued handoff before writing it; the
// caller abandons a queued one it no longer waits for. Whoever wins the CAS
// owns it, so a message is never written after its caller gave up on it.
const (
	handoffQueued int32 = iota
	handoffTaken
	handoffAbandoned
)

// handoff is an outgoing message handed to a lane, for one attempt to send
// it. The lane that claims it reports exactly one outcome to its attempt,
// whose results channel is buffered for every handoff of the attempt, so a
// lane never blocks on a caller.
type handoff struct {
	msg   *outgoing
	att   *attempt
	solo  bool // the lane sends it alone: msg.solo at hand-over, or a body larger than the connection has seen taken (sizelimit.go)
	state atomic.Int32

	decided bool // owned by the attempt: its outcome is decided

	// Owned by the lane once claimed.
	dc     *amqp091.DeferredConfirmation
	sentAt time.Time
}

func (d *handoff) claim() bool   { return d.state.CompareAndSwap(handoffQueued, handoffTaken) }
func (d *handoff) abandon() bool { return d.state.CompareAndSwap(handoffQueued, handoffAbandoned) }

type outcomeKind int

const (
	outcomeAcked    outcomeKind = iota
	outcomeNacked               // re-sent, within the call's bounds and MaxNackRetries
	outcomeLost                 // channel or connection gone before the confirm: re-sent
	outcomeSuspect              // lost on a channel the broker closed without naming the culprit: re-sent alone
	outcomeReturned             // its own queue is gone: declared again and re-sent
	outcomeFailed               // permanent for this message: not re-sent
)

type outcome struct {
	d    *handoff
	kind outcomeKind
	err  error
}

// report gives d's attempt its outcome. Any outcome that means the message
// must be sent again cuts the attempt: the lane then writes none of its
// later messages, which go back with it, so that the call keeps its order.
func (d *handoff) report(kind outcomeKind, err error) {
	switch kind {
	case outcomeNacked, outcomeLost, outcomeSuspect, outcomeReturned:
		d.att.cut.Store(true)
	}
	d.att.results <- outcome{d: d, kind: kind, err: err}
}

// inFlight holds a lane's unconfirmed handoffs in delivery-tag order: the
// order they were sent in, which a lane reports them in.
type inFlight struct {
	items []*handoff
	head  int
}

func (f *inFlight) len() int { return len(f.items) - f.head }

func (f *inFlight) push(d *handoff) { f.items = append(f.items, d) }

func (f *inFlight) oldest() *handoff {
	if f.len() == 0 {
		return nil
	}
	return f.items[f.head]
}

func (f *inFlight) pop() *handoff {
	d := f.items[f.head]
	f.items[f.head] = nil
	f.head++
	if f.head == len(f.items) {
		f.items, f.head = f.items[:0], 0
	} else if f.head > 1024 && f.head*2 > len(f.items) {
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	return d
}
