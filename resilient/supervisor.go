package resilient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/cenkalti/backoff/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// supervisor owns the AMQP connection: it dials, watches NotifyClose and
// NotifyBlocked, and redials with backoff until stopped. Each live
// connection is a session; the supervisor goroutine is the only one that
// creates or ends sessions.
type supervisor struct {
	cfg      *Config
	logger   watermill.LoggerAdapter
	uris     []string
	notifier *notifier

	mu      sync.Mutex
	current *session      // nil while not connected
	ready   chan struct{} // closed while current != nil
	state   State
	dialErr error // last dial error while disconnected, nil once connected
	// permanentStreak counts the dial rounds in a row that failed permanently.
	permanentStreak int
	nextID          uint64
	stopping        chan struct{}
	done            chan struct{}
	stopOnce        sync.Once
	startOnce       sync.Once
}

func newSupervisor(cfg *Config, logger watermill.LoggerAdapter, n *notifier) *supervisor {
	return &supervisor{
		cfg:      cfg,
		logger:   logger,
		uris:     append([]string{cfg.AMQP.Connection.AmqpURI}, cfg.FailoverURIs...),
		notifier: n,
		ready:    make(chan struct{}),
		state:    StateConnecting,
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
}

// permanentAfter is how many redial rounds in a row must fail permanently
// (credentials, vhost) before waiting callers are failed fast: RabbitMQ
// drops the socket on bad credentials without a word (3 s after the
// attempt), which amqp091-go reports as ErrCredentials, and so it does for a
// socket dropped mid-handshake by a broker shutting down. At start-up one
// round decides: there, a wrong password is by far the likelier cause.
const permanentAfter = 3

// connectOnce tries each URI once, in turn, and returns the first session.
// The error joins every URI's, and is permanent only if each one was.
func (s *supervisor) connectOnce() (*session, error) {
	var errs []error
	for _, uri := range s.uris {
		select {
		case <-s.stopping:
			return nil, ErrClosed
		default:
		}
		var cork *corkConn
		conn, err := amqp091.DialConfig(uri, s.amqpConfig(&cork))
		if err == nil {
			return s.newSession(conn, cork, redactURI(uri)), nil
		}
		err = redactErr(classifyBroker(err), uri)
		errs = append(errs, fmt.Errorf("dial %s: %w", redactURI(uri), err))
	}
	err := errors.Join(errs...)
	for _, e := range errs {
		if !IsPermanent(e) {
			return nil, &transientDialError{err}
		}
	}
	return nil, err
}

// transientDialError keeps the causes' text and errors.As targets, but not
// their permanence: some URIs failed for reasons that may pass.
type transientDialError struct{ err error }

func (e *transientDialError) Error() string { return e.err.Error() }
func (e *transientDialError) As(target any) bool {
	return errors.As(e.err, target)
}

// amqpConfig is the configuration of one dial; the connection it dials is
// wrapped in a corkConn, stored in *cork.
func (s *supervisor) amqpConfig(cork **corkConn) amqp091.Config {
	var c amqp091.Config
	if user := s.cfg.AMQP.Connection.AmqpConfig; user != nil {
		c = *user
	}
	c.Heartbeat = s.cfg.Heartbeat
	if c.TLSClientConfig == nil {
		c.TLSClientConfig = s.cfg.AMQP.Connection.TLSConfig
	}
	// amqp091-go sets ServerName on the config it is given: a copy per dial,
	// or failing over to a second node would check the first node's name.
	c.TLSClientConfig = c.TLSClientConfig.Clone()
	props := amqp091.NewConnectionProperties()
	for k, v := range c.Properties {
		props[k] = v
	}
	props.SetClientConnectionName(s.cfg.ConnectionName)
	c.Properties = props
	if c.Dial == nil {
		c.Dial = amqp091.DefaultDial(s.cfg.DialTimeout)
	} else {
		// A user's dialer gets the same deadline for the handshake;
		// amqp091-go clears it once the connection is open.
		dial, timeout := c.Dial, s.cfg.DialTimeout
		c.Dial = func(network, addr string) (net.Conn, error) {
			conn, err := dial(network, addr)
			if err == nil {
				err = conn.SetDeadline(time.Now().Add(timeout))
			}
			return conn, err
		}
	}
	dial := c.Dial
	c.Dial = func(network, addr string) (net.Conn, error) {
		conn, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		*cork = &corkConn{Conn: conn}
		return *cork, nil
	}
	c.Recovery = nil // we own reconnection
	return c
}

// start installs the first session (if any) and runs the supervisor loop.
func (s *supervisor) start(first *session) {
	s.startOnce.Do(func() { go s.run(first) })
}

func (s *supervisor) run(first *session) {
	defer close(s.done)
	sess := first
	for {
		if sess == nil {
			sess = s.redial()
			if sess == nil {
				s.setState(StateClosed, nil, "")
				return
			}
		}
		s.install(sess)
		lost := s.watch(sess)
		s.uninstall(sess, lost)
		sess.end()
		if lost == nil { // stopping
			s.setState(StateClosed, nil, sess.uri)
			return
		}
		sess = nil
	}
}

// newBackoff is a fresh backoff with these settings, for one loop of
// retries.
func (r ReconnectConfig) newBackoff() *backoff.ExponentialBackOff {
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
		sess, err := s.connectOnce()
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
	sess.start()
	s.mu.Lock()
	s.current = sess
	s.dialErr, s.permanentStreak = nil, 0
	close(s.ready)
	s.mu.Unlock()
	s.setState(StateConnected, nil, sess.uri)
}

func (s *supervisor) uninstall(sess *session, lost error) {
	s.mu.Lock()
	s.current = nil
	s.ready = make(chan struct{})
	s.mu.Unlock()
	if lost != nil {
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
			if !ok || err == nil {
				return errors.New("connection closed")
			}
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
	s.state = to
	s.mu.Unlock()
	s.notifier.notify(StateChange{From: from, To: to, At: time.Now(), Err: err, URI: uri})
}

// Status returns the current state.
func (s *supervisor) status() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
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

// stop ends the loop and the live session, and waits for both.
func (s *supervisor) stop() {
	s.stopOnce.Do(func() { close(s.stopping) })
	s.startOnce.Do(func() { close(s.done) }) // never started
	<-s.done
}
