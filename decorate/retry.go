package decorate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// Decision is what a RetryConfig.Classify hook says about an error.
type Decision int

const (
	// Undecided leaves the error to Retry's own rules.
	Undecided Decision = iota
	// Transient: publishing again may succeed.
	Transient
	// Permanent: publishing again cannot succeed; give up at once.
	Permanent
)

// Defaults of RetryConfig, each documented on its field.
const (
	defaultRetryInitialInterval     = 100 * time.Millisecond
	defaultRetryMaxInterval         = 5 * time.Second
	defaultRetryMultiplier          = 2.0
	defaultRetryRandomizationFactor = 0.5
	defaultRetryMaxAttempts         = 10
	defaultRetryMaxElapsedTime      = time.Minute
)

// NoJitter as RetryConfig.RandomizationFactor turns jitter off (0 means the
// default), as core.NoJitter does for the publisher's own backoff.
const NoJitter = core.NoJitter

// RetryConfig configures Retry. The zero value is valid: every field has a
// default.
type RetryConfig struct {
	// InitialInterval is the wait after the first failed attempt.
	// Default 100ms.
	InitialInterval time.Duration
	// MaxInterval caps the wait between two attempts. Default 5s, or
	// InitialInterval when that is longer.
	MaxInterval time.Duration
	// Multiplier grows the wait after each failed attempt. Default 2.
	Multiplier float64
	// RandomizationFactor spreads each wait over
	// [wait*(1-f), wait*(1+f)], so publishers that failed together do not
	// retry together. Default 0.5; NoJitter (-1) for none.
	RandomizationFactor float64
	// MaxAttempts bounds the attempts, the first included. Default 10;
	// negative means no bound (MaxElapsedTime and the messages' contexts
	// still apply).
	MaxAttempts int
	// MaxElapsedTime bounds the whole Publish call: Retry does not start a
	// wait that would end after it. Default 1 minute; negative means no
	// bound.
	MaxElapsedTime time.Duration

	// Classify, when set, is asked first about every error. Return Transient
	// or Permanent to decide, Undecided to fall back on Retry's rules (see
	// Retry). Use it for the errors of a publisher this package does not
	// know, e.g. gochannel's "Pub/Sub closed".
	Classify func(err error) Decision

	// OnRetry, when set, is called before each wait with the number of the
	// attempt that failed (1 for the first), its error, and the wait. It
	// runs on the publishing goroutine: keep it short.
	OnRetry func(attempt int, err error, wait time.Duration)
	// OnGiveUp, when set, is called when Publish returns an error, with the
	// number of attempts made and the last error. It runs on the publishing
	// goroutine: keep it short.
	OnGiveUp func(attempts int, err error)

	// Logger logs retries and give-ups at Info. Default watermill.NopLogger.
	Logger watermill.LoggerAdapter
}

