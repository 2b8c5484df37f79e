package resilient

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// errConnectionLost marks an attempt cut short by the loss of its
// connection or channel: the messages are re-sent after the reconnect.
var errConnectionLost = errors.New("connection lost")

// How long ending a session waits for the broker's close-ok.
const sessionCloseGrace = 2 * time.Second

// session is one live AMQP connection and everything that lives and dies
// with it: its publishing lanes (each with its queue of deliveries) and its
// cache of declared topology. The supervisor creates and ends it; nothing of a
// session is reused on the next connection.
type session struct {
	id     uint64
	conn   *amqp091.Connection
	cork   *corkConn // conn's socket: lanes write runs of messages in one go
	uri    string    // password redacted
	cfg    *Config
	logger watermill.LoggerAdapter

	lanes    []*lane
	nextLane atomic.Uint32
	stopping chan struct{} // closed by end: lanes and declarers quit
	dead     chan struct{} // closed by end once they all have
	wg       sync.WaitGroup

	// Registered at creation, so no notification is ever missed; amqp091-go
	// sends on them from its reader goroutine, so they are drained until it
	// closes them, even while the session ends.
	closed   chan *amqp091.Error
	blocking chan amqp091.Blocking

	flow atomic.Pointer[flowState] // read by every lane at every step: no lock

	topoMu sync.Mutex
	topo   map[string]*topologyEntry
	// suspect holds exchanges the broker said are missing or refused: the
	// next declaration of a topic publishing to one checks it passively on
	// its own channel, so that publishes to it fail there, not by killing a
	// lane's channel (and re-sending everything in flight on it) each time.
	suspect map[string]bool
	ended   bool
}

func (s *supervisor) newSession(conn *amqp091.Connection, cork *corkConn, uri string) *session {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()
	sess := &session{
		id:       id,
		conn:     conn,
		cork:     cork,
		closed:   conn.NotifyClose(make(chan *amqp091.Error, 1)),
		blocking: conn.NotifyBlocked(make(chan amqp091.Blocking, 4)),
		uri:      uri,
		cfg:      s.cfg,
		logger:   s.logger.With(watermill.LogFields{"connection": id}),
		stopping: make(chan struct{}),
		dead:     make(chan struct{}),
		topo:     make(map[string]*topologyEntry),
		suspect:  make(map[string]bool),
	}
	sess.flow.Store(&flowState{changed: make(chan struct{})})
	return sess
}

func (sess *session) start() {
	n := sess.cfg.Channels
	// Keep one channel for declarations within the negotiated channel_max.
	if channelMax := int(sess.conn.Config.ChannelMax); channelMax > 1 && n > channelMax-1 {
		sess.logger.Info("Fewer publishing channels than configured: the broker's channel_max", watermill.LogFields{"channels": channelMax - 1, "configured": n})
		n = channelMax - 1
	}
	sess.lanes = make([]*lane, n)
	sess.wg.Add(len(sess.lanes))
	for i := range sess.lanes {
		sess.lanes[i] = newLane(sess, i)
		go sess.lanes[i].run()
	}
}

// pickLane spreads callers over the lanes. A call's messages all go to one
// lane, so they reach the broker in the order they were given.
func (sess *session) pickLane() *lane {
	return sess.lanes[int(sess.nextLane.Add(1))%len(sess.lanes)]
}

// end stops the lanes and declarers, closes the connection, and waits for
// them: once dead is closed, every claimed delivery has had its outcome.
func (sess *session) end() {
	sess.topoMu.Lock()
	sess.ended = true
	sess.topoMu.Unlock()
	close(sess.stopping)
	sess.wg.Add(1)
	go func() {
		defer sess.wg.Done()
		for range sess.blocking { // closed by amqp091-go at shutdown
		}
	}()
	// Closing the connection also unblocks a lane stuck writing to a dead or
	// blocked socket.
	_ = sess.conn.CloseDeadline(time.Now().Add(sessionCloseGrace))
	sess.wg.Wait()
	close(sess.dead)
}

// flowState is whether the broker blocks the connection, and the channel
// closed when that changes.
type flowState struct {
	blocked bool
	changed chan struct{}
}

