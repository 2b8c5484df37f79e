package core

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxCorked bounds what a corked socket holds before it writes anyway.
const maxCorked = 256 << 10

// socket is the connection under amqp091-go (TCP, or what TLS runs on). It
// does two jobs amqp091-go cannot do for itself.
//
// It corks. amqp091-go writes and flushes every publish on its own: one
// system call, and one TCP segment for the broker to read, per message. A
// lane that has a run of messages to send corks the socket, publishes them,
// and uncorks it, so that the run leaves in one write. Corked, Write only
// appends, so it never blocks and never holds amqp091-go's locks for long;
// writes of other goroutines (other lanes, heartbeats) in the meantime join
// the run.
//
// It keeps a read deadline. amqp091-go arms one (1.5 heartbeats) each time
// a frame arrives, and clears every deadline once the handshake is done:
// until the next frame nothing is armed, and a peer that froze right after
// the handshake would never be found out. Once amqp091-go has cleared the
// handshake's deadline, every read here is given idle to complete.
//
// It cuts itself. A read error (the read deadline expiring on a frozen
// peer, a reset) closes the socket at once. amqp091-go's reader, on that
// error, shuts the connection down under the connection's lock and waits for
// each channel's lock; a lane blocked writing to a frozen peer holds one of
// those for as long as its write lasts, which is for ever. Closing the socket
// is what ends that write, whatever amqp091-go's locks are doing. The
// supervisor cuts it too, when a session must end or a dial must stop.
type socket struct {
	net.Conn

	mu     sync.Mutex // held across writes: never take it to cut
	corked int        // lanes in a run
	buf    []byte
	err    error // of a deferred write: the next Write returns it

	readMu  sync.Mutex
	readErr error // the first read error, which cut the socket
	cutOnce sync.Once

	idle time.Duration // how long a read may wait, once open
	open atomic.Bool   // the handshake is done: reads get idle

	lastRead atomic.Int64 // when bytes last arrived, in UnixNano
	writes   atomic.Int32 // writes to the connection in progress
}

func newSocket(conn net.Conn, idle time.Duration) *socket { return &socket{Conn: conn, idle: idle} }

// SetDeadline is amqp091-go's: a zero time (it clears the handshake's
// deadline once the connection is open) starts the idle deadline of reads,
// the read in progress included: amqp091-go's reader is already waiting in
// one.
func (s *socket) SetDeadline(t time.Time) error {
	if !t.IsZero() || s.idle == 0 {
		return s.Conn.SetDeadline(t)
	}
	s.open.Store(true)
	if err := s.Conn.SetWriteDeadline(time.Time{}); err != nil {
		return err
	}
	return s.Conn.SetReadDeadline(time.Now().Add(s.idle))
}

// Read reads from the connection, and cuts it on any error: after a failed
// read amqp091-go never reads again, and only a closed socket frees a writer
// stuck on a peer that stopped reading.
func (s *socket) Read(p []byte) (int, error) {
	if s.open.Load() {
		_ = s.Conn.SetReadDeadline(time.Now().Add(s.idle))
	}
	n, err := s.Conn.Read(p)
	if n > 0 {
		s.lastRead.Store(time.Now().UnixNano())
	}
	if err != nil {
		s.readMu.Lock()
		if s.readErr == nil {
			s.readErr = err
		}
		s.readMu.Unlock()
		s.cut()
	}
	return n, err
}

// silentFor is how long nothing has arrived (since the socket opened, if
// nothing ever did).
func (s *socket) silentFor() time.Duration { return s.silentAt(time.Now()) }

// silentAt is silentFor as of now.
func (s *socket) silentAt(now time.Time) time.Duration {
	last := s.lastRead.Load()
	if last == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, last))
}

// readError is the read error that cut the socket, if any.
func (s *socket) readError() error {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	return s.readErr
}

// cut closes the connection; a read or write blocked on it returns at once.
func (s *socket) cut() { s.cutOnce.Do(func() { _ = s.Conn.Close() }) }

// Close is amqp091-go's way to cut it.
func (s *socket) Close() error {
	s.cut()
	return nil
}

func (s *socket) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	if s.corked > 0 && len(s.buf)+len(p) <= maxCorked {
		if s.buf == nil {
			// Never grown: a run larger than this is written as it goes.
			s.buf = make([]byte, 0, maxCorked)
		}
		s.buf = append(s.buf, p...)
		return len(p), nil
	}
	if err := s.flushLocked(); err != nil {
		return 0, err
	}
	s.writes.Add(1)
	defer s.writes.Add(-1)
	return s.Conn.Write(p)
}

// writing reports whether bytes are being written to the connection now.
func (s *socket) writing() bool { return s.writes.Load() > 0 }

// cork starts a run.
func (s *socket) cork() {
	s.mu.Lock()
	s.corked++
	s.mu.Unlock()
}

// uncork ends a run, and writes what the runs held once none is left. A
// write error is returned by the next Write, which amqp091-go reports as the
// connection's end.
func (s *socket) uncork() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corked--
	if s.corked == 0 {
		_ = s.flushLocked()
	}
}

func (s *socket) flushLocked() error {
	if s.err != nil || len(s.buf) == 0 {
		return s.err
	}
	s.writes.Add(1)
	_, err := s.Conn.Write(s.buf)
	s.writes.Add(-1)
	s.err = err
	s.buf = s.buf[:0]
	return err
}
