package core

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/cenkalti/backoff/v5"
)

// supervisor owns the AMQP connection: it dials, watches NotifyClose and
// NotifyBlocked, and redials with backoff until stopped. Each live
// connection is a session; the supervisor goroutine is the only one that
// creates or ends sessions.
type supervisor struct {
	cfg      *settings
	logger   watermill.LoggerAdapter
	notifier *notifier
	dialer   *dialer
	// startSession starts what lives on each connection (a publisher's
	// lanes; nothing for a subscriber).
	startSession func(*session)

	mu      sync.Mutex
	current *session      // nil while not connected
	ready   chan struct{} // closed while current != nil
	state   State
	since   time.Time // when state was entered
	why     error     // the loss, or the block, that state is about
	dialErr error     // last dial error while disconnected, nil once connected
	// permanentStreak counts the dial rounds in a row that failed permanently.
	permanentStreak int
	nextID          uint64
	lostAt          time.Time     // when the last connection was lost
	handshake       *socket       // of the dial in progress, cut by stop
	stopped         bool          // stop was called: cut any new handshake
	closeGrace      time.Duration // how long the last session may take to close

	stopDial  context.CancelFunc // ends the dialer's context
	stopping  chan struct{}
	done      chan struct{}
	stopOnce  sync.Once
	startOnce sync.Once
}

// permanentAfter is how many redial rounds in a row must fail permanently
// (credentials, vhost) before waiting callers are failed fast: RabbitMQ
// drops the socket on bad credentials without a word, which amqp091-go
// reports as ErrCredentials, and so it does for a socket dropped
// mid-handshake by a broker shutting down. At start-up one round decides:
// there, a wrong password is by far the likelier cause.
const permanentAfter = 3

// startSupervisor connects once and starts the supervisor. When the broker
// cannot be reached it fails, unless cfg.RetryOnFailedConnect: then the
// supervisor keeps dialing in the background. A permanent fault (bad
// credentials, missing vhost) always fails.
func startSupervisor(cfg *settings, logger watermill.LoggerAdapter, n *notifier, startSession func(*session)) (*supervisor, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &supervisor{
		cfg:          cfg,
		logger:       logger,
		notifier:     n,
		dialer:       newDialer(cfg, ctx),
		startSession: startSession,
		ready:        make(chan struct{}),
		state:        StateConnecting,
		since:        time.Now(),
		closeGrace:   sessionCloseGrace,
		stopDial:     cancel,
		stopping:     make(chan struct{}),
		done:         make(chan struct{}),
	}
	cfg.emit(Event{Kind: StateChanged, State: StateConnecting})
	first, err := s.connect()
	if err != nil {
		if IsPermanent(err) || !cfg.RetryOnFailedConnect {
			cancel()
			return nil, fmt.Errorf("cannot connect to AMQP: %w", err)
		}
		logger.Error("Cannot connect to AMQP yet, retrying in the background", err, nil)
		s.dialErr = err
	} else {
		logger.Info("Connected to AMQP", watermill.LogFields{"uri": first.uri})
		// Installed here, not by the loop: the caller can use it at once.
		s.install(first)
	}
	s.startOnce.Do(func() { go s.run(first) })
	return s, nil
}

// connect runs one round of dials and returns a session.
func (s *supervisor) connect() (*session, error) {
	d, err := s.dialer.round(func(sock *socket) {
		s.mu.Lock()
		s.handshake = sock
		stopped := s.stopped
		s.mu.Unlock()
		if stopped && sock != nil {
			sock.cut() // stop came between the dialer's check and this socket
		}
	})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()
	return newSession(id, d, s.cfg, s.logger), nil
}

func (s *supervisor) run(sess *session) {
	defer close(s.done)
	for {
		if sess == nil {
			sess = s.redial()
			if sess == nil {
				s.setState(StateClosed, nil, "")
				return
			}
			s.install(sess)
		}
		lost := s.watch(sess)
		s.uninstall(sess, lost)
		if lost == nil { // stopping
			s.mu.Lock()
			grace := s.closeGrace
			s.mu.Unlock()
			sess.end(grace)
			s.setState(StateClosed, nil, sess.uri)
			return
		}
		sess.end(0) // the connection is gone: nothing to close gracefully
		sess = nil
	}
}

// newBackoff is a fresh backoff with these settings, for one loop of
// retries.
func (r Backoff) newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = r.InitialWait
	b.MaxInterval = r.MaxWait
	b.Multiplier = r.Multiplier
	b.RandomizationFactor = r.Jitter
	b.Reset()
	return b
}

