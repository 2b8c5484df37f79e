package netfault

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is a plain TCP server on 127.0.0.1 that records every byte it
// receives (all connections together) and, if echo is set, writes it back.
type server struct {
	ln   net.Listener
	echo bool
	wg   sync.WaitGroup

	mu     sync.Mutex
	sig    chan struct{} // closed and replaced on every change
	got    []byte
	conns  []net.Conn
	ended  int // connections that saw EOF or an error
	closed bool
}

func newServer(t *testing.T, echo bool) *server {
	t.Helper()
	// Every test starts with newServer, so this cleanup runs last, after the
	// proxy and the server are closed.
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, echo: echo, sig: make(chan struct{})}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns = append(s.conns, c)
		s.changedLocked()
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

func (s *server) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.got = append(s.got, buf[:n]...)
			s.changedLocked()
			s.mu.Unlock()
			if s.echo {
				if _, werr := c.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
		}
		if err != nil {
			s.mu.Lock()
			s.ended++
			s.changedLocked()
			s.mu.Unlock()
			return
		}
	}
}

func (s *server) changedLocked() {
	close(s.sig)
	s.sig = make(chan struct{})
}

func (s *server) close() {
	s.mu.Lock()
	s.closed = true
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}

func (s *server) received() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.got...)
}

func (s *server) conn(i int) net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[i]
}

// waitUntil waits, up to timeout, until cond (called under s.mu) holds.
func (s *server) waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok, sig := cond(), s.sig
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-sig:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// eventually polls f (a socket-level effect with no event) for up to 3 s.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(3 * time.Second); !f(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func pattern(off, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((off + i) % 251)
	}
	return b
}

// isReset reports whether err is what a peer of a reset link sees.
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF)
}

func TestPass(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())

	roundTrip(t, c, "hello")
	// 1 MiB both ways at once.
	want := pattern(0, 1<<20)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(want); errc <- err }()
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echoed bytes differ")
	}
	if p.Links() != 1 || p.Accepted() != 1 {
		t.Fatalf("Links=%d Accepted=%d, want 1 1", p.Links(), p.Accepted())
	}

	// A half-close is forwarded; the server's close comes back as EOF.
	c.CloseWrite()
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after half-close: %v, want EOF", err)
	}
	eventually(t, "link to close", func() bool { return p.Links() == 0 })
}

func TestFreeze(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sndbuf int // client's SO_SNDBUF; 0 = kernel default (autotuned)
		limit  int // most bytes a frozen link may absorb
	}{
		// Over loopback (64 KiB MSS) Linux grows a default send buffer up
		// to tcp_wmem's maximum, 4 MiB: those bytes sit in the client's
		// kernel, not in the proxy.
		{"default client buffer", 0, 8 << 20},
		{"small client buffer", 64 << 10, 512 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) { testFreeze(t, tc.sndbuf, tc.limit) })
	}
}

func testFreeze(t *testing.T, sndbuf, limit int) {
	srv := newServer(t, false)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	if sndbuf > 0 {
		if err := c.SetWriteBuffer(sndbuf); err != nil {
			t.Fatal(err)
		}
	}

	const before = 1000
	if _, err := c.Write(pattern(0, before)); err != nil {
		t.Fatal(err)
	}
	srv.waitUntil(t, 5*time.Second, "bytes before freeze", func() bool { return len(srv.got) == before })

	p.Freeze()
	written := 0
	c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	var err error
	for err == nil {
		var n int
		n, err = c.Write(pattern(before+written, 16<<10))
		written += n
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write during freeze: %v, want a timeout", err)
	}
	t.Logf("a frozen link absorbed %d bytes", written)
	if written > limit {
		t.Fatalf("wrote %d bytes into a frozen link, want <= %d", written, limit)
	}
	if got := len(srv.received()); got != before {
		t.Fatalf("server received %d bytes after the freeze", got-before)
	}
	if p.Links() != 1 {
		t.Fatalf("Links = %d, want 1", p.Links())
	}

	p.Pass()
	c.SetWriteDeadline(time.Time{})
	c.CloseWrite()
	srv.waitUntil(t, 5*time.Second, "held bytes", func() bool { return srv.ended == 1 })
	if got, want := srv.received(), pattern(0, before+written); !bytes.Equal(got, want) {
		t.Fatalf("server received %d bytes, want %d in order", len(got), len(want))
	}
}

func TestFreezeNewLink(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	p.Freeze()
	c := dial(t, p.Addr()) // accepted, not forwarded
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from frozen link: %d, %v", n, err)
	}
	if len(srv.received()) != 0 {
		t.Fatal("server received bytes from a frozen link")
	}
	p.Pass()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after Pass: %q, %v", buf, err)
	}
}

