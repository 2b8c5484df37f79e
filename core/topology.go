package core

import (
	"context"
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// topologyCache is what a publisher declared on one connection: each topic's
// topology is declared once, by the first publish that needs it, and
// forgotten when the broker says it is gone (a return from the publisher's
// own queue, a missing exchange), so that the next publish declares it
// again. It dies with its connection.
type topologyCache struct {
	sess *session

	mu     sync.Mutex
	topics map[string]*topologyEntry
	// suspect holds exchanges the broker said are missing or refused: the
	// next declaration of a topic publishing to one checks it passively on
	// its own channel, so that publishes to it fail there, not by killing a
	// lane's channel (and re-sending everything in flight on it) each time.
	suspect map[string]bool
	ended   bool
}

// topologyEntry is the declaration of one topic's topology on one
// connection: the first publisher to need it starts it, the others wait.
type topologyEntry struct {
	exchange string
	done     chan struct{}
	err      error
}

func newTopologyCache(sess *session) *topologyCache {
	return &topologyCache{sess: sess, topics: make(map[string]*topologyEntry), suspect: make(map[string]bool)}
}

// end refuses declarations from now on: the session is ending.
func (c *topologyCache) end() {
	c.mu.Lock()
	c.ended = true
	c.mu.Unlock()
}

// forget drops topic's declaration, so that the next publish declares it
// again (its queue was deleted under the live connection).
func (c *topologyCache) forget(topic string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.topics[topic]; ok && isDone(e.done) {
		delete(c.topics, topic)
	}
}

// suspectExchange forgets the topology of the topics publishing to exchange
// and has their next declaration check that it exists.
func (c *topologyCache) suspectExchange(exchange string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.suspect[exchange] = true
	for topic, e := range c.topics {
		if e.exchange == exchange {
			delete(c.topics, topic)
		}
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ensure declares what topic needs, once per connection. A failed
// declaration is forgotten, so the next publish tries again.
func (c *topologyCache) ensure(ctx context.Context, topic, exchange string, build func(*amqp091.Channel, string) error) error {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return errConnectionLost
	}
	e, ok := c.topics[topic]
	if !ok {
		e = &topologyEntry{exchange: exchange, done: make(chan struct{})}
		c.topics[topic] = e
		c.sess.wg.Add(1)
		// Declared on a goroutine of the session's, not the caller's, so a
		// caller whose context ends never waits on a stuck RPC.
		go c.declareEntry(topic, e, c.suspect[exchange], build)
	}
	c.mu.Unlock()
	if isDone(e.done) { // declared already, the usual case
		return e.err
	}
	select {
	case <-e.done:
		return e.err
	case <-c.sess.stopping:
		// The connection ends: the declaration does too, at once. Was it
		// what ended it? A broker that refuses a transient queue closes the
		// whole connection; that answer must not read as a lost connection,
		// or the next one would be refused again, and again.
		select {
		case <-e.done:
			if isTransientQueueRefusal(e.err) {
				return e.err
			}
		case <-ctx.Done():
		}
		if why := c.sess.closedBy.Load(); why != nil && isTransientQueueRefusal(why) {
			return classifyBroker(why)
		}
		return errConnectionLost
	case <-ctx.Done():
		return ctx.Err()
	}
}

// declareEntry runs e, the declaration of topic (build, checking the
// exchange when it is a suspect: verify), and records how it went.
func (c *topologyCache) declareEntry(topic string, e *topologyEntry, verify bool, build func(*amqp091.Channel, string) error) {
	defer c.sess.wg.Done()
	defer close(e.done)
	e.err = c.sess.declareOnFreshChannel(topic, func(ch *amqp091.Channel, topic string) error {
		if err := build(ch, topic); err != nil || !verify {
			return err
		}
		// Type and flags are not checked by a passive declare.
		return ch.ExchangeDeclarePassive(e.exchange, "direct", false, false, false, false, nil)
	})
	c.mu.Lock()
	if e.err == nil && verify {
		delete(c.suspect, e.exchange)
	}
	if e.err != nil && c.topics[topic] == e {
		delete(c.topics, topic)
	}
	c.mu.Unlock()
	if e.err != nil && !errors.Is(e.err, errConnectionLost) {
		if IsPermanent(e.err) { // a person must act: names, permissions, arguments
			c.sess.logger.Error("Cannot declare topology", e.err, watermill.LogFields{"topic": topic})
		} else { // declared again on the next attempt
			c.sess.logger.Info("Cannot declare topology yet", watermill.LogFields{"topic": topic, "reason": e.err.Error()})
		}
	}
}
