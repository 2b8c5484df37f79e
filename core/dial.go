package core

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// dialer dials the configured URIs for a supervisor: one round tries each
// once. The list is shuffled once (unless Config.FailoverInOrder), so that
// a fleet of clients spreads over a cluster's nodes, and a round starts
// after the node last connected to, so that the node that just died is
// tried last. Nodes out of reach lately (a dial failed, or a connection was
// lost other than by leaving the node on purpose) go after the others in a
// round: a dark node costs a whole DialTimeout to find out, and one that
// went dark two nodes ago would otherwise be next (seen in a partition:
// 10 s spent on the isolated node while the others confirmed).
type dialer struct {
	cfg  *settings
	uris []string
	next int // where the next round starts
	// outOfReach is when each URI was last found out of reach, by index;
	// only the supervisor's goroutine touches it.
	outOfReach map[int]time.Time

	// ctx ends when the supervisor stops: a TCP connect in progress is
	// abandoned, and the sockets of handshakes in progress are cut (see
	// supervisor.stop), so stopping never waits for DialTimeout.
	ctx context.Context
}

func newDialer(cfg *settings, ctx context.Context) *dialer {
	uris := append([]string{cfg.AMQP.URI}, cfg.FailoverURIs...)
	if !cfg.FailoverInOrder {
		rand.Shuffle(len(uris), func(i, j int) { uris[i], uris[j] = uris[j], uris[i] })
	}
	return &dialer{cfg: cfg, uris: uris, ctx: ctx, outOfReach: map[int]time.Time{}}
}

// outOfReachFor is how long a URI found out of reach goes after the others.
const outOfReachFor = time.Minute

// order is the URIs' indexes in the order a round tries them: from next
// on, those out of reach lately last.
func (d *dialer) order(now time.Time) []int {
	order := make([]int, 0, len(d.uris))
	var later []int
	for i := range d.uris {
		at := (d.next + i) % len(d.uris)
		if t, ok := d.outOfReach[at]; ok && now.Sub(t) < outOfReachFor {
			later = append(later, at)
		} else {
			order = append(order, at)
		}
	}
	return append(order, later...)
}

// lost records that the connection to uri (redacted, as sessions keep it)
// ended for why: out of reach, unless its node was left on purpose (it
// answers, but confirms nothing or cannot reach a queue's leader).
func (d *dialer) lost(uri string, why error) {
	if errors.As(why, new(*unconfirmingNodeError)) || errors.As(why, new(*nodeLeftError)) ||
		errors.As(why, new(*queueLeaderUnreachableError)) {
		return
	}
	for i, u := range d.uris {
		if redactURI(u) == uri {
			d.outOfReach[i] = time.Now()
		}
	}
}

// dialed is a connection, its socket and its URI (password redacted).
type dialed struct {
	conn *amqp091.Connection
	sock *socket
	uri  string
}

// round tries each URI once, in turn, and returns the first connection. The
// error joins every URI's, and is permanent only if each one was. track is
// told of each socket as soon as it exists and of its end (nil), so that a
// stop can cut a handshake in progress.
func (d *dialer) round(track func(*socket)) (dialed, error) {
	var errs []error
	for _, at := range d.order(time.Now()) {
		if d.ctx.Err() != nil {
			return dialed{}, ErrClosed
		}
		uri := d.uris[at]
		var sock *socket
		cfg := d.amqpConfig(func(s *socket) {
			sock = s
			track(s)
		})
		conn, err := amqp091.DialConfig(uri, cfg)
		track(nil)
		if err == nil {
			d.next = (at + 1) % len(d.uris)
			delete(d.outOfReach, at)
			return dialed{conn: conn, sock: sock, uri: redactURI(uri)}, nil
		}
		if d.ctx.Err() != nil {
			return dialed{}, ErrClosed
		}
		d.outOfReach[at] = time.Now()
		if tlsErr := d.tlsDialError(err, uri, cfg.TLSClientConfig, sock); tlsErr != nil {
			err = tlsErr
		} else {
			err = dialError(err, sock)
		}
		err = redactErr(err, uri)
		errs = append(errs, fmt.Errorf("dial %s: %w", redactURI(uri), err))
	}
	err := errors.Join(errs...)
	for _, e := range errs {
		if !IsPermanent(e) {
			return dialed{}, &transientDialError{err}
		}
	}
	return dialed{}, err
}

// dialError classifies why a dial failed. amqp091-go reports any failure of
// the socket after the credentials were sent as ErrCredentials, and after
// the vhost was asked for as ErrVhost, a time-out on a slow link included.
// Only the broker's explicit refusal is permanent: a reply (which
// classifyBroker reads), or RabbitMQ's way of refusing credentials, which is
// to drop the socket without a word (a reset, 3 s after the attempt, on
// RabbitMQ 3.10). A socket that timed out, or that we cut, refused nothing.
// A vhost RabbitMQ refuses gets a reply, so ErrVhost, which means there was
// none, is never permanent.
func dialError(err error, sock *socket) error {
	if err != amqp091.ErrCredentials && err != amqp091.ErrVhost {
		return classifyBroker(err)
	}
	var readErr error
	if sock != nil {
		readErr = sock.readError()
	}
	var ne net.Error
	timedOut := errors.As(readErr, &ne) && ne.Timeout() || errors.Is(readErr, net.ErrClosed)
	if err == amqp091.ErrCredentials && !timedOut {
		return classifyBroker(err)
	}
	if readErr == nil {
		readErr = errors.New("connection closed")
	}
	return fmt.Errorf("AMQP handshake cut short: %w (amqp091-go reports it as %q)", readErr, err.(*amqp091.Error).Reason)
}

// transientDialError keeps the causes' text and errors.As targets, but not
// their permanence: some URIs failed for reasons that may pass.
type transientDialError struct{ err error }

func (e *transientDialError) Error() string { return e.err.Error() }
func (e *transientDialError) As(target any) bool {
	return errors.As(e.err, target)
}

// amqpConfig is the configuration of one dial; got is given the socket it
// dials.
func (d *dialer) amqpConfig(got func(*socket)) amqp091.Config {
	var c amqp091.Config
	if user := d.cfg.AMQP.AMQPConfig; user != nil {
		c = *user
	}
	c.Heartbeat = d.cfg.Heartbeat
	if c.TLSClientConfig == nil {
		c.TLSClientConfig = d.cfg.AMQP.TLSConfig
	}
	// amqp091-go sets ServerName on the config it is given: a copy per dial,
	// or failing over to a second node would check the first node's name.
	c.TLSClientConfig = c.TLSClientConfig.Clone()
	props := amqp091.NewConnectionProperties()
	for k, v := range c.Properties {
		props[k] = v
	}
	props.SetClientConnectionName(d.cfg.ConnectionName)
	c.Properties = props

	timeout, ctx := d.cfg.DialTimeout, d.ctx
	connect := c.Dial
	if connect == nil {
		dialer := net.Dialer{Timeout: timeout}
		connect = func(network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		}
	}
	c.Dial = func(network, addr string) (net.Conn, error) {
		conn, err := connect(network, addr)
		if err != nil {
			return nil, err
		}
		// The TLS and AMQP handshakes get the same deadline; amqp091-go
		// clears it once the connection is open.
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			_ = conn.Close()
			return nil, err
		}
		// A silent peer is given up after 1.5 heartbeats, as amqp091-go's own
		// deadline does, and a little more: that one stays the first.
		sock := newSocket(conn, d.cfg.Heartbeat*3/2+500*time.Millisecond)
		got(sock)
		return sock, nil
	}
	c.Recovery = nil // we own reconnection
	return c
}
