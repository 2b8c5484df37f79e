package brokertest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Load publishes from many goroutines until stopped, each call carrying 1 to
// 3 messages, and records the UUIDs of every message Publish confirmed.
type Load struct {
	t         testing.TB
	Confirmed IDs
	stop      chan struct{}
	wg        sync.WaitGroup

	mu       sync.Mutex
	errs     []error
	progress chan struct{} // closed and replaced after each confirmed call
}

// StartLoad starts goroutines publishing to topic (round robin over topics
// when several are given).
func StartLoad(t testing.TB, pub message.Publisher, goroutines int, topics ...string) *Load {
	return StartLoadWith(t, pub, LoadConfig{Goroutines: goroutines}, topics...)
}

// LoadConfig shapes a Load.
type LoadConfig struct {
	Goroutines int
	Size       int           // payload bytes; 0: a few
	Pace       time.Duration // pause between two calls of a goroutine; 0: none
}

// StartLoadWith starts a load shaped by cfg.
func StartLoadWith(t testing.TB, pub message.Publisher, cfg LoadConfig, topics ...string) *Load {
	goroutines, size := cfg.Goroutines, cfg.Size
	l := &Load{t: t, stop: make(chan struct{}), progress: make(chan struct{})}
	for g := 0; g < goroutines; g++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			topic := topics[g%len(topics)]
			var pace <-chan time.Time
			if cfg.Pace > 0 {
				ticker := time.NewTicker(cfg.Pace)
				defer ticker.Stop()
				pace = ticker.C
			}
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				if pace != nil {
					select {
					case <-l.stop:
						return
					case <-pace:
					}
				}
				msgs, ids := Messages(1 + (g+i)%3)
				if size > 0 {
					for _, m := range msgs {
						m.Payload = make([]byte, size)
					}
				}
				if err := pub.Publish(topic, msgs...); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err)
					l.mu.Unlock()
					return
				}
				l.Confirmed.Add(ids...)
				l.mu.Lock()
				close(l.progress)
				l.progress = make(chan struct{})
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// Messages returns n new messages and their UUIDs.
func Messages(n int) ([]*message.Message, []string) {
	msgs := make([]*message.Message, n)
	ids := make([]string, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), []byte(fmt.Sprintf("payload %d", i)))
		ids[i] = msgs[i].UUID
	}
	return msgs, ids
}

// WaitProgress waits until n more messages have been confirmed.
func (l *Load) WaitProgress(n int) {
	l.t.Helper()
	target := l.Confirmed.Len() + n
	// Bounded by progress: each confirm starts the wait again.
	stall := time.NewTimer(2 * StallBound)
	defer stall.Stop()
	for last := l.Confirmed.Len(); l.Confirmed.Len() < target; {
		if now := l.Confirmed.Len(); now > last {
			last = now
			stall.Reset(2 * StallBound)
		}
		l.mu.Lock()
		progress, failed := l.progress, len(l.errs) > 0
		l.mu.Unlock()
		if failed {
			l.Stop()
			return
		}
		select {
		case <-progress:
		case <-stall.C:
			l.t.Fatalf("no progress for %s: %d of %d confirmed", 2*StallBound, l.Confirmed.Len(), target)
		}
	}
}

// Stop stops the goroutines, waits for them, and fails the test if any
// Publish failed.
func (l *Load) Stop() {
	l.t.Helper()
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, err := range l.errs {
		l.t.Errorf("Publish: %v", err)
	}
	if len(l.errs) > 0 {
		l.t.FailNow()
	}
}

// States records a publisher's state changes for a test to await.
type States struct {
	t  testing.TB
	ch chan stateEvent
}

type stateEvent struct {
	name string
	at   time.Time
}

// NewStates returns a recorder and the callback to hand the publisher.
func NewStates(t testing.TB) (*States, func(name string)) {
	s := &States{t: t, ch: make(chan stateEvent, 1024)}
	return s, func(name string) { s.ch <- stateEvent{name, time.Now()} }
}

// Await waits for the state named name and returns when it was entered.
func (s *States) Await(name string) time.Time {
	s.t.Helper()
	deadline := time.NewTimer(2 * time.Minute)
	defer deadline.Stop()
	for {
		select {
		case e := <-s.ch:
			if e.name == name {
				return e.at
			}
		case <-deadline.C:
			s.t.Fatalf("state %q never came", name)
		}
	}
}