// redial dials with a fresh exponential backoff until it connects or the
// supervisor stops (then it returns nil). It never gives up on its own.
func (s *supervisor) redial() *session {
	b := s.cfg.Reconnect.newBackoff()
	timer := time.NewTimer(b.NextBackOff())
	defer timer.Stop()
	for attempt := 1; ; attempt++ {
		select {
		case <-s.stopping:
			return nil
		case <-timer.C:
		}
		sess, err := s.connect()
		if err == nil {
			s.logger.Info("Reconnected to AMQP", watermill.LogFields{"uri": sess.uri, "attempts": attempt})
			return sess
		}
		if errors.Is(err, ErrClosed) {
			return nil
		}
		s.mu.Lock()
		s.dialErr = err
		if IsPermanent(err) {
			s.permanentStreak++
		} else {
			s.permanentStreak = 0
		}
		s.mu.Unlock()
		wait := b.NextBackOff()
		s.logger.Error("Cannot reconnect to AMQP, will retry", err, watermill.LogFields{"attempt": attempt, "retry_in": wait.String()})
		timer.Reset(wait)
	}
}

func (s *supervisor) install(sess *session) {
	sess.keepPulse()
	if s.startSession != nil {
		s.startSession(sess)
	}
	s.mu.Lock()
	s.current = sess
	s.dialErr, s.permanentStreak = nil, 0
	close(s.ready)
	lostAt := s.lostAt
	s.mu.Unlock()
	if !lostAt.IsZero() {
		s.cfg.emit(Event{Kind: Reconnected, Duration: time.Since(lostAt)})
	}
	s.setState(StateConnected, nil, sess.uri)
}

func (s *supervisor) uninstall(sess *session, lost error) {
	s.mu.Lock()
	s.current = nil
	s.ready = make(chan struct{})
	if lost != nil {
		s.lostAt = time.Now()
	}
	s.mu.Unlock()
	if lost != nil {
		s.cfg.emit(Event{Kind: ConnectionLost, Err: lost})
		s.logger.Error("AMQP connection lost, reconnecting", lost, watermill.LogFields{"uri": sess.uri})
		s.setState(StateReconnecting, lost, sess.uri)
	}
}

// watch blocks until the session's connection dies (returning why) or the
// supervisor stops (returning nil). It relays blocked/unblocked to lanes.
func (s *supervisor) watch(sess *session) error {
	blocked := sess.blocking
	for {
		select {
		case <-s.stopping:
			return nil
		case err, ok := <-sess.closed:
			if why := sess.brokenCause(); why != nil {
				return why
			}
			if !ok || err == nil {
				return errors.New("connection closed")
			}
			sess.closedBy.Store(err) // before the session ends: see channelErr
			return classifyBroker(err)
		case b, ok := <-blocked:
			if !ok {
				blocked = nil // closed with the connection: sess.closed says why
				continue
			}
			sess.setBlocked(b.Active)
			if b.Active {
				s.logger.Info("AMQP connection blocked by the broker: sending paused", watermill.LogFields{"reason": b.Reason})
				s.setState(StateBlocked, fmt.Errorf("blocked: %s", b.Reason), sess.uri)
			} else {
				s.logger.Info("AMQP connection unblocked: sending resumed", nil)
				s.setState(StateConnected, nil, sess.uri)
			}
		}
	}
}

func (s *supervisor) setState(to State, err error, uri string) {
	s.mu.Lock()
	from := s.state
	if from == to || from == StateClosed {
		s.mu.Unlock()
		return
	}
	s.state, s.since, s.why = to, time.Now(), err
	s.mu.Unlock()
	s.cfg.emit(Event{Kind: StateChanged, State: to})
	s.notifier.notify(StateChange{From: from, To: to, At: time.Now(), Err: err, URI: uri})
}

// Status returns the current state.
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
	return h
}

// connected reports whether a connection is up (blocked counts as up).
func (s *supervisor) connected() bool {
	st := s.status()
	return st == StateConnected || st == StateBlocked
}

// await returns the live session, waiting for one while reconnecting. It
// fails fast when dialing keeps failing permanently (e.g. credentials
// revoked) and when the supervisor stops.
func (s *supervisor) await(ctx context.Context) (*session, error) {
	for {
		s.mu.Lock()
		sess, ready, dialErr, streak := s.current, s.ready, s.dialErr, s.permanentStreak
		s.mu.Unlock()
		if sess != nil {
			return sess, nil
		}
		if streak >= permanentAfter {
			return nil, dialErr
		}
		select {
		case <-ready:
		case <-s.stopping:
			return nil, ErrClosed
		case <-ctx.Done():
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

// stop ends the loop and the live session, and waits for both. The session
// gets grace to close gracefully (its broker's close-ok) before its socket
// is cut; a dial in progress is cut at once.
func (s *supervisor) stop(grace time.Duration) {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.stopped = true
		s.closeGrace = min(max(grace, 0), sessionCloseGrace)
		handshake := s.handshake
		s.mu.Unlock()
		close(s.stopping)
		s.stopDial()
		if handshake != nil {
			handshake.cut()
		}
	})
	s.startOnce.Do(func() { close(s.done) }) // never started
	<-s.done
}
