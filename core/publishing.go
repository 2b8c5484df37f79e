package core

import (
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill"
)

// publishing is what a Publisher keeps on each of its connections: the
// lanes, and the cache of the topology declared on it. It lives and dies
// with its session; a Subscriber's sessions have none.
type publishing struct {
	lanes    []*lane
	nextLane atomic.Uint32
	topology *topologyCache
	size     sizeLimit // the broker's max_message_size, as learned
	wake     *waker    // the publisher's: poked once the session is dead
}

// startPublishing starts sess's publishing part: Config.Channels lanes,
// fewer if the broker's channel_max says so (two channels stay: for
// declarations, and for pulses), and at least one. With channel_max 2
// there is no channel for a pulse (none is sent: see trust.go); with 1,
// none to declare topology on either: a Publish that must declare fails
// with ErrChannelLimit (channellimit.go).
func startPublishing(sess *session, wake *waker) {
	n := sess.cfg.Channels
	if channelMax := int(sess.conn.Config.ChannelMax); channelMax > 0 && n > max(channelMax-2, 1) {
		sess.logger.Info("Fewer publishing channels than configured: the broker's channel_max", watermill.LogFields{"channels": max(channelMax-2, 1), "configured": n})
		n = max(channelMax-2, 1)
	}
	pub := &publishing{lanes: make([]*lane, n), topology: newTopologyCache(sess), wake: wake}
	sess.pub = pub
	sess.wg.Add(len(pub.lanes))
	for i := range pub.lanes {
		pub.lanes[i] = newLane(sess, i, &pub.size, pub.topology)
		go pub.lanes[i].run()
	}
}

// pickLane spreads callers over the lanes. A call's messages all go to one
// lane, so they reach the broker in the order they were given.
func (pub *publishing) pickLane() *lane {
	return pub.lanes[int(pub.nextLane.Add(1))%len(pub.lanes)]
}
