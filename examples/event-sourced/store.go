package main

import (
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
)

// Event is a fact about an account, as stored and as published.
type Event struct {
	ID      string `json:"id"`  // a UUID: the message UUID, for consumers to drop copies
	Seq     int    `json:"seq"` // position in the store's log
	Account string `json:"account"`
	Version int    `json:"version"` // per account: 1, 2, 3...
	Type    string `json:"type"`    // "deposited" or "withdrawn"
	Amount  int64  `json:"amount"`
}

var errConflict = errors.New("concurrent modification: reload and retry")

// Store is an append-only event log with an outbox cursor; in a real service
// both live in one database, written in one transaction.
type Store struct {
	mu        sync.Mutex
	log       []Event
	versions  map[string]int // account -> version of its last event
	published int            // outbox cursor: log[:published] was confirmed by the broker
	appended  chan struct{}  // wakes the relay
}

func NewStore() *Store {
	return &Store{versions: map[string]int{}, appended: make(chan struct{}, 1)}
}

// Append adds the events of one account atomically, if nobody appended to it
// since the caller loaded it at version expected (optimistic concurrency).
func (s *Store) Append(account string, expected int, events ...Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.versions[account] != expected {
		return errConflict
	}
	for _, e := range events {
		expected++
		e.ID, e.Seq, e.Account, e.Version = watermill.NewUUID(), len(s.log)+1, account, expected
		s.log = append(s.log, e)
	}
	s.versions[account] = expected
	select {
	case s.appended <- struct{}{}:
	default:
	}
	return nil
}

// Load returns the events of an account, oldest first.
func (s *Store) Load(account string) (events []Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.log {
		if e.Account == account {
			events = append(events, e)
		}
	}
	return events
}

// Unpublished returns up to max events after the outbox cursor.
func (s *Store) Unpublished(max int) []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.log[s.published:min(s.published+max, len(s.log))]...)
}

// Len is the number of events in the log; Published, of those confirmed.
func (s *Store) Len() int       { s.mu.Lock(); defer s.mu.Unlock(); return len(s.log) }
func (s *Store) Published() int { s.mu.Lock(); defer s.mu.Unlock(); return s.published }

// MarkPublished moves the outbox cursor past seq.
func (s *Store) MarkPublished(seq int) {
	s.mu.Lock()
	s.published = max(s.published, seq)
	s.mu.Unlock()
}

// Account is the aggregate: its state is what its events say.
type Account struct {
	Version int
	Balance int64
}

func (a *Account) apply(e Event) {
	a.Version = e.Version
	if e.Type == "deposited" {
		a.Balance += e.Amount
	} else {
		a.Balance -= e.Amount
	}
}

// handle runs one command on an account: load, replay, decide, append. A
// concurrent change to the same account makes it start over.
func handle(store *Store, account string, decide func(Account) ([]Event, error)) error {
	for {
		var a Account
		for _, e := range store.Load(account) {
			a.apply(e)
		}
		events, err := decide(a)
		if err != nil || len(events) == 0 {
			return err
		}
		if err := store.Append(account, a.Version, events...); !errors.Is(err, errConflict) {
			return err
		}
	}
}
