package core

import (
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A consumer alone on the minority side of a partition (autoheal, or
// pause_minority before its node notices), with no publisher of its
// process to follow off the node (nodesleft.go), gets no delivery and no
// error. One thing tells, for a quorum queue whose leader is on another
// node: a passive declaration there reports the queue's consumers as the
// leader counts them, and when the leader does not answer within 250 ms
// RabbitMQ reports none (rabbit_quorum_queue:stat, 3.10 and 4.x alike). A
// consumer that is attached, and asks, is one of them: none, several times
// in a row, means its node cannot reach the queue's leader.
//
// So a consumer of a quorum queue, with another URI to go to, that has had
// no delivery for probeIdle asks; while the answers count it, it asks again
// after 1, 2, 4 and at most every 8 s. Once an answer counts no consumer it
// asks every leaveCheckEvery (half a second), and leaves the node after
// unseenInARow such answers in a row: about 2 s after its last delivery.
// A leader that sits on the minority node itself still answers, and
// counts the consumer: that case stays as it was (the README's
// "Partitions").
//
// Not for other queue types: a stream always reports no consumer, and a
// classic queue's count comes from its own process, which does not answer
// when unreachable (the declaration waits, bounded as any request is).

// probeIdle is how long a consumer goes without a delivery before it
// probes. Short: a queue with traffic delivers far more often, and an idle
// one costs a passive declaration per 8 s once its probes have backed off.
const probeIdle = time.Second

const (
	// unseenInARow answers counting no consumer make the node left.
	unseenInARow = 3
	// probeEveryMax bounds the spacing of probes on a consumer that stays
	// idle and seen: an idle subscription costs one passive declaration
	// per 8 s.
	probeEveryMax = 8 * time.Second
)

// leaderProbe paces one consumer's probes and counts its answers.
type leaderProbe struct {
	next   time.Time     // no probe before
	every  time.Duration // after an answer that counts the consumer
	unseen int           // answers in a row counting no consumer
}

// reset starts over after a delivery (heard): the next idle spell probes
// from probeIdle on.
func (p *leaderProbe) reset(heard time.Time) {
	*p = leaderProbe{next: heard.Add(probeIdle), every: time.Second}
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

// probeLeader asks c's node, when a probe is due (heard: c's last delivery,
// or its start), how many consumers the
// queue has, and breaks the connection off once it counted none
// unseenInARow times in a row; it reports whether it did. Called on each
// leave check, only for a session that can leave its node.
func (sub *subscription) probeLeader(c *consumer, p *leaderProbe, heard, now time.Time) (left bool) {
	if !sub.limit.quorum || now.Before(p.next) {
		return false
	}
	var q amqp091.Queue
	err := c.sess.awaitReply("a passive declaration of "+sub.queue, func() (err error) {
		q, err = c.ch.QueueDeclarePassive(sub.queue, false, false, false, false, nil)
		return err
	})
	if err != nil {
		return false // the channel or the connection died: the consume loop sees it
	}
	if q.Consumers > 0 {
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
	why := &queueLeaderUnreachableError{queue: sub.queue, idle: now.Sub(heard)}
	sub.logger.Info("Leaving a node that cannot reach the queue's leader", watermill.LogFields{"reason": why.Error()}) // absorbed
	c.sess.breakOff(why)
	return true
}
