package core

import (
	"errors"
	"fmt"
)

// What becomes of a message: every fact a lane (or an attempt) reports about
// one, read here and nowhere else. A nack, a return, a channel's loss and a
// connection's loss each read top to bottom in fateOf.
//
// What a channel's close teaches about the connection itself (the broker's
// max_message_size, an exchange it says is missing or refused) the lane
// records at once, for every lane and call of the connection (lane.lose);
// what it means for each message is decided here.

// fate is what a fact means for its message, and what the call must do
// about it before its next attempt. Exactly one of confirmed, resend and
// err (failed) holds.
type fate struct {
	confirmed bool
	resend    bool  // send it again, in call order, on the next attempt
	err       error // it failed: not sent again

	// What the call does before its next attempt.
	nacked   bool // the broker refused for now: back off
	returned bool // its own queue is gone: declare the topic again
}

// maxReturns is how many times a message may come back from the
// publisher's own queue (each time declared again) before it fails with
// ErrUnroutable: a queue that exists and still returns it means the routing
// key does not lead to it.
const maxReturns = 3

// fateOf decides what f means for its message, counting its nacks and
// returns on it (an outgoing lives across the attempts of its call).
// maxNackRetries is Config.MaxNackRetries.
func fateOf(f fact, maxNackRetries int) fate {
	m := f.d.msg
	switch f.kind {
	case factAcked:
		return fate{confirmed: true}

	case factNacked:
		// Back-pressure (a queue electing a leader, a full queue that
		// rejects publishes): sent again after a pause, as often as
		// MaxNackRetries allows.
		m.nacks++
		if maxNackRetries < 0 || maxNackRetries > 0 && m.nacks > maxNackRetries {
			return fate{err: fmt.Errorf("%w %d time(s)", ErrNacked, m.nacks), nacked: true}
		}
		return fate{resend: true, nacked: true}

	case factReturned:
		r := f.returned
		why := fmt.Errorf("%d %s (exchange %q, routing key %q)", r.ReplyCode, r.ReplyText, r.Exchange, r.RoutingKey)
		switch {
		case m.ownQueue:
			// The publisher's own queue vanished under the live connection
			// (an operator, a policy, an expiry): declared again and sent
			// again, unless it keeps coming back.
			m.returns++
			if m.returns > maxReturns {
				return fate{err: fmt.Errorf("%w: returned %d times by its own queue, declared again each time: %w", ErrUnroutable, m.returns, why), returned: true}
			}
			return fate{resend: true, returned: true}
		case m.exclusive:
			return fate{err: fmt.Errorf("%w: %w: the queue is exclusive (Queue.Exclusive), so it exists only while a subscriber's connection holds it, and none does", ErrUnroutable, why)}
		default:
			return fate{err: fmt.Errorf("%w: %w", ErrUnroutable, why)}
		}

	case factLost:
		return lostFate(f)

	case factUnsent:
		return fate{resend: true}

	default: // factRefused, factAbandoned
		return fate{err: f.cause}
	}
}

// lostFate is the fate of a message in flight when its channel or
// connection ended: sent again, unless the broker's reason names it as the
// fault. A reason that names no message but is permanent (a property the
// broker refuses) makes every message in flight a suspect, sent alone next
// time; a suspect that was alone on a channel the broker closed
// (channelOnly) is the culprit. Not when the whole connection closed: other
// lanes had messages in flight on it too.
func lostFate(f fact) fate {
	switch readLoss(f) {
	case lossCulprit:
		return fate{err: classifyBroker(f.cause)}
	case lossSuspect:
		f.d.msg.suspect = true
		return fate{resend: true}
	default:
		// Merely in flight on a channel that ended (the connection's loss,
		// or another message's fault), or a publish to an exchange that is
		// missing: the lane had the topology cache check it, and the next
		// attempt declares it again.
		return fate{resend: true}
	}
}

// A message's part in its channel's loss.
type lossPart int

const (
	lossInnocent lossPart = iota // sent again
	lossSuspect                  // sent again, alone
	lossCulprit                  // fails: the broker's reason names it
)

// readLoss reads f, a factLost, without changing anything: named by the
// broker's reason (a missing exchange aside, which is declared again), a
// suspect alone on its channel when the broker closed it for a reason that
// names no one, a suspect, or innocent.
func readLoss(f fact) lossPart {
	b := blameFor(f.cause)
	culprit := b.culprit != nil && b.culprit(f.d.msg)
	unattributed := b.culprit == nil && isPermanentBroker(f.cause)
	switch {
	case culprit && errors.Is(classifyBroker(f.cause), ErrNotFound):
		return lossInnocent
	case culprit, unattributed && f.d.alone && f.channelOnly:
		return lossCulprit
	case unattributed:
		return lossSuspect
	}
	return lossInnocent
}

// stopsItsCall reports whether, once f is known, the lane must write no
// more of its attempt's messages: f may mean that its message is sent
// again, so the later ones go back too and follow it in call order. A
// message that fails (a refusal, a return from a queue not its own, the
// culprit of its channel's loss) does not stop it.
func (f fact) stopsItsCall() bool {
	switch f.kind {
	case factNacked, factUnsent:
		return true
	case factLost:
		return readLoss(f) != lossCulprit
	case factReturned:
		return f.d.msg.ownQueue
	}
	return false
}
