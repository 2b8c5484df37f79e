package core

import (
	"fmt"
	"time"
)

// Channels and nodes that answer but do not confirm.
//
// A network partition is not a node loss: a node can stay up on the
// minority side, answering heartbeats and pulses, while nothing sent to it
// is confirmed (a quorum queue cannot commit without a majority). And a
// channel of a node on the majority side can be stuck too: on RabbitMQ
// 3.10 a channel that first published to a quorum queue while its leader
// was on the far side of the partition waits for that leader, while a fresh
// channel of the same node reaches the new one. Neither is found out by
// the link (it carries bytes both ways), so confirms decide:
//
//   - A lane whose channel owes confirms and has confirmed nothing for
//     stallBound (a quarter of ConfirmTimeout, 3.75 s by default) replaces
//     it: what it owes is sent again on a fresh channel at once.
//   - A lane whose oldest message waits past ConfirmTimeout replaces its
//     channel too (others of the connection may confirm: that queue is
//     stuck, not the node).
//   - A connection on which nothing at all was confirmed for leaveBound
//     (twice stallBound, 7.5 s by default) while a message waited that
//     long, its channels replaced meanwhile, is left, when there is another
//     URI to go to: the node answers but cannot confirm. The dialer tries
//     the next URI first. Twice stallBound: a fresh channel had its chance
//     on that node too. A node of the majority side confirms as soon as the
//     cluster can; one of the minority side (autoheal, or pause_minority
//     before the node notices) never does, and waiting for it would cost
//     every message as long as the node takes to notice.
//
// A replaced channel is closed in the background (closeInBackground):
// nobody waits for the broker's answer, which may come only after the
// partition heals. A message is at worst sent twice (the old channel may
// still confirm it): duplicates are possible after any fault.

// stallBound is how long a channel that owes confirms may confirm nothing
// before it is replaced: a quarter of ConfirmTimeout, at least 1 s, at most
// ConfirmTimeout. Short enough that a stuck channel costs at most a few
// seconds more than the cluster takes to recover; long enough that a queue
// merely slow (a quorum queue's fsync under load) keeps confirming within
// it, as any queue that works does.
func stallBound(confirmTimeout time.Duration) time.Duration {
	return min(confirmTimeout, max(confirmTimeout/4, time.Second))
}

// leaveBound is how long a connection may confirm nothing, on fresh
// channels too, before its node is left for another URI.
func leaveBound(confirmTimeout time.Duration) time.Duration {
	return 2 * stallBound(confirmTimeout)
}

// unconfirmingNodeError: the connection lived, its node answered, and
// confirmed nothing for leaveBound on fresh channels.
type unconfirmingNodeError struct{ after time.Duration }

func (e *unconfirmingNodeError) Error() string {
	return fmt.Sprintf("nothing confirmed on this connection for %s, on fresh channels too: the node answers but cannot confirm (the minority side of a partition?); trying another URI", e.after)
}

// Unwrap makes it a lost connection: what was in flight is re-sent on the
// next one.
func (e *unconfirmingNodeError) Unwrap() error { return errConnectionLost }
