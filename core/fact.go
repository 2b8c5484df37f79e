package core

import amqp091 "github.com/rabbitmq/amqp091-go"

// fact is what became of one handoff, as the lane that claimed it saw it (or
// as its attempt did, when it stopped waiting for it): no more than what
// happened. What that means for the message (confirmed, sent again, failed)
// and for its call (a pause, a declaration again) is decided in one place,
// fateOf (fate.go); the attempt applies it.
type fact struct {
	d    *handoff
	kind factKind
	// returned is the broker's basic.return (factReturned). A pointer: a
	// fact is copied through a channel for every message, a return is
	// rare, and the attempt's channel is buffered for all of its messages.
	returned *amqp091.Return
	// cause is why the channel ended (factLost), why the message was not
	// sent (factUnsent, factRefused), or why no one waits for it any more
	// (factAbandoned).
	cause error
	// channelOnly: only the channel closed, the connection lived
	// (factLost).
	channelOnly bool
}

type factKind int

const (
	factAcked     factKind = iota // the broker confirmed it (basic.ack)
	factNacked                    // the broker refused responsibility for it (basic.nack)
	factReturned                  // sent mandatory, the broker returned it (no queue took it), then acked it
	factLost                      // sent, then its channel or connection ended before the broker answered
	factUnsent                    // not sent yet: its channel ended first, or an earlier message of its call must go again first
	factRefused                   // not sent: it cannot be (larger than the broker takes, its Context() ended)
	factAbandoned                 // its caller stopped waiting for it (a Context() or the call's bound ended)
)
