package health

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// DefaultMaxDisconnected is how long a component may go without a
// connection before liveness fails, unless NewChecker is given another bound.
const DefaultMaxDisconnected = time.Minute

// Reporter is what the checker reads: *core.Publisher and
// *core.Subscriber are Reporters.
type Reporter interface {
	Health() core.Health
}

// Checker checks named components. Its methods are safe for concurrent use.
type Checker struct {
	maxDisconnected time.Duration
	now             func() time.Time

	mu         sync.RWMutex
	components []component
}

type component struct {
	name     string
	reporter Reporter
}

// NewChecker returns a checker with no components, whose liveness fails
// after maxDisconnected without a connection (0: DefaultMaxDisconnected).
func NewChecker(maxDisconnected time.Duration) *Checker {
	if maxDisconnected <= 0 {
		maxDisconnected = DefaultMaxDisconnected
	}
	return &Checker{maxDisconnected: maxDisconnected, now: time.Now}
}

// Add adds a component under name (shown in errors and bodies) and returns
// the checker, for chaining.
func (c *Checker) Add(name string, r Reporter) *Checker {
	c.mu.Lock()
	c.components = append(c.components, component{name, r})
	c.mu.Unlock()
	return c
}

// Ready returns nil when every component is connected, and otherwise an
// error naming each one that is not, its state and why. It fails with
// ctx's error if ctx is done.
func (c *Checker) Ready(ctx context.Context) error {
	return c.check(ctx, readiness)
}

// Live returns nil unless a component has been without a connection for
// longer than the checker's bound, or is closed; then an error naming it.
func (c *Checker) Live(ctx context.Context) error {
	return c.check(ctx, liveness)
}

func (c *Checker) check(ctx context.Context, p probe) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var errs []error
	for _, r := range c.results(p, c.now()) {
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	return errors.Join(errs...)
}

// results evaluates every component for the probe at now, in the order
// added.
func (c *Checker) results(p probe, now time.Time) []result {
	c.mu.RLock()
	components := c.components
	c.mu.RUnlock()
	results := make([]result, len(components))
	for i, comp := range components {
		h := comp.reporter.Health()
		results[i] = result{name: comp.name, health: h, err: p.judge(comp.name, h, now, c.maxDisconnected)}
	}
	return results
}
