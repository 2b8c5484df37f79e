package core

import (
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
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

	mu       sync.Mutex
	why      *amqp091.Error // why the channel closed; read without mu once dead is closed
	started  bool           // taken by the subscription: see markStarted
	reported bool           // its loss was reported
}

// errConsumerCancelled is why a consumer whose channel lives on was lost:
// the broker cancelled it (basic.cancel: its queue was deleted).
var errConsumerCancelled = errors.New("consumer cancelled by the broker")

// start opens a channel, declares the topology on it, sets the prefetch
// and starts consuming. A failure at any step closes the channel.
func (sub *subscription) start(sess *session) (*consumer, error) {
	cfg := sub.s.cfg.AMQP
	ch, err := sess.openChannel()
	if err != nil {
		return nil, err
	}
	c := &consumer{sess: sess, ch: ch, dead: make(chan struct{})}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	go func() { // ends when amqp091-go closes the notification channel
		for e := range closed {
			if sess.conn.IsClosed() { // part of the connection's loss, which the supervisor logs
				sub.logger.Debug("Channel closed with its connection", watermill.LogFields{"reason": e.Error()})
			} else {
				sub.logger.Info("Channel closed", watermill.LogFields{"reason": e.Error()})
			}
			c.mu.Lock()
			c.why = e
			report := c.started && !c.reported
			c.reported = c.reported || report
			c.mu.Unlock()
			if report {
				sub.reportLost(e)
			}
		}
		close(c.dead)
	}()
	fail := func(err error) (*consumer, error) {
		_ = ch.Close()
		<-c.dead
		return nil, err
	}
	if err := cfg.BuildTopology(ch, sub.topic, sub.queue, sub.exchange, sub.logger); err != nil {
		return fail(err)
	}
	if q := cfg.Consume; q.PrefetchCount != 0 || q.PrefetchSize != 0 {
		// Per consumer, whatever Qos.Global says: this channel has one
		// consumer, so it is the same limit, and quorum queues refuse a
		// global one (540 NOT_IMPLEMENTED, closing the whole connection).
		if err := ch.Qos(q.PrefetchCount, q.PrefetchSize, false); err != nil {
			return fail(err)
		}
	}
	c.deliveries, err = ch.Consume(sub.queue, cfg.Consume.Consumer, false,
		cfg.Consume.Exclusive, cfg.Consume.NoLocal, cfg.Consume.NoWait, cfg.Consume.Arguments)
	if err != nil {
		return fail(err)
	}
	return c, nil // started by the subscription: see markStarted
}

// markStarted makes c's loss reportable, once the subscription took it as
// its consumer (open): one lost before (its topology refused, say) is a
// failed attach, and one whose attach was given up on is no one's loss
// (attachstall.go). Reported once, whether its channel closed before this
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

// reportLost reports a consumer lost while the subscription runs: not one
// that Close or the subscription's end takes down.
func (sub *subscription) reportLost(why error) {
	if sub.ctx.Err() == nil {
		sub.s.cfg.emit(Event{Kind: ConsumerLost, Err: why})
	}
}