func (c *RetryConfig) setDefaults() {
	if c.InitialInterval == 0 {
		c.InitialInterval = defaultRetryInitialInterval
	}
	if c.MaxInterval == 0 {
		// Never below InitialInterval: a longer first wait alone is valid,
		// as for the publisher's own backoff.
		c.MaxInterval = max(defaultRetryMaxInterval, c.InitialInterval)
	}
	if c.Multiplier == 0 {
		c.Multiplier = defaultRetryMultiplier
	}
	if c.RandomizationFactor == 0 {
		c.RandomizationFactor = defaultRetryRandomizationFactor
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = defaultRetryMaxAttempts
	}
	if c.MaxElapsedTime == 0 {
		c.MaxElapsedTime = defaultRetryMaxElapsedTime
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports a configuration Retry cannot work with. The zero value
// is valid: zero fields take their defaults.
func (c RetryConfig) Validate() error {
	c.setDefaults() // zero fields are valid: they take their defaults
	var errs []error
	if c.InitialInterval < 0 {
		errs = append(errs, errors.New("InitialInterval must not be negative"))
	}
	if c.MaxInterval < c.InitialInterval {
		errs = append(errs, fmt.Errorf("MaxInterval (%s) must not be less than InitialInterval (%s)", c.MaxInterval, c.InitialInterval))
	}
	if c.Multiplier < 1 {
		errs = append(errs, fmt.Errorf("the Multiplier (%g) must be at least 1", c.Multiplier))
	}
	if (c.RandomizationFactor < 0 && c.RandomizationFactor != NoJitter) || c.RandomizationFactor > 1 {
		errs = append(errs, fmt.Errorf("RandomizationFactor (%g) must be within [0, 1], or NoJitter", c.RandomizationFactor))
	}
	if len(errs) > 0 {
		return fmt.Errorf("decorate: invalid RetryConfig: %w", errors.Join(errs...))
	}
	return nil
}

// Retry returns a decorator that publishes again, with exponential backoff
// and jitter, when the publisher it wraps fails with a transient error. It
// works with any message.Publisher.
//
// An error is permanent, and Retry returns it at once, when Classify says
// so, or else when core.IsPermanent says so (the typed errors of this
// module's publisher, and context.Canceled: someone gave up). Every other
// error is transient, context.DeadlineExceeded included: when the deadline was the
// caller's, the messages' contexts have ended and Retry stops for that
// reason; when it was one attempt's own (a Timeout stacked under Retry, the
// publisher's PublishTimeout), another attempt may succeed.
//
// Retry stops when the Context() of any message of the call ends, after
// MaxAttempts attempts, when the next wait would end after MaxElapsedTime,
// or when the decorated publisher is closed. It then returns the last
// error, wrapped with the number of attempts (errors.Is and errors.As see
// through it).
//
// Partial failure: when the publisher returns a *core.PublishError
// (this module's publisher does), the messages it does not list in
// Unconfirmed were confirmed, and the next attempt sends only the listed
// ones; the final error then names exactly the messages never confirmed.
// Any other error re-sends every message of the call, so a message may be
// published more than once: consumers should drop duplicates by UUID.
//
// Each Publish call has its own backoff, so concurrent calls do not slow
// each other. The returned publisher forwards IsConnected and WaitConnected
// to the wrapped one when it has them.
func Retry(config RetryConfig) message.PublisherDecorator {
	return func(pub message.Publisher) (message.Publisher, error) {
		if pub == nil {
			return nil, errors.New("decorate: Retry: nil publisher")
		}
		config.setDefaults()
		if err := config.Validate(); err != nil {
			return nil, err
		}
		r := &retryPublisher{pub: pub, cfg: config, closing: make(chan struct{})}
		return forward(r, pub), nil
	}
}

type retryPublisher struct {
	pub       message.Publisher
	cfg       RetryConfig
	closing   chan struct{} // closed by Close: ends every wait
	closeOnce sync.Once
}

// errRetryClosed ends a wait when the decorated publisher is closed.
var errRetryClosed = errors.New("decorate: Retry: publisher closed")

func (r *retryPublisher) Publish(topic string, messages ...*message.Message) error {
	err := r.pub.Publish(topic, messages...)
	if err == nil {
		return nil
	}
	return r.retry(topic, messages, err)
}

// retry runs the attempts after the first one failed with err.
func (r *retryPublisher) retry(topic string, messages []*message.Message, err error) error {
	start := time.Now()
	ctx, release := callContext(messages)
	defer release()
	// A fresh backoff per call: its state is this call's alone.
	b := &backoff.ExponentialBackOff{
		InitialInterval:     r.cfg.InitialInterval,
		RandomizationFactor: max(r.cfg.RandomizationFactor, 0), // NoJitter: none
		Multiplier:          r.cfg.Multiplier,
		MaxInterval:         r.cfg.MaxInterval,
	}
	b.Reset()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()

	remaining := messages
	for attempt := 1; ; attempt++ {
		if r.permanent(err) {
			return r.giveUp(topic, attempt, err, nil)
		}
		if cause := context.Cause(ctx); cause != nil {
			return r.giveUp(topic, attempt, err, cause)
		}
		if r.cfg.MaxAttempts > 0 && attempt >= r.cfg.MaxAttempts {
			return r.giveUp(topic, attempt, err, nil)
		}
		wait := b.NextBackOff()
		if r.cfg.MaxElapsedTime > 0 && time.Since(start)+wait > r.cfg.MaxElapsedTime {
			return r.giveUp(topic, attempt, err, nil)
		}
		remaining = unconfirmed(remaining, err)
		if r.cfg.OnRetry != nil {
			r.cfg.OnRetry(attempt, err, wait)
		}
		r.cfg.Logger.Info("Publish failed, retrying", watermill.LogFields{
			"topic": topic, "attempt": attempt, "wait": wait.String(), "messages": len(remaining), "error": err.Error(),
		})
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return r.giveUp(topic, attempt, err, context.Cause(ctx))
		case <-r.closing:
			return r.giveUp(topic, attempt, err, errRetryClosed)
		}
		if err = r.pub.Publish(topic, remaining...); err == nil {
			return nil
		}
	}
}

func (r *retryPublisher) permanent(err error) bool {
	if r.cfg.Classify != nil {
		switch r.cfg.Classify(err) {
		case Permanent:
			return true
		case Transient:
			return false
		}
	}
	return core.IsPermanent(err)
}

// unconfirmed returns the messages of msgs that err says were not
// confirmed: those a *core.PublishError names, or all of them when err
// says nothing about which (or names none of msgs: better a duplicate than a
// loss).
func unconfirmed(msgs []*message.Message, err error) []*message.Message {
	var pe *core.PublishError
	if !errors.As(err, &pe) || len(pe.Unconfirmed) == 0 {
		return msgs
	}
	ids := make(map[string]struct{}, len(pe.Unconfirmed))
	for _, id := range pe.Unconfirmed {
		ids[id] = struct{}{}
	}
	var left []*message.Message
	for _, m := range msgs {
		if m == nil {
			continue
		}
		if _, ok := ids[m.UUID]; ok {
			left = append(left, m)
		}
	}
	if len(left) == 0 {
		return msgs
	}
	return left
}

// giveUp reports and returns the last error; why, when set, is the reason
// to stop that err does not already say (a context that ended, Close).
func (r *retryPublisher) giveUp(topic string, attempts int, err, why error) error {
	if r.cfg.OnGiveUp != nil {
		r.cfg.OnGiveUp(attempts, err)
	}
	r.cfg.Logger.Info("Publish failed, giving up", watermill.LogFields{
		"topic": topic, "attempts": attempts, "error": err.Error(),
	})
	if why != nil && !errors.Is(err, why) {
		return fmt.Errorf("decorate: Retry: gave up after %d attempt(s) (%w): %w", attempts, why, err)
	}
	return fmt.Errorf("decorate: Retry: gave up after %d attempt(s): %w", attempts, err)
}

// Close ends the waits of publishes in progress (they return their last
// error) and closes the wrapped publisher. It is safe to call more than
// once; the wrapped publisher's Close decides what a second call returns.
func (r *retryPublisher) Close() error {
	r.closeOnce.Do(func() { close(r.closing) })
	return r.pub.Close()
}
