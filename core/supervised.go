package core

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
)

// supervised is what a Publisher and a Subscriber share: a connection kept
// up by a supervisor, whose state changes a notifier reports to
// OnStateChange, and the methods that report that state.
type supervised struct {
	sup      *supervisor
	notifier *notifier
}

// startSupervised starts the notifier and the supervisor, which runs
// startSession on every new connection (nil: nothing). On failure nothing
// it started is left running.
func startSupervised(cfg *settings, logger watermill.LoggerAdapter, startSession func(*session)) (supervised, error) {
	n := newNotifier(cfg.OnStateChange, logger)
	sup, err := startSupervisor(cfg, logger, n, startSession)
	if err != nil {
		n.stop()
		return supervised{}, err
	}
	return supervised{sup: sup, notifier: n}, nil
}

// Status returns the state of the connection.
func (c supervised) Status() State { return c.sup.status() }

// Health returns the state of the connection, since when, and why.
func (c supervised) Health() Health { return c.sup.health() }

// IsConnected reports whether a connection is up (blocked counts as up).
func (c supervised) IsConnected() bool { return c.sup.connected() }

// WaitConnected blocks until a connection is up, ctx ends, or the
// publisher or subscriber is closed (ErrClosed).
func (c supervised) WaitConnected(ctx context.Context) error {
	_, err := c.sup.await(ctx)
	return err
}
