package core

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// How long ending a session waits for the broker's close-ok at most.
const sessionCloseGrace = 2 * time.Second

// session is one live AMQP connection and everything that lives and dies
// with it: on a publisher's connection, its publishing part (lanes and the
// cache of declared topology); on a subscriber's, only the connection. The
// supervisor creates and ends it; nothing of a session is reused on the next
// connection.
type session struct {
	id     uint64
	conn   *amqp091.Connection
	sock   *socket // conn's: lanes cork it, end cuts it
	uri    string  // password redacted
	cfg    *settings
	logger watermill.LoggerAdapter

	pub *publishing // nil on a subscriber's connection

	limit *channelLimit // the supervisor's: see openChannel

	stopping chan struct{} // closed by end: lanes and declarers quit
	dead     chan struct{} // closed by end once they all have
	wg       sync.WaitGroup
	// trackMu orders goTracked's Add before end's close of stopping, so
	// that no goroutine is added while end waits.
	trackMu sync.Mutex

	// Registered at creation, so no notification is ever missed; amqp091-go
	// sends on them from its reader goroutine, so they are drained until it
	// closes them, even while the session ends.
	closed   chan *amqp091.Error
	blocking chan amqp091.Blocking

	closedBy atomic.Pointer[amqp091.Error] // set by the supervisor: why the broker closed the connection
	// confirmedAt is when a message was last confirmed on the connection
	// (UnixNano; its opening at first): see unconfirming.go.
	confirmedAt atomic.Int64
	pace        pace  // how fast the broker answers: see pace.go
	trust       trust // whether its confirms can be believed: see trust.go
}

func newSession(id uint64, d dialed, cfg *settings, logger watermill.LoggerAdapter) *session {
	sess := &session{
		id:       id,
		conn:     d.conn,
		sock:     d.sock,
		closed:   d.conn.NotifyClose(make(chan *amqp091.Error, 1)),
		blocking: d.conn.NotifyBlocked(make(chan amqp091.Blocking, 4)),
		uri:      d.uri,
		cfg:      cfg,
		logger:   logger.With(watermill.LogFields{"connection": id}),
		stopping: make(chan struct{}),
		dead:     make(chan struct{}),
	}
	sess.trust.init(sess)
	sess.confirmed(time.Now())
	return sess
}

// end stops the lanes and declarers, closes the connection, and waits for
// them: once dead is closed, every claimed delivery has had its outcome. The
// connection gets grace to close gracefully; then, or at once when grace is
// zero (the connection is lost already), its socket is cut, which also
// frees a lane stuck writing to a peer that stopped reading, whatever
// amqp091-go's locks are doing.
func (sess *session) end(grace time.Duration) {
	if sess.pub != nil {
		sess.pub.topology.end()
	}
	sess.trackMu.Lock()
	close(sess.stopping)
	sess.trackMu.Unlock()
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		for range sess.blocking { // closed by amqp091-go at shutdown
		}
	}()
	if grace > 0 {
		closed := make(chan struct{})
		go func() {
			_ = sess.conn.CloseDeadline(time.Now().Add(grace))
			close(closed)
		}()
		timer := time.NewTimer(grace)
		select {
		case <-closed:
		case <-timer.C:
		}
		timer.Stop()
		sess.sock.cut()
		<-closed
	} else {
		sess.sock.cut()
		_ = sess.conn.Close() // returns at once: the socket is gone
	}
	sess.wg.Wait()
	close(sess.dead)
	if sess.pub != nil {
		// The calls waiting on this session wait on the waker instead
		// (waker.go); those that took its channel before dead closed see it
		// close.
		sess.pub.wake.poke()
	}
}

// goTracked runs f on a goroutine the session waits for when it ends, and
// reports false (not running f) once it is ending: for callers the session
// does not count (a subscription's goroutine), whose Add could otherwise
// race end's Wait.
func (sess *session) goTracked(f func()) bool {
	sess.trackMu.Lock()
	defer sess.trackMu.Unlock()
	select {
	case <-sess.stopping:
		return false
	default:
	}
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		f()
	}()
	return true
}