func TestBlackhole(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "ping")

	p.Blackhole()
	// With this buffer a frozen link takes about 140 KiB (see TestFreeze).
	if err := c.SetWriteBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(pattern(0, 2<<20)); err != nil {
		t.Fatalf("write into blackhole: %v", err)
	}
	if _, err := srv.conn(0).Write([]byte("from server")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read from blackhole: %d bytes, %v", n, err)
	}
	if got := srv.received(); string(got) != "ping" {
		t.Fatalf("server received %d bytes, want only ping", len(got))
	}

	p.Pass()
	roundTrip(t, c, "again") // discarded bytes do not come first
	if p.Links() != 1 {
		t.Fatalf("Links = %d, want 1", p.Links())
	}
}

func TestDelay(t *testing.T) {
	const d = 100 * time.Millisecond
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm")

	p.Delay(d)
	t0 := time.Now()
	roundTrip(t, c, "x")
	if rt := time.Since(t0); rt < 2*d {
		t.Fatalf("round trip took %v, want >= %v", rt, 2*d)
	}

	// Many chunks, paced: order kept, and chunks do not wait for each other
	// (serialised delays would take 10×2d = 2 s).
	const chunks, size = 10, 1000
	want := pattern(0, chunks*size)
	errc := make(chan error, 1)
	t0 = time.Now()
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < chunks; i++ {
			if _, err := c.Write(want[i*size : (i+1)*size]); err != nil {
				errc <- err
				return
			}
			<-tick.C
		}
		errc <- nil
	}()
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(t0)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("order not kept")
	}
	if elapsed < 2*d || elapsed > 1500*time.Millisecond {
		t.Fatalf("%d paced chunks took %v", chunks, elapsed)
	}

	p.Pass()
	t0 = time.Now()
	roundTrip(t, c, "fast")
	if rt := time.Since(t0); rt >= d {
		t.Fatalf("round trip after Pass took %v", rt)
	}
}

func TestReset(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")

	p.Reset()
	if p.Links() != 0 {
		t.Fatalf("Links = %d after Reset", p.Links())
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("read after Reset: %v", err)
	}
	srv.waitUntil(t, 3*time.Second, "server side reset", func() bool { return srv.ended == 1 })

	c2 := dial(t, p.Addr())
	roundTrip(t, c2, "new link")
	if p.Accepted() != 2 {
		t.Fatalf("Accepted = %d, want 2", p.Accepted())
	}
}

func TestResetUnblocksWriter(t *testing.T) {
	srv := newServer(t, false)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTripSink(t, srv, c)

	p.Freeze()
	// Fill every buffer on the way until a write times out.
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		if _, err := c.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	// This write cannot complete while frozen; only the reset ends it.
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(make([]byte, 8<<20)); errc <- err }()
	p.Reset()
	select {
	case err := <-errc:
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("blocked write ended with %v, want a reset", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("blocked write not unblocked by Reset")
	}
}

func roundTripSink(t *testing.T, srv *server, c net.Conn) {
	t.Helper()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	srv.waitUntil(t, 5*time.Second, "first byte", func() bool { return len(srv.got) == 1 })
}

func TestRefuse(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")

	if err := p.Refuse(true); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("read on refused proxy: %v", err)
	}
	if c2, err := net.Dial("tcp", p.Addr()); !errors.Is(err, syscall.ECONNREFUSED) {
		if c2 != nil {
			c2.Close()
		}
		t.Fatalf("dial while refusing: %v, want connection refused", err)
	}

	if err := p.Refuse(false); err != nil {
		t.Fatal(err)
	}
	c3 := dial(t, p.Addr())
	roundTrip(t, c3, "back")
}

func TestOnUpstream(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c1 := dial(t, p.Addr())
	c2 := dial(t, p.Addr())
	roundTrip(t, c1, "one")
	roundTrip(t, c2, "two")

	calls := make(chan []byte, 16)
	p.OnUpstream(func(b []byte) bool {
		calls <- append([]byte(nil), b...)
		return bytes.Contains(b, []byte("KILL"))
	})
	if _, err := c1.Write([]byte("xxKILLxx")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{c1, c2} {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Fatalf("read after hook reset: %v", err)
		}
	}
	srv.waitUntil(t, 3*time.Second, "server side of both links to end", func() bool { return srv.ended == 2 })
	if got := srv.received(); bytes.Contains(got, []byte("KILL")) {
		t.Fatalf("server received the killing chunk: %q", got)
	}
	if got := <-calls; string(got) != "xxKILLxx" {
		t.Fatalf("hook saw %q", got)
	}

	p.OnUpstream(nil)
	c3 := dial(t, p.Addr())
	roundTrip(t, c3, "KILL")
}

