package core

import (
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
)

// State is the connection state of a Publisher or a Subscriber.
type State int32

const (
	// StateConnecting: dialing for the first time.
	StateConnecting State = iota
	// StateConnected: a connection is up; messages flow.
	StateConnected
	// StateBlocked: the broker blocked the connection (memory or disk alarm);
	// sending is paused until it unblocks.
	StateBlocked
	// StateReconnecting: the connection was lost; dialing again.
	StateReconnecting
	// StateClosed: Close was called.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateBlocked:
		return "blocked"
	case StateReconnecting:
		return "reconnecting"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}

// Health is a snapshot of the connection, for health checks (package
// health reads it).
type Health struct {
	State State
	// Since is when the connection entered State.
	Since time.Time
	// Err is why: the loss of the connection and then the last dial error
	// while reconnecting, or the broker's reason for a block (a memory or
	// disk alarm). It never contains a password.
	Err error
	// Degraded, while connected, says that some channels could not be
	// opened because the broker's channel_max is reached (it matches
	// ErrChannelLimit): subscriptions that cannot attach, publishing lanes
	// that cannot open. They keep trying; nil once all have a channel.
	Degraded error
}

// StateChange is passed to Config.OnStateChange.
type StateChange struct {
	From, To State
	At       time.Time
	// Err is why the connection was lost (To == StateReconnecting), the last
	// dial error while reconnecting, or the broker's reason for a block.
	// It never contains a password.
	Err error
	// URI is the broker the connection goes to, password redacted.
	URI string
}

const maxPendingStateChanges = 64

// notifier runs OnStateChange callbacks, in order, on the one goroutine it
// owns, so that a slow or re-entrant callback never runs under a lock of a
// publisher or subscriber nor stalls its supervisor.
type notifier struct {
	callback func(StateChange)
	logger   watermill.LoggerAdapter

	mu      sync.Mutex
	queue   []StateChange
	wake    chan struct{}
	stopped bool
	done    chan struct{}
}

func newNotifier(callback func(StateChange), logger watermill.LoggerAdapter) *notifier {
	n := &notifier{callback: callback, logger: logger, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if callback == nil {
		close(n.done)
		return n
	}
	go n.run()
	return n
}

func (n *notifier) notify(c StateChange) {
	if n.callback == nil {
		return
	}
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return
	}
	if len(n.queue) == maxPendingStateChanges {
		n.logger.Info("OnStateChange is slow: dropping the oldest state change", watermill.LogFields{"dropped": n.queue[0].To.String()})
		n.queue = n.queue[1:]
	}
	n.queue = append(n.queue, c)
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		n.mu.Lock()
		batch, stopped := n.queue, n.stopped
		n.queue = nil
		n.mu.Unlock()
		for _, c := range batch {
			n.callback(c)
		}
		if stopped {
			return
		}
		<-n.wake
	}
}

// stop delivers what is queued, then waits for the goroutine to end.
func (n *notifier) stop() {
	n.mu.Lock()
	n.stopped = true
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
	<-n.done
}
