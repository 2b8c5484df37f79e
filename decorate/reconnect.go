package decorate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Defaults of ReconnectConfig, each documented on its field.
const (
	defaultReconnectMaxWait      = 30 * time.Second
	defaultReconnectPollInterval = 100 * time.Millisecond
)

// ReconnectConfig configures Reconnect. The zero value is valid.
type ReconnectConfig struct {
	// MaxWait bounds how long one Publish waits for the connection. When it
	// passes, the publish is attempted anyway and the publisher reports its
	// own error: a connection flag that is wrong must not stop publishing
	// for good. Default 30s.
	MaxWait time.Duration
	// PollInterval is how often IsConnected is asked while waiting, for a
	// publisher that is a ConnectionReporter but not a ConnectionWaiter
	// (watermill-amqp's). Default 100ms.
	PollInterval time.Duration
	// OnWait, when set, is called after each wait for the connection with
	// how long it took and why it ended (nil: connected, or MaxWait passed
	// and the publish goes ahead). A publisher that has WaitConnected but
	// not IsConnected is waited for (briefly, when up) before every
	// publish. It runs on the publishing goroutine: keep it short.
	OnWait func(waited time.Duration, err error)
	// Logger logs waits at Info. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *ReconnectConfig) setDefaults() {
	if c.MaxWait == 0 {
		c.MaxWait = defaultReconnectMaxWait
	}
	if c.PollInterval == 0 {
		c.PollInterval = defaultReconnectPollInterval
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports a configuration Reconnect cannot work with. The zero
// value is valid: zero fields take their defaults.
func (c ReconnectConfig) Validate() error {
	c.setDefaults() // zero fields are valid: they take their defaults
	var errs []error
	if c.MaxWait < 0 {
		errs = append(errs, errors.New("MaxWait must not be negative"))
	}
	if c.PollInterval <= 0 {
		errs = append(errs, errors.New("PollInterval must be positive"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("decorate: invalid ReconnectConfig: %w", errors.Join(errs...))
	}
	return nil
}

// ErrNotConnected is wrapped by the error Reconnect returns when a message's
// Context() ends, or the decorated publisher is closed, while Publish waits
// for the connection. Nothing was sent.
var ErrNotConnected = errors.New("decorate: publisher not connected")

// Reconnect returns a decorator that, before each Publish, waits until the
// wrapped publisher reports its connection up, so that attempts are not
// burnt against a dead connection. It does not retry by itself: stack it
// under Retry (Retry(Reconnect(pub))), and each retry first waits for the
// connection, the wait costing no attempt.
//
// The wrapped publisher reports its connection by implementing
// ConnectionReporter (IsConnected), and optionally ConnectionWaiter
// (WaitConnected), which Reconnect then uses instead of polling
// IsConnected every PollInterval. resilient.Publisher implements both;
// watermill-amqp's amqp.Publisher implements IsConnected, and while it is
// down its Publish fails with "not connected to AMQP". A publisher that
// implements neither is published to directly, and Reconnect is a no-op.
//
// A wait ends when the connection is up, after MaxWait (the publish is then
// attempted anyway), when any message's Context() ends, or when the
// decorated publisher is closed; the last two return an error wrapping
// ErrNotConnected and the reason, and send nothing. A publisher already
// closed (Closed() true, as watermill-amqp's reports) is not waited for.
//
// The returned publisher forwards IsConnected and WaitConnected to the
// wrapped one.
func Reconnect(config ReconnectConfig) message.PublisherDecorator {
	return func(pub message.Publisher) (message.Publisher, error) {
		if pub == nil {
			return nil, errors.New("decorate: Reconnect: nil publisher")
		}
		config.setDefaults()
		if err := config.Validate(); err != nil {
			return nil, err
		}
		r := &reconnectPublisher{pub: pub, cfg: config}
		r.closing, r.stop = context.WithCancel(context.Background())
		r.reporter, _ = pub.(ConnectionReporter)
		r.waiter, _ = pub.(ConnectionWaiter)
		r.closed, _ = pub.(closedReporter)
		return forward(r, pub), nil
	}
}

type reconnectPublisher struct {
	pub      message.Publisher
	cfg      ReconnectConfig
	reporter ConnectionReporter // nil if pub does not report
	waiter   ConnectionWaiter   // nil if pub cannot wait
	closed   closedReporter     // nil if pub does not say

	closing context.Context // ends when Close is called: ends every wait
	stop    context.CancelFunc
}

var errReconnectClosed = errors.New("decorate: Reconnect: publisher closed")

func (r *reconnectPublisher) Publish(topic string, messages ...*message.Message) error {
	if err := r.wait(topic, messages); err != nil {
		return err
	}
	return r.pub.Publish(topic, messages...)
}

// wait returns once the publisher is connected or MaxWait passed (nil), or
// with an error when the messages' context ends or Close is called.
func (r *reconnectPublisher) wait(topic string, messages []*message.Message) error {
	if r.connected() {
		return nil
	}
	if r.waiter == nil && r.reporter == nil {
		return nil
	}
	if r.closed != nil && r.closed.Closed() {
		return nil // let the publisher say it is closed
	}
	start := time.Now()
	msgCtx, release := callContext(messages)
	defer release()
	ctx, cancel := context.WithTimeoutCause(msgCtx, r.cfg.MaxWait, errMaxWait)
	defer cancel()

	if r.reporter != nil {
		r.cfg.Logger.Info("Publisher not connected, waiting", watermill.LogFields{"topic": topic})
	}
	var err error
	if r.waiter != nil {
		err = r.waitWith(ctx)
	} else {
		err = r.poll(ctx)
	}
	waited := time.Since(start)
	switch {
	case err == nil:
		if r.reporter != nil {
			r.cfg.Logger.Info("Publisher connected", watermill.LogFields{"topic": topic, "waited": waited.String()})
		}
	case errors.Is(context.Cause(ctx), errMaxWait) && msgCtx.Err() == nil:
		err = nil // attempt anyway
		r.cfg.Logger.Info("Still not connected after MaxWait, publishing anyway", watermill.LogFields{"topic": topic, "waited": waited.String()})
	default:
		err = fmt.Errorf("%w after %s: %w", ErrNotConnected, waited.Round(time.Millisecond), err)
	}
	if r.cfg.OnWait != nil {
		r.cfg.OnWait(waited, err)
	}
	return err
}

var errMaxWait = errors.New("decorate: Reconnect: MaxWait passed")

func (r *reconnectPublisher) connected() bool {
	return r.reporter != nil && r.reporter.IsConnected()
}

// waitWith waits with the publisher's WaitConnected, ended early by Close.
func (r *reconnectPublisher) waitWith(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(r.closing, func() { cancel(errReconnectClosed) })()
	if err := r.waiter.WaitConnected(ctx); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return cause
		}
		return err
	}
	return nil
}

// poll asks IsConnected every PollInterval.
func (r *reconnectPublisher) poll(ctx context.Context) error {
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if r.reporter.IsConnected() {
				return nil
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-r.closing.Done():
			return errReconnectClosed
		}
	}
}

// Close ends the waits of publishes in progress and closes the wrapped
// publisher. It is safe to call more than once.
func (r *reconnectPublisher) Close() error {
	r.stop()
	return r.pub.Close()
}
