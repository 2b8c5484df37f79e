package decorate

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
)

// ConnectionReporter is implemented by a publisher that knows whether its
// connection is up. resilient.Publisher implements it, and so does
// watermill-amqp's amqp.Publisher (through its embedded ConnectionWrapper).
// Reconnect uses it to wait for a dead connection instead of publishing into
// it.
type ConnectionReporter interface {
	// IsConnected reports whether a connection is up right now.
	IsConnected() bool
}

// ConnectionWaiter is implemented by a publisher that can block until its
// connection is up, so Reconnect need not poll. resilient.Publisher
// implements it; it returns an error when ctx ends or when the publisher is
// closed.
type ConnectionWaiter interface {
	WaitConnected(ctx context.Context) error
}

// closedReporter is implemented by watermill-amqp's ConnectionWrapper: a
// closed publisher never reconnects, so waiting for it is pointless.
type closedReporter interface {
	Closed() bool
}

// forward returns outer as a message.Publisher that also has the connection
// methods inner has (IsConnected, WaitConnected), forwarded to inner, and no
// others. Decorators wrap their publisher with it so that stacking them keeps
// a Reconnect (or a health check) above them working, without claiming a
// capability the publisher underneath lacks.
func forward(outer message.Publisher, inner message.Publisher) message.Publisher {
	reporter, isReporter := inner.(ConnectionReporter)
	waiter, isWaiter := inner.(ConnectionWaiter)
	switch {
	case isReporter && isWaiter:
		return &reportingWaitingPublisher{outer, reporter, waiter}
	case isReporter:
		return &reportingPublisher{outer, reporter}
	case isWaiter:
		return &waitingPublisher{outer, waiter}
	}
	return outer
}

type reportingPublisher struct {
	message.Publisher
	r ConnectionReporter
}

func (p *reportingPublisher) IsConnected() bool { return p.r.IsConnected() }

type waitingPublisher struct {
	message.Publisher
	w ConnectionWaiter
}

func (p *waitingPublisher) WaitConnected(ctx context.Context) error { return p.w.WaitConnected(ctx) }

type reportingWaitingPublisher struct {
	message.Publisher
	r ConnectionReporter
	w ConnectionWaiter
}

func (p *reportingWaitingPublisher) IsConnected() bool { return p.r.IsConnected() }

func (p *reportingWaitingPublisher) WaitConnected(ctx context.Context) error {
	return p.w.WaitConnected(ctx)
}

// callContext returns a context that ends as soon as the Context() of any of
// msgs ends (with that context's cause), and the function that releases it.
// Messages without a deadline or cancellation (message.NewMessage gives them
// context.Background()) do not count. Nil messages are skipped: the
// publisher underneath rejects them.
func callContext(msgs []*message.Message) (context.Context, context.CancelFunc) {
	var distinct []context.Context
	for _, m := range msgs {
		if m == nil {
			continue
		}
		c := m.Context()
		if c.Done() == nil {
			continue
		}
		seen := false
		for _, d := range distinct {
			seen = seen || d == c
		}
		if !seen {
			distinct = append(distinct, c)
		}
	}
	switch len(distinct) {
	case 0:
		return context.Background(), func() {}
	case 1:
		return distinct[0], func() {}
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	stops := make([]func() bool, 0, len(distinct))
	for _, c := range distinct {
		stops = append(stops, context.AfterFunc(c, func() { cancel(context.Cause(c)) }))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel(context.Canceled)
	}
}