// setBlocked is called by the supervisor goroutine only.
func (sess *session) setBlocked(blocked bool) {
	old := sess.flow.Load()
	if old.blocked == blocked {
		return
	}
	sess.flow.Store(&flowState{blocked: blocked, changed: make(chan struct{})})
	close(old.changed)
}

func (sess *session) flowNow() (blocked bool, changed <-chan struct{}) {
	f := sess.flow.Load()
	return f.blocked, f.changed
}

// topologyEntry is the declaration of one topic's topology on one
// connection: the first publisher to need it starts it, the others wait.
type topologyEntry struct {
	exchange string
	done     chan struct{}
	err      error
}

// suspectExchange forgets the topology of the topics publishing to exchange
// and has their next declaration check that it exists.
func (sess *session) suspectExchange(exchange string) {
	sess.topoMu.Lock()
	defer sess.topoMu.Unlock()
	sess.suspect[exchange] = true
	for topic, e := range sess.topo {
		if e.exchange == exchange {
			delete(sess.topo, topic)
		}
	}
}

// ensureTopology declares what topic needs, once per connection. A failed
// declaration is forgotten, so the next publish tries again.
func (sess *session) ensureTopology(ctx context.Context, topic, exchange string, declare func(*amqp091.Channel, string) error) error {
	sess.topoMu.Lock()
	if sess.ended {
		sess.topoMu.Unlock()
		return errConnectionLost
	}
	e, ok := sess.topo[topic]
	if !ok {
		e = &topologyEntry{exchange: exchange, done: make(chan struct{})}
		sess.topo[topic] = e
		sess.wg.Add(1)
		// Declared on a goroutine of the session's, not the caller's, so a
		// caller whose context ends never waits on a stuck RPC.
		go sess.declare(topic, e, sess.suspect[exchange], declare)
	}
	sess.topoMu.Unlock()
	select {
	case <-e.done: // declared already, the usual case
		return e.err
	default:
	}
	select {
	case <-e.done:
		return e.err
	case <-sess.stopping:
		return errConnectionLost
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (sess *session) declare(topic string, e *topologyEntry, verify bool, declare func(*amqp091.Channel, string) error) {
	defer sess.wg.Done()
	defer close(e.done)
	e.err = sess.declareOnFreshChannel(topic, func(ch *amqp091.Channel, topic string) error {
		if err := declare(ch, topic); err != nil || !verify {
			return err
		}
		// Type and flags are not checked by a passive declare.
		return ch.ExchangeDeclarePassive(e.exchange, "direct", false, false, false, false, nil)
	})
	sess.topoMu.Lock()
	if e.err == nil && verify {
		delete(sess.suspect, e.exchange)
	}
	if e.err != nil && sess.topo[topic] == e {
		delete(sess.topo, topic)
	}
	sess.topoMu.Unlock()
	if e.err != nil {
		if !errors.Is(e.err, errConnectionLost) {
			sess.logger.Error("Cannot declare topology", e.err, watermill.LogFields{"topic": topic})
		}
	}
}

// declareOnFreshChannel uses a channel of its own, so that a declaration the
// broker rejects (which closes the channel) harms no lane.
func (sess *session) declareOnFreshChannel(topic string, declare func(*amqp091.Channel, string) error) error {
	ch, err := sess.conn.Channel()
	if err != nil {
		if sess.conn.IsClosed() {
			return errConnectionLost
		}
		return classifyBroker(err)
	}
	err = declare(ch, topic)
	_ = ch.Close() // declared or not, the channel has done its job
	if err == nil {
		return nil
	}
	return sess.channelErr(err)
}

// channelErr is errConnectionLost when the connection, or the channel under
// an operation, died (amqp091-go's own errors, not the broker's replies),
// and otherwise what the broker's reply means.
func (sess *session) channelErr(err error) error {
	var ae *amqp091.Error
	if sess.conn.IsClosed() || (errors.As(err, &ae) && !ae.Server && !isPermanentBroker(err)) {
		return errConnectionLost
	}
	return classifyBroker(err)
}
