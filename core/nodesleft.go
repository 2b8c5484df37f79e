package core

import (
	"sync"
	"time"
)

// A consumer on the minority side of a partition (autoheal, or
// pause_minority before its node notices) gets no delivery and no error:
// its node answers, its queue's leader is out of reach. It cannot tell
// that from a queue with nothing to deliver. A publisher can: nothing it
// sends there is confirmed, and it leaves the node (unconfirming.go). So a
// Publisher of this process that leaves a node says so here, and a
// Subscriber connected to that node, with another URI to go to and no
// delivery since, leaves it too. Without a publisher to the same node in
// the process, a consumer of a quorum queue finds out by itself when the
// queue's leader is on another node (idleprobe.go); otherwise it stays
// until its node pauses, restarts or heals (the README's "Partitions").

// nodesLeft holds when a Publisher of this process last left a node, by
// URI (password redacted, as sessions keep it).
var nodesLeft sync.Map

// noteNodeLeft records that a Publisher left uri's node now.
func noteNodeLeft(uri string) { nodesLeft.Store(uri, time.Now()) }

// nodeLeftSince reports whether a Publisher of this process left uri's node
// after since.
func nodeLeftSince(uri string, since time.Time) bool {
	at, ok := nodesLeft.Load(uri)
	return ok && at.(time.Time).After(since)
}

// nodeLeftError: a Subscriber's node, left by a Publisher of this process
// for confirming nothing, delivered nothing since.
type nodeLeftError struct{}

func (*nodeLeftError) Error() string {
	return "a publisher of this process left this node, which answers but confirms nothing (the minority side of a partition?), and nothing was delivered since: trying another URI"
}

// Unwrap makes it a lost connection: the subscriptions attach again on the
// next one.
func (*nodeLeftError) Unwrap() error { return errConnectionLost }

// leaveCheckEvery is how often a consumer looks at nodesLeft, and probes
// again after an answer that did not count it (idleprobe.go).
const leaveCheckEvery = 500 * time.Millisecond

// leaveChecks ticks every leaveCheckEvery for a consumer on sess, or never
// when sess has no other URI to go to; stop ends the ticker.
func leaveChecks(sess *session) (tick <-chan time.Time, stop func()) {
	if !sess.canLeaveNode() {
		return nil, func() {}
	}
	t := time.NewTicker(leaveCheckEvery)
	return t.C, t.Stop
}