// OnDownstream resets the links after the chunk reached the client: the
// client reads it, then finds its connection reset.
func TestOnDownstream(t *testing.T) {
	srv := newServer(t, true) // echoes
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "one")
	p.OnDownstream(func(b []byte) bool { return bytes.Contains(b, []byte("LAST")) })
	if _, err := c.Write([]byte("LAST")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "LAST" {
		t.Fatalf("read %q, %v: the chunk must reach the client before the reset", got, err)
	}
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("read after the chunk: %v, want a reset", err)
	}
	p.OnDownstream(nil)
	roundTrip(t, dial(t, p.Addr()), "again")
}

func TestClose(t *testing.T) {
	srv := newServer(t, true)
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "hello")
	p.Freeze() // goroutines parked in a frozen link must end too

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p.Links() != 0 {
		t.Fatalf("Links = %d after Close", p.Links())
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("read after Close: %v", err)
	}
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		c2.Close()
		t.Fatal("dial after Close succeeded")
	}
	if err := p.Refuse(false); err == nil {
		t.Fatal("Refuse(false) after Close succeeded")
	}
}

// Drop discards the chunks its filter picks, either way, and the link
// lives on: what follows them arrives.
func TestDrop(t *testing.T) {
	srv := newServer(t, true) // echoes
	p := start(t, srv.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "one")
	dropped := make(chan string, 2)
	dropping := func(word string, up bool) func([]byte, bool) bool {
		return func(b []byte, upstream bool) bool {
			if upstream != up || !bytes.Contains(b, []byte(word)) {
				return false
			}
			dropped <- word
			return true
		}
	}
	await := func(word string) {
		t.Helper()
		select {
		case got := <-dropped:
			if got != word {
				t.Fatalf("dropped %q, want %q", got, word)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%q was not dropped", word)
		}
	}
	p.Drop(dropping("LOST", true))
	if _, err := c.Write([]byte("LOST")); err != nil {
		t.Fatal(err)
	}
	await("LOST")
	roundTrip(t, c, "two") // the echo of LOST never comes before it
	p.Drop(dropping("GONE", false))
	if _, err := c.Write([]byte("GONE")); err != nil {
		t.Fatal(err)
	}
	await("GONE")
	roundTrip(t, c, "three") // the echo of GONE was dropped on its way back
	if got := srv.received(); bytes.Contains(got, []byte("LOST")) || !bytes.Contains(got, []byte("GONE")) {
		t.Fatalf("server received %q: want GONE, not LOST", got)
	}
	p.Drop(nil)
	roundTrip(t, c, "LOST")
}

// frame is an AMQP 0-9-1 frame: type, channel, size, payload, frame end.
func frame(payload string) []byte {
	f := []byte{1, 0, 1, 0, 0, 0, byte(len(payload))}
	return append(append(f, payload...), 0xCE)
}

// A stream cut anywhere comes out in whole frames, the dropped ones
// missing, never a piece of one.
func TestFramesWhole(t *testing.T) {
	a, b, c := frame("first"), frame("second, dropped"), frame("third")
	stream := slices.Concat(a, b, c)
	for cut1 := 1; cut1 < len(stream); cut1++ {
		for cut2 := cut1; cut2 < len(stream); cut2++ {
			var f frames
			var out []byte
			for _, part := range [][]byte{stream[:cut1], stream[cut1:cut2], stream[cut2:]} {
				got := f.whole(part, func(fr []byte) bool { return bytes.Contains(fr, []byte("dropped")) })
				if len(got) > 0 && !bytes.Equal(got, a) && !bytes.Equal(got, c) && !bytes.Equal(got, slices.Concat(a, c)) {
					t.Fatalf("cuts %d, %d: forwarded %q, not whole frames", cut1, cut2, got)
				}
				out = append(out, got...)
			}
			if !bytes.Equal(out, slices.Concat(a, c)) {
				t.Fatalf("cuts %d, %d: forwarded %q, want %q", cut1, cut2, out, slices.Concat(a, c))
			}
		}
	}
}

// DropFrames loses whole frames coming back, and the link lives on.
func TestDropFrames(t *testing.T) {
	srv := newServer(t, true) // echoes
	p := start(t, srv.addr())
	p.FrameDownstream()
	c := dial(t, p.Addr())
	p.DropFrames(func(fr []byte) bool { return bytes.Contains(fr, []byte("LOST")) })
	for _, piece := range [][]byte{frame("LOST")[:3], frame("LOST")[3:], frame("kept")} {
		if _, err := c.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	want := frame("kept")
	got := make([]byte, len(want))
	if err := c.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %q (%v), want %q", got, err, want)
	}
}
