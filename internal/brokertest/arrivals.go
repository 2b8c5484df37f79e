package brokertest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// Arrivals records messages as consumers see them, by ID (a watermill UUID,
// a command ID), with when, for a test to await and to tally.
type Arrivals struct {
	mu      sync.Mutex
	seen    map[string]int
	total   int
	times   []time.Time // when each arrived, in order
	changed chan struct{}
}

func NewArrivals() *Arrivals {
	return &Arrivals{seen: make(map[string]int), changed: make(chan struct{})}
}

// Add records that id arrived, now.
func (a *Arrivals) Add(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen[id]++
	a.total++
	a.times = append(a.times, time.Now())
	close(a.changed)
	a.changed = make(chan struct{})
}

// StallBound is how long a wait for arrivals may go without progress before
// it fails: a drain that is slow (a backlog built up under faults, a loaded
// machine, a slower broker) goes on for as long as it moves; one that stops
// moving is a stall, and fails.
const StallBound = time.Minute

// await waits until done says so (under the lock). left (also under the
// lock) measures what is still awaited: each time it shrinks, the wait
// starts again; StallBound without it shrinking fails the test with what
// failure says.
func (a *Arrivals) await(t testing.TB, done func() bool, left func() int, failure func() string) {
	t.Helper()
	start := time.Now()
	stall := time.NewTimer(StallBound)
	defer stall.Stop()
	a.mu.Lock()
	best := left()
	a.mu.Unlock()
	for {
		a.mu.Lock()
		ok, changed, now := done(), a.changed, left()
		a.mu.Unlock()
		if ok {
			return
		}
		if now < best {
			best = now
			stall.Reset(StallBound)
		}
		select {
		case <-changed:
		case <-stall.C:
			a.mu.Lock()
			msg := failure()
			a.mu.Unlock()
			t.Fatalf("%s (no progress for %s, %s after the wait began: a stall, not a slow drain)",
				msg, StallBound, time.Since(start).Round(time.Second))
		}
	}
}

// AwaitAll waits until every one of ids arrived at least once.
func (a *Arrivals) AwaitAll(t testing.TB, ids []string) {
	t.Helper()
	missing := func() int {
		n := 0
		for _, id := range ids {
			if a.seen[id] == 0 {
				n++
			}
		}
		return n
	}
	a.await(t, func() bool { return missing() == 0 }, missing, func() string {
		return fmt.Sprintf("stalled: %d of %d never arrived", missing(), len(ids))
	})
}

// AwaitCount waits until id arrived n times.
func (a *Arrivals) AwaitCount(t testing.TB, id string, n int) {
	t.Helper()
	a.await(t, func() bool { return a.seen[id] >= n }, func() int { return n - a.seen[id] }, func() string {
		return fmt.Sprintf("message %s arrived %d times, want %d", id, a.seen[id], n)
	})
}

// FirstAfter returns when the first message after since arrived, waiting
// for one if need be.
func (a *Arrivals) FirstAfter(t testing.TB, since time.Time) time.Time {
	t.Helper()
	var at time.Time
	a.await(t, func() bool {
		i, _ := slices.BinarySearchFunc(a.times, since, func(x, y time.Time) int { return x.Compare(y) })
		if i < len(a.times) {
			at = a.times[i]
		}
		return !at.IsZero()
	}, func() int { return 1 }, func() string { return "nothing arrived after " + since.Format(time.StampMilli) })
	return at
}

// Count is how many times id arrived.
func (a *Arrivals) Count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[id]
}

// Tally counts what arrived against the IDs wanted.
func (a *Arrivals) Tally(want []string) Tally {
	a.mu.Lock()
	defer a.mu.Unlock()
	return tally(want, a.seen, a.total)
}
