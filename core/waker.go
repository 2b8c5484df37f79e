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
// may have ended its wait (Close, its session), and, if nothing did, waits
// on the next tick's channel. Its deadline gets a timer of its own once it
// is nearer than the next tick (waitEndsOf), so that PublishTimeout is
// kept to the moment.
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

	current atomic.Pointer[tick] // nil when no tick is armed

	mu    sync.Mutex // arming and closing
	timer *time.Timer
}

// tick is one tick's channel, and when it is due.
type tick struct {
	c  chan struct{}
	at time.Time
}

// next is the next tick: its channel closes at its time, or sooner if the
// waker is poked.
func (w *waker) next() *tick {
	if t := w.current.Load(); t != nil {
		return t
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if t := w.current.Load(); t != nil {
		return t
	}
	d := w.interval()
	t := &tick{c: make(chan struct{}), at: time.Now().Add(d)}
	w.current.Store(t)
	w.timer = time.AfterFunc(d, func() { w.close(t) })
	return t
}

func (w *waker) interval() time.Duration {
	if w.period > 0 {
		return w.period
	}
	return wakePeriod
}

// poke wakes every caller waiting now.
func (w *waker) poke() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t := w.current.Load(); t != nil {
		w.timer.Stop()
		w.current.Store(nil)
		close(t.c)
	}
}

// close ends the tick t, unless a poke did already.
func (w *waker) close(t *tick) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.current.Load() == t {
		w.current.Store(nil)
		close(t.c)
	}
}
