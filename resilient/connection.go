package resilient

import (
	"context"
	"errors"
	"fmt"
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

	mu        sync.Mutex
	current   *session      // nil while not connected
	ready     chan struct{} // closed while current != nil
	state     State
	dialErr   error // last dial error while disconnected, nil once connected
	nextID    uint64
	stopping  chan struct{}
	done      chan struct{}
	stopOnce  sync.Once
	startOnce sync.Once
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

// connectOnce tries each URI once. A permanent error (credentials, vhost,
// bad URI) is returned as is: the caller must not loop on it.
func (s *supervisor) connectOnce() (*session, error) {
	var errs []error
	for _, uri := range s.uris {
		conn, err := amqp091.DialConfig(uri, s.amqpConfig())
		if err == nil {
			return s.newSession(conn, redactURI(uri)), nil
		}
		err = redactErr(classifyBroker(err), uri)
		errs = append(errs, fmt.Errorf("dial %s: %w", redactURI(uri), err))
		if IsPermanent(err) {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (s *supervisor) amqpConfig() amqp091.Config {
	var c amqp091.Config
	if user := s.cfg.AMQP.Connection.AmqpConfig; user != nil {
		c = *user
		// amqp091-go zeroes the passwords of the SASL mechanisms it used once
		// the connection is open: give it copies, or the next redial would
		// present an empty password.
		c.SASL = nil
		for _, mech := range user.SASL {
			switch m := mech.(type) {
			case *amqp091.PlainAuth:
				cp := *m
				mech = &cp
			case *amqp091.AMQPlainAuth:
				cp := *m
				mech = &cp
			}
			c.SASL = append(c.SASL, mech)
		}
	}
	c.Heartbeat = s.cfg.Heartbeat
	if s.cfg.AMQP.Connection.TLSConfig != nil && c.TLSClientConfig == nil {
		c.TLSClientConfig = s.cfg.AMQP.Connection.TLSConfig
	}
	props := amqp091.NewConnectionProperties()
	for k, v := range c.Properties {
		props[k] = v
	}
	props.SetClientConnectionName(s.cfg.ConnectionName)
	c.Properties = props
	if c.Dial == nil {
		c.Dial = amqp091.DefaultDial(s.cfg.DialTimeout)
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

// redial dials with a fresh exponential backoff until it connects or the
// supervisor stops (then it returns nil). It never gives up on its own.
func (s *supervisor) redial() *session {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = s.cfg.Reconnect.InitialWait
	b.MaxInterval = s.cfg.Reconnect.MaxWait
	b.Multiplier = s.cfg.Reconnect.Multiplier
	b.RandomizationFactor = s.cfg.Reconnect.Jitter
	b.Reset()
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
		s.mu.Lock()
		s.dialErr = err
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
	s.dialErr = nil
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
// fails fast when the last dial failed permanently (e.g. credentials
// revoked) and when the supervisor stops.
func (s *supervisor) await(ctx context.Context) (*session, error) {
	for {
		s.mu.Lock()
		sess, ready, dialErr := s.current, s.ready, s.dialErr
		s.mu.Unlock()
		if sess != nil {
			return sess, nil
		}
		if IsPermanent(dialErr) {
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
