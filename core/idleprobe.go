package core

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// An idle consumer checks its node.
//
// A consumer on the far side of a partition gets no delivery and no error.
// When its link went dark (its node cut off from everyone), the session's
// pulse, every heartbeat interval, finds it out: 10 s and the pulse's bound
// later. When its node answers but sits on the minority side (autoheal, or
// pause_minority before the node notices), with no publisher of its process
// to follow off the node (nodesleft.go), nothing on the link tells. So a
// consumer with another URI to go to that has had no delivery for
// probeAfterIdle probes:
//
//   - it asks for a pulse at once (trust.go): a dark link is cut within the
//     pulse's bound (3 s by default);
//   - for a quorum queue, it asks its node how many consumers the queue
//     has (a passive declaration on its channel). RabbitMQ answers with
//     the leader's count, or with none when the leader does not answer
//     within 250 ms (rabbit_quorum_queue:stat, 3.10 and 4.x alike). The
//     consumer is attached, so it is one of them: none, unseenInARow (4)
//     times in a row, means its node cannot reach the queue's leader, and
//     it leaves the node.
//
// While the answers count it, it probes again after 1, 2, 4 and at most
// every 8 s. Once an answer counts no consumer it asks every
// leaveCheckEvery (half a second): it leaves 2 to 2.5 s after its last
// delivery. Having left a node so, it leaves no other for that until a
// node counted it or delivered to it: a queue with no leader anywhere (its
// majority lost) counts no consumer on any node, and hopping from node to
// node would only cut the subscriptions to other queues each time. A
// leader that sits on the minority node itself still answers, and counts
// the consumer: that case stays as it was (the README's "Partitions").
//
// The declaration is not for other queue types: a stream always reports no
// consumer, and a classic queue's count comes from its own process, which
// does not answer when unreachable (the declaration waits, bounded as any
// request is).

// probeAfterIdle is how long a consumer goes without a delivery before it
// probes. Short: a queue with traffic delivers far more often, and an idle
// one costs a pulse and a passive declaration per 8 s once its probes have
// backed off.
const probeAfterIdle = 500 * time.Millisecond

const (
	// unseenInARow answers counting no consumer make the node left: a
	// leader merely slow to answer (over 250 ms, on a loaded cluster) gives
	// one now and then (seen once in 12 tries on a healthy RabbitMQ 4.0
	// cluster during a CI run), not four half a second apart.
	unseenInARow = 4
	// probeEveryMax bounds the spacing of probes on a consumer that stays
	// idle and seen.
	probeEveryMax = 8 * time.Second
)

// idleProbe paces one consumer's probes and counts its answers.
type idleProbe struct {
	next   time.Time     // no probe before
	every  time.Duration // after an answer that counts the consumer
	unseen int           // answers in a row counting no consumer
}

// reset starts over after a delivery (heard): the next idle spell probes
// from probeAfterIdle on.
func (p *idleProbe) reset(heard time.Time) {
	*p = idleProbe{next: heard.Add(probeAfterIdle), every: time.Second}
}

// queueLeaderUnreachableError: the consumer's node counted no consumer of
// its queue, unseenInARow times in a row, while the consumer was attached.
type queueLeaderUnreachableError struct {
	queue string
	idle  time.Duration
}

func (e *queueLeaderUnreachableError) Error() string {
	return fmt.Sprintf("no delivery for %s and this node counts no consumer of quorum queue %q, %d times in a row, while one is attached: its leader is out of reach (the minority side of a partition?); trying another URI",
		e.idle.Round(time.Millisecond), e.queue, unseenInARow)
}

// Unwrap makes it a lost connection: the subscriptions attach again on the
// next one.
func (*queueLeaderUnreachableError) Unwrap() error { return errConnectionLost }

// probe probes c's node when a probe is due (heard: c's last delivery,
// or its start), and breaks the connection off once the node counted no
// consumer of the queue unseenInARow times in a row; it reports whether it
// did. Called on each leave check, only for a session that can leave its
// node.
func (p *idleProbe) probe(sub *subscription, c *consumer, heard, now time.Time) (left bool) {
	if now.Before(p.next) {
		return false
	}
	c.sess.trust.startPulse() // none if one is out; a failed one cuts the link
	if !sub.limit.quorum {
		p.next = now.Add(p.every)
		p.every = min(2*p.every, probeEveryMax)
		return false
	}
	var q amqp091.Queue
	err := c.sess.trust.awaitReply("a passive declaration of "+sub.queue, func() (err error) {
		q, err = c.ch.QueueDeclarePassive(sub.queue, false, false, false, false, nil)
		return err
	})
	if err != nil {
		return false // the channel or the connection died: the consume loop sees it
	}
	if q.Consumers > 0 || sub.leftUnseen {
		// Counted; or not, right after leaving a node for that: then the
		// queue may have no leader anywhere (its majority lost, an
		// election), and leaving again would only hop from node to node.
		sub.leftUnseen = sub.leftUnseen && q.Consumers == 0
		p.unseen = 0
		p.next = now.Add(p.every)
		p.every = min(2*p.every, probeEveryMax)
		return false
	}
	p.unseen++
	p.next = now.Add(leaveCheckEvery)
	if p.unseen < unseenInARow {
		return false
	}
	sub.leftUnseen = true
	why := &queueLeaderUnreachableError{queue: sub.queue, idle: now.Sub(heard)}
	sub.logger.Info("Leaving a node that cannot reach the queue's leader", watermill.LogFields{"reason": why.Error()}) // absorbed
	c.sess.trust.breakOff(why)
	return true
}
