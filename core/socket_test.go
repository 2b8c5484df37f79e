package core

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// recordingConn records every write that reaches the socket.
type recordingConn struct {
	net.Conn
	writes [][]byte
	err    error
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func TestCorkedWritesLeaveInOneWrite(t *testing.T) {
	raw := &recordingConn{}
	c := &socket{Conn: raw}

	if _, err := c.Write([]byte("a")); err != nil || len(raw.writes) != 1 {
		t.Fatalf("uncorked write: %d writes, %v; want 1 at once", len(raw.writes), err)
	}
	c.cork()
	c.cork() // a second lane joins the run
	for _, p := range []string{"b", "c", "d"} {
		if n, err := c.Write([]byte(p)); n != 1 || err != nil {
			t.Fatalf("corked write: %d, %v", n, err)
		}
	}
	c.uncork()
	if len(raw.writes) != 1 {
		t.Fatalf("%d writes while a lane is still in its run, want 1", len(raw.writes))
	}
	c.uncork()
	if len(raw.writes) != 2 || string(raw.writes[1]) != "bcd" {
		t.Fatalf("writes %q, want the run in one write", raw.writes)
	}
}

func TestCorkedWritesFlushBeyondTheBound(t *testing.T) {
	raw := &recordingConn{}
	c := &socket{Conn: raw}
	c.cork()
	big := make([]byte, maxCorked)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	// What was held is written first, then the large write itself, in order.
	if len(raw.writes) != 2 || string(raw.writes[0]) != "x" || len(raw.writes[1]) != maxCorked {
		t.Fatalf("%d writes, want the held byte then the large write", len(raw.writes))
	}
	c.uncork()
	if len(raw.writes) != 2 {
		t.Fatalf("%d writes after uncork with nothing held, want 2", len(raw.writes))
	}
}

func TestCorkedWriteErrorReachesTheNextWrite(t *testing.T) {
	broken := errors.New("connection reset")
	raw := &recordingConn{}
	c := &socket{Conn: raw}
	c.cork()
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	raw.err = broken
	c.uncork() // the deferred write fails here, with no caller to tell
	if _, err := c.Write([]byte("next")); !errors.Is(err, broken) {
		t.Fatalf("next write: %v, want %v", err, broken)
	}
}

func TestCorkBufferIsAllocatedOnce(t *testing.T) {
	c := &socket{Conn: discardConn{}}
	frame := make([]byte, 1300) // a 1 KiB message's frames
	run := func() {
		c.cork()
		for range 500 { // more than maxCorked holds
			if _, err := c.Write(frame); err != nil {
				t.Fatal(err)
			}
		}
		c.uncork()
	}
	run()
	if allocs := testing.AllocsPerRun(10, run); allocs > 0 {
		t.Fatalf("%v allocations per run, want none once the buffer exists", allocs)
	}
}

// discardConn takes every write without allocating.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// Once amqp091-go has cleared the handshake's deadline, a read that waits
// longer than idle fails, and cuts the socket: a peer that froze right after
// the handshake is found out although no frame ever armed amqp091-go's own
// deadline. Before that (the handshake), the dial's deadline rules.
func TestSocketIdleDeadlineOnceOpen(t *testing.T) {
	ours, peer := net.Pipe()
	defer peer.Close()
	s := newSocket(ours, 50*time.Millisecond)

	// Handshaking: no idle deadline yet.
	if err := s.Conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("read during the handshake: %v after %s, want the dial's deadline (200ms)", err, time.Since(start))
	}

	// A read already waiting when the handshake's deadline is cleared (the
	// reader goroutine is): it gets the idle deadline too.
	ours, peer = net.Pipe()
	defer peer.Close()
	s = newSocket(ours, 50*time.Millisecond)
	waiting := make(chan error, 1)
	go func() {
		_, err := s.Read(make([]byte, 1))
		waiting <- err
	}()
	time.Sleep(20 * time.Millisecond)                  // let it block in Read: nothing to await
	if err := s.SetDeadline(time.Time{}); err != nil { // amqp091-go's openComplete
		t.Fatal(err)
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the waiting read: %v, want a deadline", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a read waiting when the handshake ended never timed out")
	}

	ours, peer = net.Pipe()
	defer peer.Close()
	s = newSocket(ours, 50*time.Millisecond)
	if err := s.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = peer.Write([]byte("x")) }()
	if n, err := s.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("a frame in time: %d, %v", n, err)
	}
	start = time.Now()
	_, err := s.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent peer: %v, want a deadline", err)
	}
	t.Logf("silent peer found out after %s (idle 50ms)", time.Since(start).Round(time.Millisecond))
	if s.readError() == nil {
		t.Fatal("the read error was not kept")
	}
	if _, err := peer.Write([]byte("y")); err == nil {
		t.Fatal("the socket was not cut")
	}
}
