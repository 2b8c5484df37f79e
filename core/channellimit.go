package core

import (
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
)

// channelLimit is the one way a Publisher's lanes and a Subscriber's
// subscriptions live within the broker's channel_max: every channel they
// hold is opened by openChannel; a refusal (the connection has as many
// channels as channel_max allows) is ErrChannelLimit, never taken for a
// lost connection; whoever was refused says so through refused (a log
// line and a ChannelRefused event when it starts, Health.Degraded while it
// lasts) and keeps trying with its backoff, and opened clears it. The
// publisher also sizes its lanes by it (startPublishing).
type channelLimit struct {
	cfg    *settings
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	refused map[any]error // by who: a lane's number, a subscription
	order   []any         // refused, oldest first: Degraded names the oldest
}

func newChannelLimit(cfg *settings, logger watermill.LoggerAdapter) *channelLimit {
	return &channelLimit{cfg: cfg, logger: logger, refused: make(map[any]error)}
}

// refusedBy records that who (named what, for the log) could not open a
// channel because of channel_max: logged and reported once when it
// starts, and in Health until opened.
func (l *channelLimit) refusedBy(who any, what string, err error) {
	l.mu.Lock()
	_, already := l.refused[who]
	l.refused[who] = err
	if !already {
		l.order = append(l.order, who)
	}
	l.mu.Unlock()
	if already {
		return
	}
	l.logger.Error("Cannot open a channel: the broker's channel_max is reached; retrying", err, watermill.LogFields{"for": what})
	l.cfg.emit(Event{Kind: ChannelRefused, Err: err})
}

// opened clears who's refusal, if any.
func (l *channelLimit) opened(who any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.refused[who]; !ok {
		return
	}
	delete(l.refused, who)
	for i, w := range l.order {
		if w == who {
			l.order = append(l.order[:i], l.order[i+1:]...)
			break
		}
	}
}

// degraded is nil, or why some channels could not be opened.
func (l *channelLimit) degraded() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.order) == 0 {
		return nil
	}
	return fmt.Errorf("%d channel(s) refused: %w", len(l.order), l.refused[l.order[0]])
}
