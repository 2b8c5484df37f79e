package core

import (
	"sync"
	"sync/atomic"
	"time"
)

// wakePeriod is how often a waker ticks while someone waits on it.
const wakePeriod = time.Second

// waker is the one clock of a publisher's callers: a channel that closes at
// its next tick, or at once when poked (Close gives up on the calls, a
// connection's session ends). A caller waiting for its messages' confirms
// selects on its facts and on this channel only; woken, it looks at what
// may have ended its wait (its deadline, Close, its session), and, if
// nothing did, waits on the next tick's channel. Its own timer is armed only
// once its deadline is less than a tick away (lazyDeadline.waitOn), so that
// PublishTimeout is kept to the moment.
//
// Why: a timer of its own and a select on the session's and Close's
// channels besides its facts cost each call a timer in the runtime's heap
// and three more channel locks, two of them shared by every caller, on the
// path every message takes. One waker's tick costs a timer per second, and
// wakes each waiting caller once a second.
type waker struct {
	// period is how often it ticks, wakePeriod if zero: a test sets it
	// long, so that only a poke wakes.
	period time.Duration

	current atomic.Pointer[chan struct{}] // nil when no tick is armed

	mu    sync.Mutex // arming and closing
	timer *time.Timer
}

// channel is closed at the next tick, or when the waker is poked.
func (w *waker) channel() <-chan struct{} {
	if c := w.current.Load(); c != nil {
		return *c
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.current.Load(); c != nil {
		return *c
	}
	c := make(chan struct{})
	w.current.Store(&c)
	w.timer = time.AfterFunc(w.tick(), func() { w.close(&c) })
	return c
}

func (w *waker) tick() time.Duration {
	if w.period > 0 {
		return w.period
	}
	return wakePeriod
}

// poke wakes every caller waiting now.
func (w *waker) poke() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.current.Load(); c != nil {
		w.timer.Stop()
		w.current.Store(nil)
		close(*c)
	}
}

// close ends the tick c, unless a poke did already.
func (w *waker) close(c *chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current.Load() == c {
		w.current.Store(nil)
		close(*c)
	}
}
