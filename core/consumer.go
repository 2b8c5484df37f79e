package core

import (
	"errors"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// consumer is one AMQP channel consuming a subscription's queue, and how it
// may end.
type consumer struct {
	sess       *session
	ch         *amqp091.Channel
	deliveries <-chan amqp091.Delivery
	dead       chan struct{} // closed once the channel is closed, for any reason
	cancelled  bool          // its deliveries ended: the broker cancelled it, or its channel died
	lastTag    uint64        // of the last delivery read
	acks       ackBatch      // acks held back, owned by the subscription's goroutine (ackbatch.go)

	mu       sync.Mutex
	why      *amqp091.Error // why the channel closed; read without mu once dead is closed
	started  bool           // taken by the subscription: see markStarted
	reported bool           // its loss was reported
}

// errConsumerCancelled is why a consumer whose channel lives on was lost:
// the broker cancelled it (basic.cancel: its queue was deleted).
var errConsumerCancelled = errors.New("consumer cancelled by the broker")

// markStarted makes c's loss reportable, once the subscription took it as
// its consumer (open): one lost before (its topology refused, say) is a
// failed attach, and one whose attach was given up on is no one's loss
// (attachhandoff.go). Reported once, whether its channel closed before this
// point or after.
func (c *consumer) markStarted(sub *subscription) {
	c.mu.Lock()
	c.started = true
	report := c.why != nil && !c.reported
	c.reported = c.reported || report
	why := c.why
	c.mu.Unlock()
	if report {
		sub.reportLost(why)
	}
}

// abandon closes the channel of a consumer whose attach was given up on
// (never started: its loss is no one's to report), and what it was sent
// goes back to the queue. The close's answer is not bounded: once the
// broker read the close, its consumer is gone whatever becomes of the
// answer, and the session's end frees the wait at the latest.
func (c *consumer) abandon() {
	_ = c.ch.Close()
	<-c.dead
}
