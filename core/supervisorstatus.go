package core

import (
	"context"
	"fmt"
)

// What the rest of the library learns from the supervisor: the state of
// the connection, its health, and the live session, waited for while the
// supervisor reconnects.

// status returns the current state.
func (s *supervisor) status() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// health returns the state, since when, and why.
func (s *supervisor) health() Health {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := Health{State: s.state, Since: s.since, Err: s.why}
	if s.dialErr != nil {
		h.Err = s.dialErr
	}
	if h.State == StateConnected || h.State == StateBlocked {
		h.Degraded = s.limit.degraded()
	}
	return h
}

// connected reports whether a connection is up (blocked counts as up).
func (s *supervisor) connected() bool {
	st := s.status()
	return st == StateConnected || st == StateBlocked
}

// await returns the live session, waiting for one while reconnecting. It
// fails fast when dialing keeps failing permanently (e.g. credentials
// revoked, vhost deleted): every waiter is woken by each failed dial round,
// so those waiting already learn it when a fresh call would, with the same
// cause. It fails when the supervisor stops, and when ctx ends, then with
// the last dial error read at that moment (never a stale one).
func (s *supervisor) await(ctx context.Context) (*session, error) {
	for {
		s.mu.Lock()
		sess, ready, dialed, dialErr, streak := s.current, s.ready, s.dialed, s.dialErr, s.permanentStreak
		s.mu.Unlock()
		if sess != nil {
			return sess, nil
		}
		if streak >= permanentAfter {
			return nil, dialErr
		}
		select {
		case <-ready:
		case <-dialed:
		case <-s.stopping:
			return nil, ErrClosed
		case <-ctx.Done():
			s.mu.Lock()
			dialErr = s.dialErr
			s.mu.Unlock()
			if dialErr != nil {
				return nil, fmt.Errorf("%w (not connected: %w)", ctx.Err(), dialErr)
			}
			return nil, fmt.Errorf("%w (not connected)", ctx.Err())
		}
	}
}

// live returns the live session without waiting, or nil.
func (s *supervisor) live() *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}
