package core

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
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
	// limit is how channels refused by channel_max are reported, across
	// sessions (channellimit.go).
	limit *channelLimit

	mu      sync.Mutex
	current *session      // nil while not connected
	ready   chan struct{} // closed while current != nil
	state   State
	since   time.Time // when state was entered
	why     error     // the loss, or the block, that state is about
	dialErr error     // last dial error while disconnected, nil once connected
	// permanentStreak counts the dial rounds in a row that failed permanently.
	permanentStreak int
	// dialed is closed, and replaced, each time a dial round fails: callers
	// waiting in await read dialErr and permanentStreak again, so that all
	// of them learn at once when dialing turns permanent, with its cause.
	dialed     chan struct{}
	nextID     uint64
	lostAt     time.Time     // when the last connection was lost
	handshake  *socket       // of the dial in progress, cut by stop
	stopped    bool          // stop was called: cut any new handshake
	closeGrace time.Duration // how long the last session may take to close
	// resent counts the messages a publisher sent again (after a loss, a
	// nack, a return), for the log line that ends a fault; resentMark is
	// its value when the last connection came up.
	resent     atomic.Int64
	resentMark int64

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
		limit:        newChannelLimit(cfg, logger),
		ready:        make(chan struct{}),
		dialed:       make(chan struct{}),
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
		// Absorbed: Publish and Subscribe wait for the connection. The
		// line that ends it is "Reconnected to AMQP".
		logger.Info("Cannot connect to AMQP yet, retrying in the background", watermill.LogFields{"reason": err.Error()})
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
	sess := newSession(id, d, s.cfg, s.logger)
	sess.limit = s.limit
	return sess, nil
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
		s.dialer.lost(sess.uri, lost)
		sess.end(0) // the connection is gone: nothing to close gracefully
		sess = nil
	}
}

// redial dials with a fresh exponential backoff until it connects or the
// supervisor stops (then it returns nil). It never gives up on its own.
func (s *supervisor) redial() *session {
	b := s.cfg.Reconnect.newBackoff()
	timer := time.NewTimer(b.NextBackOff())
	defer timer.Stop()
	var refused lastRefusal
	for attempt := 1; ; attempt++ {
		select {
		case <-s.stopping:
			return nil
		case <-timer.C:
		}
		sess, err := s.connect()
		if err == nil {
			s.logReconnected(sess, attempt)
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
		streak := s.permanentStreak
		close(s.dialed) // waiters look again
		s.dialed = make(chan struct{})
		s.mu.Unlock()
		wait := b.NextBackOff()
		// Each dial of a reconnect is a detail (the fault was logged when
		// it started, and its end will be); a broker that refuses us
		// (credentials, vhost) round after round is not a fault we
		// absorb: callers waiting now fail, and a person must act.
		if newReason := refused.isNew(err); streak == permanentAfter || streak > permanentAfter && newReason {
			s.logger.Error("AMQP refuses the connection: waiting calls fail until it accepts it again", err,
				watermill.LogFields{"attempt": attempt, "refused_rounds": streak})
		} else {
			s.logger.Debug("Cannot reconnect to AMQP, will retry", watermill.LogFields{"attempt": attempt, "retry_in": wait.String(), "reason": err.Error()})
		}
		timer.Reset(wait)
	}
}

// logReconnected is the line that ends a fault: how long the connection was
// down, how many dials it took, and how many messages were sent again
// since the connection before came up (those in flight at the loss, and any
// the broker nacked or returned before it).
func (s *supervisor) logReconnected(sess *session, attempts int) {
	s.mu.Lock()
	downFor := time.Since(s.lostAt)
	if s.lostAt.IsZero() { // never connected: down since the start
		downFor = time.Since(s.since)
	}
	resent := s.resent.Load() - s.resentMark
	s.mu.Unlock()
	s.logger.Info("Reconnected to AMQP", watermill.LogFields{"uri": sess.uri, "attempts": attempts,
		"down_for": downFor.Round(time.Millisecond).String(), "resent": resent})
}

// countResent adds n messages sent again to the count logReconnected
// reports.
func (s *supervisor) countResent(n int) { s.resent.Add(int64(n)) }

func (s *supervisor) install(sess *session) {
	sess.trust.keepPulse()
	if s.startSession != nil {
		s.startSession(sess)
	}
	s.mu.Lock()
	s.current = sess
	s.dialErr, s.permanentStreak = nil, 0
	close(s.ready)
	lostAt := s.lostAt
	s.resentMark = s.resent.Load()
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
		// Absorbed: one line when the fault starts, one when it ends
		// (logReconnected).
		s.logger.Info("AMQP connection lost, reconnecting", watermill.LogFields{"uri": sess.uri, "reason": lost.Error()})
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
			if why := sess.trust.brokenCause(); why != nil {
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
			sess.trust.setBlocked(b.Active)
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
