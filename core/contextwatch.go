package core

import (
	"context"
	"sync"
)

// contextWatch watches the Context() of a call's messages: it tells the
// call which contexts ended, so that it gives up on their messages (and on
// those only), and cancels the call once every message's context has ended
// (unless some message's never ends). A call of many messages with many
// contexts costs a map and one AfterFunc per distinct context, and each
// ending costs the messages of that context: never all the messages.
type contextWatch struct {
	byContext map[context.Context][]*outgoing
	wake      chan struct{} // signalled when a context ends

	mu    sync.Mutex
	ended []context.Context // not yet taken
	live  int               // contexts not ended yet

	stops []func() bool
}

// watchContexts watches the contexts of batch that can end, cancelling the
// call with cancel once all have ended, unless some message has a context
// that never ends. It returns nil when no message's context can end (most
// messages carry context.Background()): nothing to watch. (A call checks
// anyCanEnd first, and then needs no context to cancel either.)
func watchContexts(batch []*outgoing, cancel context.CancelCauseFunc) *contextWatch {
	var w *contextWatch
	immortal := false
	for _, m := range batch {
		if m.ctx.Done() == nil {
			immortal = true
			continue
		}
		if w == nil {
			w = &contextWatch{byContext: make(map[context.Context][]*outgoing), wake: make(chan struct{}, 1)}
		}
		w.byContext[m.ctx] = append(w.byContext[m.ctx], m)
	}
	if w == nil {
		return nil
	}
	w.live = len(w.byContext)
	w.stops = make([]func() bool, 0, len(w.byContext))
	for c := range w.byContext {
		w.stops = append(w.stops, context.AfterFunc(c, func() {
			w.mu.Lock()
			w.ended = append(w.ended, c)
			w.live--
			last := w.live == 0
			w.mu.Unlock()
			select {
			case w.wake <- struct{}{}:
			default:
			}
			if last && !immortal {
				cancel(context.Cause(c))
			}
		}))
	}
	return w
}

// anyCanEnd reports whether the Context() of some message of batch can
// end: only then is there something to watch.
func anyCanEnd(batch []*outgoing) bool {
	for _, m := range batch {
		if m.ctx.Done() != nil {
			return true
		}
	}
	return false
}

// woken is the channel signalled when a context ends; nil (never ready)
// for no watch.
func (w *contextWatch) woken() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.wake
}

// takeEnded returns the messages whose context ended since the last call.
func (w *contextWatch) takeEnded(each func(*outgoing)) {
	w.mu.Lock()
	ended := w.ended
	w.ended = nil
	w.mu.Unlock()
	for _, c := range ended {
		for _, m := range w.byContext[c] {
			each(m)
		}
	}
}

// stop stops watching.
func (w *contextWatch) stop() {
	if w == nil {
		return
	}
	for _, stop := range w.stops {
		stop()
	}
}
