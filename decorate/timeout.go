package decorate

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Timeout returns a decorator that bounds each Publish by timeout: for the
// duration of the call, every message's Context() gets a deadline timeout
// from now (or its own, if sooner), and the original context is put back
// when Publish returns, so that a message published again later starts
// afresh.
//
// It bounds only a publisher that honours the messages' contexts.
// core.Publisher (package resilient's, resilientv3's) does, in every wait,
// and returns a *core.PublishError wrapping context.DeadlineExceeded; watermill-amqp's
// amqp.Publisher honours it while writing a message but not while waiting
// for its confirm.
//
// Where it sits decides what it bounds. Above Retry
// (Timeout(Retry(pub))), it is the deadline of the whole call, retries
// included: Retry sees the messages' contexts end and stops. Under Retry
// (Retry(Timeout(pub))), it bounds each attempt, and Retry tries again after
// an attempt that ran out of time (within its own limits).
//
// Timeout must not be used with messages whose Publish calls overlap (the
// same *message.Message published from two goroutines at once): the
// context of a message is a field of the message.
func Timeout(timeout time.Duration) message.PublisherDecorator {
	return func(pub message.Publisher) (message.Publisher, error) {
		if pub == nil {
			return nil, fmt.Errorf("decorate: Timeout: nil publisher")
		}
		if timeout <= 0 {
			return nil, fmt.Errorf("decorate: Timeout: timeout must be positive, got %s", timeout)
		}
		return forward(&timeoutPublisher{pub: pub, timeout: timeout}, pub), nil
	}
}

type timeoutPublisher struct {
	pub     message.Publisher
	timeout time.Duration
}

func (t *timeoutPublisher) Publish(topic string, messages ...*message.Message) error {
	deadline := time.Now().Add(t.timeout)
	originals := make([]context.Context, len(messages))
	// One derived context per distinct original: messages that shared a
	// context still share one, which publishers may rely on.
	derived := make(map[context.Context]context.Context, 1)
	var cancels []context.CancelFunc
	for i, m := range messages {
		if m == nil {
			continue
		}
		orig := m.Context()
		originals[i] = orig
		ctx, ok := derived[orig]
		if !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(orig, deadline)
			derived[orig] = ctx
			cancels = append(cancels, cancel)
		}
		m.SetContext(ctx)
	}
	defer func() {
		for i, m := range messages {
			if m != nil {
				m.SetContext(originals[i])
			}
		}
		for _, cancel := range cancels {
			cancel()
		}
	}()
	return t.pub.Publish(topic, messages...)
}

func (t *timeoutPublisher) Close() error { return t.pub.Close() }
