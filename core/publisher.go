package core

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Publisher is a watermill message.Publisher for RabbitMQ whose Publish
// returns nil only once the broker has confirmed every message, and which
// rides through connection loss by reconnecting and re-sending.
// It is safe for concurrent use.
type Publisher struct {
	supervised // the connection, and Status, Health, IsConnected, WaitConnected
	cfg        *settings
	logger     watermill.LoggerAdapter
	login      string // the user every URI logs in as, "" if unknown or not one

	mu     sync.RWMutex // guards closed against calls.Add
	closed bool
	calls  sync.WaitGroup

	abortCtx     context.Context // cancelled when Close stops waiting for calls
	abort        context.CancelCauseFunc
	wake         waker // of the calls waiting for confirms: see waker.go
	timeoutCause error // why a Publish ran out of time

	closeOnce sync.Once
	closeErr  error

	abandonedMu sync.Mutex
	abandoned   []string // UUIDs left unconfirmed because of Close

	buildTopic func(*amqp091.Channel, string) error // p.buildTopology, bound once

	// refusedTopics holds, by topic, why the broker refused its transient
	// queue (brokerreply.go): it is not declared again by this publisher,
	// since each refusal closes the whole connection, under every other
	// caller's messages too.
	refusedTopics sync.Map
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher validates cfg, read through w, connects, and returns a
// Publisher. The front doors call it: resilient.NewPublisher with
// watermill-amqp v2's Config, resilientv3.NewPublisher with v3's.
//
// It fails with an error matching ErrConfig for a bad configuration, with
// ErrAccessRefused when the broker refuses the credentials, with
// ErrNotFound for a missing vhost, and with ErrTLS when a certificate fails
// (the broker's or ours). When the broker cannot be reached it fails
// too, unless cfg.RetryOnFailedConnect is set. A nil logger logs nothing.
func NewPublisher[A any](config Config[A], w Wiring, logger watermill.LoggerAdapter) (*Publisher, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	cfg := newSettings(config, w, defaultPublisherConnectionName)
	if err := cfg.validate(true); err != nil {
		return nil, err
	}
	p := &Publisher{
		cfg:          cfg,
		logger:       logger,
		login:        loginUser(cfg),
		timeoutCause: fmt.Errorf("%w (%s)", errPublishTimeout, cfg.PublishTimeout),
	}
	p.buildTopic = p.buildTopology
	p.abortCtx, p.abort = context.WithCancelCause(context.Background())
	connection, err := startSupervised(cfg, logger, func(sess *session) { startPublishing(sess, &p.wake) })
	if err != nil {
		return nil, err
	}
	p.supervised = connection
	return p, nil
}

// Publish sends messages to topic and returns nil only once the broker has
// confirmed every one of them. On connection loss it waits for the
// reconnect and re-sends what was not confirmed, so a message may arrive
// more than once (its UUID is its AMQP message_id). It gives up when a
// message's Context() ends, after Config.PublishTimeout, or on Close, with
// a *PublishError naming the unconfirmed UUIDs. Invalid input (nil message,
// marshal failure, bad name, oversized body, a user_id that is not the
// connection's user) fails the whole call before anything is sent. Faults
// the broker reports for one exchange or message fail those messages only,
// with a permanent error (see IsPermanent).
func (p *Publisher) Publish(topic string, messages ...*message.Message) error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		p.refused(len(messages), ErrClosed)
		return ErrClosed
	}
	p.calls.Add(1)
	p.mu.RUnlock()
	defer p.calls.Done()

	batch, err := p.prepare(topic, messages)
	if err != nil {
		p.refused(len(messages), err)
		return err
	}
	if len(batch) == 0 {
		return nil
	}
	return (&call{p: p, topic: topic, batch: batch}).run()
}

// abortCalls gives up on the calls in progress: they return with ErrClosed.
// The waker is poked after the context ends, so that a call that took its
// channel before sees it close, and one that takes it after sees the end.
func (p *Publisher) abortCalls() {
	p.abort(ErrClosed)
	p.wake.poke()
}

