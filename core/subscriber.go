package core

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Subscriber is a watermill message.Subscriber for RabbitMQ that keeps
// consuming through connection and channel loss: it reconnects (with the
// same supervisor as the Publisher: failover URIs, heartbeat, backoff),
// declares the topology again and resumes consuming on its own.
//
// Delivery is at-least-once: a message is acked to the broker only after
// the handler Acks it; Nack sends basic.nack with requeue (unless
// AMQP.Consume.NoRequeueOnNack). After a fault the broker redelivers what
// was not acked, so a message may arrive more than once (its UUID is the
// same: deduplicate on it, e.g. with watermill's middleware.Deduplicator).
// It is safe for concurrent use.
type Subscriber struct {
	supervised // the connection, and Status, Health, IsConnected, WaitConnected
	cfg        *settings
	logger     watermill.LoggerAdapter

	mu     sync.Mutex // guards closed against subs.Add
	closed bool
	subs   sync.WaitGroup

	closeCtx  context.Context // cancelled by Close: every subscription ends
	cancel    context.CancelFunc
	closeOnce sync.Once

	prefetch prefetchNotice // prefetchnotice.go
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber validates cfg, connects, and returns a Subscriber.
//
// From cfg.AMQP it uses Connection, Queue (GenerateName and the queue's
// flags), Exchange, QueueBind, TopologyBuilder, Consume (Qos, Consumer,
// Exclusive, NoLocal, NoWait, Arguments, NoRequeueOnNack) and Marshaler
// (its Unmarshal). Of the knobs of Config it uses FailoverURIs,
// FailoverInOrder, ConnectionName (default AmqpConfig's connection_name
// property, else "watermill-resilient-subscriber"), Heartbeat, DialTimeout, Reconnect,
// RetryOnFailedConnect, PublishTimeout (which bounds how long
// SubscribeInitialize waits for a connection), ConfirmTimeout (which bounds
// the broker's replies), CloseTimeout, AckBatch, AckBatchWait, OnEvent and
// OnStateChange; the publishing knobs are ignored.
//
// It fails like NewPublisher: ErrConfig, ErrAccessRefused, ErrNotFound,
// ErrTLS, or an unreachable broker unless RetryOnFailedConnect. A nil
// logger logs nothing.
func NewSubscriber[A any](config Config[A], w Wiring, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	cfg := newSettings(config, w, defaultSubscriberConnectionName)
	if err := cfg.validate(false); err != nil {
		return nil, err
	}
	s := &Subscriber{cfg: cfg, logger: logger}
	s.closeCtx, s.cancel = context.WithCancel(context.Background())
	connection, err := startSupervised(cfg, logger, nil)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.supervised = connection
	return s, nil
}

// Subscribe consumes topic: its queue is AMQP.Queue.GenerateName(topic),
// declared and bound (AMQP.TopologyBuilder) on every connection and channel
// before consuming from it. The returned channel yields one message at a
// time: the next comes once the handler Acked or Nacked the previous one.
// It is closed when ctx ends or the subscriber is closed; messages not acked
// by then go back to the queue.
//
// When connected, Subscribe declares the topology and starts consuming
// before it returns, so that messages published afterwards are not lost;
// a declaration or a consumer the broker refuses (ErrPreconditionFailed,
// e.g. an exclusive queue held by another connection; ErrAccessRefused;
// ErrNotFound) fails it, and so does a connection that has as many
// channels as the broker's channel_max allows (ErrChannelLimit: each
// subscription holds one). When not connected it returns at once and
// consumes once connected. A running subscription that cannot attach again
// keeps trying, with Config.Reconnect's backoff; under channel_max it says
// so: a log line, a ChannelRefused event, Health.Degraded.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	queue, exchange, err := s.names(topic)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.subs.Add(1)
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.closeCtx, cancel)
	if err := s.declareIfConnected(ctx, topic, queue, exchange); err != nil && !errors.Is(err, errConnectionLost) {
		stop()
		cancel()
		s.subs.Done()
		if s.closeCtx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, err
	}
	sub := &subscription{
		s:          s,
		ctx:        ctx,
		topic:      topic,
		queue:      queue,
		exchange:   exchange,
		out:        make(chan *message.Message),
		unreadable: newUnreadableBackoff(),
		limit:      newDeliveryLimit(s.cfg.AMQP.QueueArguments),
		logger: s.logger.With(watermill.LogFields{
			"topic": topic, "amqp_queue_name": queue, "amqp_exchange_name": exchange,
		}),
	}
	s.prefetch.check(sub)
	var first chan error
	if s.sup.live() != nil {
		// Connected: wait for the first attach, so that a subscription
		// that cannot consume (channel_max reached, an exclusive queue or
		// consumer elsewhere) fails here, not in silence.
		first = make(chan error, 1)
		sub.first = first
	}
	go func() {
		defer s.subs.Done()
		defer cancel()
		defer stop()
		sub.run()
	}()
	if first == nil {
		return sub.out, nil
	}
	select {
	case err = <-first:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		return sub.out, nil
	}
	cancel() // the subscription ends, if it has not
	if s.closeCtx.Err() != nil {
		return nil, ErrClosed
	}
	return nil, fmt.Errorf("cannot consume %s: %w", queue, err)
}