// channelErr is errConnectionLost when the connection, or the channel under
// an operation, died (a network error, amqp091-go's own errors), and
// otherwise what the broker's reply means. amqp091-go marks a connection
// closed asynchronously: right after a reset, calls already fail with raw
// network errors while IsClosed is still false, so the error itself decides.
func (sess *session) channelErr(err error) error {
	if why := sess.trust.brokenCause(); why != nil {
		return why // matches errConnectionLost
	}
	if isTransientQueueRefusal(err) {
		// Refused with a connection error: the connection is closed, but
		// no new one will fare better.
		return classifyBroker(err)
	}
	if why := sess.closedBy.Load(); why != nil && isTransientQueueRefusal(why) {
		// The operation got amqp091-go's ErrClosed rather than the
		// broker's reason, which the supervisor recorded already.
		return classifyBroker(why)
	}
	if sess.conn.IsClosed() || isConnectionFault(err) {
		return errConnectionLost
	}
	return classifyBroker(err)
}

// openChannel opens a channel on sess, or fails with ErrChannelLimit naming
// the negotiated channel_max when none is left.
func (sess *session) openChannel() (*amqp091.Channel, error) {
	ch, err := sess.conn.Channel()
	if errors.Is(err, amqp091.ErrChannelMax) {
		return nil, fmt.Errorf("%w: the connection has %d channel(s) open, as many as the broker's channel_max allows: %w",
			ErrChannelLimit, sess.conn.Config.ChannelMax, err)
	}
	return ch, err
}

// declareOnFreshChannel uses a channel of its own, so that a declaration the
// broker rejects (which closes the channel) harms no lane.
//
// With channel_max 1 a publisher's lane holds the connection's only
// channel: a declaration fails at once with ErrChannelLimit, rather than
// race the lane for it (and win or lose by timing alone).
func (sess *session) declareOnFreshChannel(topic string, build func(*amqp091.Channel, string) error) error {
	if sess.pub != nil && sess.conn.Config.ChannelMax == 1 {
		return fmt.Errorf("%w: channel_max is 1 and the publishing channel holds it: none is left to declare %s on", ErrChannelLimit, topic)
	}
	err := sess.trust.awaitReply("a declaration of "+topic, func() error {
		ch, err := sess.openChannel()
		if err != nil {
			return err
		}
		err = build(ch, topic)
		_ = ch.Close() // declared or not, the channel has done its job
		return err
	})
	if err == nil {
		return nil
	}
	return sess.channelErr(err)
}

// canLeaveNode reports whether there is another URI to fail over to.
func (sess *session) canLeaveNode() bool { return len(sess.cfg.FailoverURIs) > 0 }

// confirmed records that the broker confirmed a message on this connection.
func (sess *session) confirmed(now time.Time) { sess.confirmedAt.Store(now.UnixNano()) }

// lastConfirm is when the broker last confirmed a message on this
// connection, or when the connection opened.
func (sess *session) lastConfirm() time.Time { return time.Unix(0, sess.confirmedAt.Load()) }

// closeInBackground closes a channel a lane gave up on, waiting for the
// broker's close-ok in a goroutine of the session, so that no one else
// waits. It is bounded as any request is (awaitReply: unanswered within
// replyBound, the connection is deemed broken and cut, as a lost reply
// means bytes were lost), and it ends with the session at the latest: the
// session's end cuts the socket, which frees the wait.
func (sess *session) closeInBackground(ch *amqp091.Channel) {
	sess.wg.Add(1) // the lane calling this is counted: safe
	go func() {
		defer sess.wg.Done()
		_ = sess.trust.awaitReply("a replaced publishing channel's closing", ch.Close)
	}()
}