// refused reports a call that failed before anything was sent.
func (p *Publisher) refused(messages int, err error) {
	if p.cfg.OnEvent == nil {
		return
	}
	p.cfg.emit(Event{Kind: PublishStarted, Messages: messages})
	p.cfg.emit(Event{Kind: MessagesFailed, Messages: messages, Err: err})
	p.cfg.emit(Event{Kind: PublishDone, Messages: messages, Err: err})
}

// queueToDeclare names the queue the publisher declares itself: that of a
// default-exchange (queue) config, so that a message published before any
// subscriber exists is kept, not acked and dropped as unroutable. Not an
// exclusive queue (Queue.Exclusive): the connection that declares one owns
// it, and others get 405 RESOURCE_LOCKED; it is the subscriber's, and goes
// with its connection. The publisher publishes to it as watermill-amqp's
// does, mandatory (see subscriberQueue).
func (p *Publisher) queueToDeclare(topic string) string {
	if p.cfg.AMQP.ExchangeName(topic) != "" || p.cfg.AMQP.QueueName == nil || p.cfg.AMQP.QueueExclusive {
		return ""
	}
	return p.cfg.AMQP.QueueName(topic)
}

// queueDeletedByDesign reports whether the config's queues are deleted as a
// matter of course, by their own arguments: auto-delete (with its last
// consumer) or x-expires (unused for a while). NoQueueDeletionGuard keeps
// the guard on for them.
func (p *Publisher) queueDeletedByDesign() bool {
	return p.cfg.AMQP.QueueAutoDelete || p.cfg.AMQP.QueueArguments["x-expires"] != nil
}

// subscriberQueue names the exclusive queue of a default-exchange config
// that the messages of topic go to, "" if none: it exists only while a
// subscriber's connection holds it, so its messages are published
// mandatory, and one published while it does not exist fails with
// ErrUnroutable rather than being confirmed and dropped.
func (p *Publisher) subscriberQueue(topic, exchange, routingKey string) string {
	if exchange != "" || p.cfg.AMQP.QueueName == nil || !p.cfg.AMQP.QueueExclusive {
		return ""
	}
	if queue := p.cfg.AMQP.QueueName(topic); queue == routingKey {
		return queue
	}
	return ""
}

// buildTopology declares the topology of topic on ch, run once per topic
// per connection.
func (p *Publisher) buildTopology(ch *amqp091.Channel, topic string) error {
	if exchange := p.cfg.AMQP.ExchangeName(topic); exchange != "" {
		return p.cfg.AMQP.DeclareExchange(ch, exchange)
	}
	if queue := p.queueToDeclare(topic); queue != "" {
		return p.cfg.AMQP.BuildTopology(ch, topic, queue, "", p.logger)
	}
	return nil
}

// Close stops accepting messages, waits up to Config.CloseTimeout for the
// publishes in progress to be confirmed, then closes the connection and
// waits for every goroutine it started. It returns within CloseTimeout and
// a small margin, whatever the network does: a connection that does not
// close in the time left is cut, and so is a dial in progress. It returns a
// *PublishError naming the messages that publishes in progress gave up on.
// Calling it again returns the same result.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() {
		deadline := time.Now().Add(p.cfg.CloseTimeout)
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()

		waitBounded(&p.calls, p.cfg.CloseTimeout, func() {
			// A give-up: those publishes return errors, their messages
			// unconfirmed.
			p.logger.Error("Close: publishes still in progress after CloseTimeout, giving up on them", ErrNotConfirmed, nil)
			p.abortCalls()
		})
		p.abortCalls()
		p.sup.stop(time.Until(deadline))
		p.notifier.stop()

		p.abandonedMu.Lock()
		defer p.abandonedMu.Unlock()
		if len(p.abandoned) > 0 {
			p.closeErr = &PublishError{Unconfirmed: p.abandoned, Err: fmt.Errorf("%w: %w", ErrNotConfirmed, ErrClosed)}
		}
		p.logger.Info("Publisher closed", nil)
	})
	return p.closeErr
}
