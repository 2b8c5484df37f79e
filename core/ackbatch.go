package core

import (
	"runtime"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// ackBatch is the acks a consumer owes the broker for messages its handler
// acked, held back to go as one basic.ack with multiple set: it acks every
// delivery of the channel up to its tag. The broker handles one frame
// instead of one per message (on a quorum queue, one Raft command), and so
// does the client.
//
// The subscription hands out one message at a time, in delivery order, so
// every delivery up to the last one acked is settled: acked (held here), or
// nacked (a nack is sent at once, after the acks held before it). The acks
// go out when
//
//   - max are held (Config.AckBatch, at most half the prefetch count, so
//     that the broker keeps delivering meanwhile),
//   - the oldest has waited wait (Config.AckBatchWait), whatever the
//     handler is doing,
//   - no delivery is ready when the handler is done: the handler is idle,
//     so nothing is gained by waiting (and with the prefetch count reached
//     the broker would send nothing more),
//   - before a nack, and when the consumer stops while its channel lives
//     (its subscription cancelled or Close, an attach again).
//
// At-least-once is kept: acks held when the channel dies are never sent
// (nor when the connection is cut: a node left, a link deemed broken), and
// the broker delivers those messages again (delivery tags belong to their
// channel). A fault costs at most max duplicates per channel.
type ackBatch struct {
	max  int
	wait time.Duration

	tag     uint64 // the last delivery acked and not yet sent
	held    int
	handler string // the Router handler of the last, for the event
	timer   *time.Timer
	due     <-chan time.Time // fires wait after the oldest held; nil when none is
}

// acker sends basic.ack: a consumer's *amqp091.Channel.
type acker interface {
	Ack(tag uint64, multiple bool) error
}

// newAckBatch holds up to max acks (1: none, each is sent at once) for at
// most wait, on a channel whose consumer has prefetch as its prefetch count
// (0: unlimited).
func newAckBatch(max int, wait time.Duration, prefetch int) ackBatch {
	if prefetch > 0 {
		max = min(max, prefetch/2)
	}
	return ackBatch{max: max, wait: wait}
}

// add acks delivery tag for handler: sent at once when the batch is full
// (or batching is off), held otherwise. sent is how many acks went out
// (0 when held or failed); err is the send's error.
func (b *ackBatch) add(ch acker, tag uint64, handler string) (sent int, err error) {
	if b.max <= 1 {
		if err := ch.Ack(tag, false); err != nil {
			return 0, err
		}
		return 1, nil
	}
	b.tag, b.handler = tag, handler
	b.held++
	if b.held == 1 {
		b.startTimer()
	}
	if b.held >= b.max {
		return b.flush(ch)
	}
	return 0, nil
}

// flush sends the acks held, as one. sent is how many it acked; on an error
// (the channel is closing) none is sent, and the broker delivers them
// again.
func (b *ackBatch) flush(ch acker) (sent int, err error) {
	if b.held == 0 {
		return 0, nil
	}
	n, tag := b.held, b.tag
	b.held, b.due = 0, nil
	b.timer.Stop()
	if err := ch.Ack(tag, n > 1); err != nil {
		return 0, err
	}
	return n, nil
}

// pending reports whether acks are held.
func (b *ackBatch) pending() bool { return b.held > 0 }

// dueC fires once the oldest ack held has waited long enough; nil when none
// is held.
func (b *ackBatch) dueC() <-chan time.Time { return b.due }

func (b *ackBatch) startTimer() {
	if b.timer == nil {
		b.timer = time.NewTimer(b.wait)
	} else {
		b.timer.Reset(b.wait) // stopped at the last flush; Go 1.23 timers drop a stale fire
	}
	b.due = b.timer.C
}

// stop releases the timer.
func (b *ackBatch) stop() {
	if b.timer != nil {
		b.timer.Stop()
	}
}

// nextReady takes a delivery if one is ready. amqp091-go hands deliveries
// over from a goroutine of its own, which may be busy taking the next one
// off the socket just as the handler is done: it gets one chance to hand
// it over before the subscription takes the handler to be idle (and sends
// the acks it holds, in a smaller batch than need be).
func nextReady(deliveries <-chan amqp091.Delivery) (d amqp091.Delivery, ok, got bool) {
	for try := 0; ; try++ {
		select {
		case d, ok = <-deliveries:
			return d, ok, true
		default:
		}
		if try == 1 {
			return d, false, false
		}
		runtime.Gosched()
	}
}
