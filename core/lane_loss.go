package core

import (
	"errors"
	"fmt"
)

// A lane's loss of its channel: what it held goes back to its callers, to be
// sent again or failed when the broker's reason names it.

// failPending reports every handoff the lane holds once its channel is
// gone (cause, nil when the session ends): lost, to be sent again, unless
// the broker's reason names it as the fault. A reason that names no message
// but is permanent (e.g. a property the broker refuses) makes every message
// in flight a suspect, to be sent alone next time; a suspect that was alone
// on a channel the broker closed (channelOnly) is the culprit. Not when the
// whole connection closed: other lanes had messages in flight on it too.
func (l *lane) failPending(cause error, channelOnly bool) {
	if cause == nil {
		cause = errConnectionLost
	}
	b := blameFor(cause)
	if b.exchange != "" {
		l.sess.pub.topology.suspectExchange(b.exchange)
	}
	if b.sizeLimit > 0 {
		l.sess.pub.size.refuse(b.sizeLimit) // larger bodies fail before they are sent from now on
	}
	unattributed := b.culprit == nil && isPermanentBroker(cause)
	innocent := cause
	if b.culprit != nil || unattributed {
		// Merely in flight on the channel another message killed.
		innocent = fmt.Errorf("%w: channel closed by a message's fault (%v)", errConnectionLost, cause)
	}
	for l.pending.len() > 0 {
		d := l.pending.pop()
		l.forgetMandatoryID(d)
		switch {
		case b.culprit != nil && b.culprit(d.msg) && errors.Is(classifyBroker(cause), ErrNotFound):
			// A missing exchange: the next attempt declares it again,
			// checking that it exists.
			d.report(outcomeLost, cause)
		case b.culprit != nil && b.culprit(d.msg), unattributed && d.solo && channelOnly:
			d.report(outcomeFailed, classifyBroker(cause))
		case unattributed:
			d.report(outcomeSuspect, innocent)
		default:
			d.report(outcomeLost, innocent)
		}
	}
	if l.held != nil {
		l.held.report(outcomeLost, innocent)
		l.held = nil
	}
	clear(l.returned)
}