// SubscribeInitialize declares the topology of topic (queue, exchange,
// binding) without consuming, waiting for a connection up to
// Config.PublishTimeout.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	queue, exchange, err := s.names(topic)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.subs.Add(1) // Close waits for the declaration
	s.mu.Unlock()
	defer s.subs.Done()
	ctx, cancel := context.WithTimeout(s.closeCtx, s.cfg.PublishTimeout)
	defer cancel()
	for {
		sess, err := s.sup.await(ctx)
		if err != nil {
			if s.closeCtx.Err() != nil {
				return ErrClosed
			}
			return err
		}
		err = s.declareTopology(ctx, sess, topic, queue, exchange)
		if s.closeCtx.Err() != nil {
			return ErrClosed
		}
		if !errors.Is(err, errConnectionLost) {
			return err
		}
		select { // the supervisor is replacing the session
		case <-sess.dead:
		case <-ctx.Done():
			return fmt.Errorf("%w (topology of %s not declared: connection lost)", ctx.Err(), topic)
		}
	}
}

// Close ends every subscription (their channels close; what they had not
// acked goes back to the queue), then the connection. It is idempotent and
// waits for every goroutine the subscriber started. It returns within
// Config.CloseTimeout and a small margin, whatever the network does: past
// it, the connection is cut, which ends what still waits on the broker.
func (s *Subscriber) Close() error {
	s.closeOnce.Do(func() {
		deadline := time.Now().Add(s.cfg.CloseTimeout)
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		waitBounded(&s.subs, s.cfg.CloseTimeout, func() {
			s.logger.Info("Close: subscriptions still closing after CloseTimeout, cutting the connection", nil)
			s.sup.stop(0)
		})
		s.sup.stop(time.Until(deadline)) // done already if it had to cut
		s.notifier.stop()
	})
	return nil
}

func (s *Subscriber) names(topic string) (queue, exchange string, err error) {
	if err := validName("topic", topic, false); err != nil {
		return "", "", err
	}
	queue = s.cfg.AMQP.QueueName(topic)
	exchange = s.cfg.AMQP.ExchangeName(topic)
	if err := validName("queue", queue, true); err != nil {
		return "", "", err
	}
	if err := validName("exchange", exchange, true); err != nil {
		return "", "", err
	}
	return queue, exchange, nil
}

// declareIfConnected declares topic's topology when a connection is up.
func (s *Subscriber) declareIfConnected(ctx context.Context, topic, queue, exchange string) error {
	sess := s.sup.live()
	if sess == nil {
		return errConnectionLost
	}
	return s.declareTopology(ctx, sess, topic, queue, exchange)
}

// declareTopology declares topic's topology on sess, on a goroutine of its own, and
// waits for it or for ctx: a declaration on a link that froze lasts until
// the socket is cut, and its caller need not wait that long. The caller
// holds s.subs, so that Close waits for the goroutine too.
func (s *Subscriber) declareTopology(ctx context.Context, sess *session, topic, queue, exchange string) error {
	done := make(chan error, 1)
	s.subs.Add(1)
	go func() {
		defer s.subs.Done()
		done <- sess.declareOnFreshChannel(topic, func(ch *amqp091.Channel, _ string) error {
			return s.cfg.AMQP.BuildTopology(ch, topic, queue, exchange, s.logger)
		})
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("topology of %s not declared: %w", topic, ctx.Err())
	}
}
