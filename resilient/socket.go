package resilient

import (
	"net"
	"sync"
)

// maxCorked bounds what a corked connection holds before it writes anyway.
const maxCorked = 256 << 10

// corkConn is the connection under amqp091-go, which writes and flushes
// every publish on its own: one system call, and one TCP segment for the
// broker to read, per message. A lane that has a run of messages to send
// corks the connection, publishes them, and uncorks it, so that the run
// leaves in one write. Corked, Write only appends, so it never blocks and
// never holds amqp091-go's locks for long; writes of other goroutines
// (other lanes, heartbeats) in the meantime join the run.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked int // lanes in a run
	buf    []byte
	err    error // of a deferred write: the next Write returns it
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corked > 0 && len(c.buf)+len(p) <= maxCorked {
		if c.buf == nil {
			// Never grown: a run larger than this is written as it goes.
			c.buf = make([]byte, 0, maxCorked)
		}
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// cork starts a run.
func (c *corkConn) cork() {
	c.mu.Lock()
	c.corked++
	c.mu.Unlock()
}

// uncork ends a run, and writes what the runs held once none is left. A
// write error is returned by the next Write, which amqp091-go reports as the
// connection's end.
func (c *corkConn) uncork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked--
	if c.corked == 0 {
		_ = c.flushLocked()
	}
}

func (c *corkConn) flushLocked() error {
	if c.err != nil || len(c.buf) == 0 {
		return c.err
	}
	_, err := c.Conn.Write(c.buf)
	c.err = err
	c.buf = c.buf[:0]
	return err
}
