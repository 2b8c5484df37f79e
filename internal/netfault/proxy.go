// Package netfault is a small in-process TCP proxy for fault tests. It sits
// between a client and a target server and can break the link the way hostile
// networks do. Every mode applies at once to the links already open and to
// the ones accepted later.
//
// Modes and what the peers (the client and the target server) observe:
//
//   - Pass (the initial mode): bytes are forwarded both ways as they arrive.
//
//   - Delay(d): like Pass, but every chunk is forwarded d after the proxy read
//     it, in order, in both directions (a slow link, a round trip costs at
//     least 2·d). Reading goes on while chunks wait, up to a bounded queue.
//
//   - Freeze: the proxy stops calling Read and Write on every socket of every
//     link. Nothing is closed and nothing is forwarded, so the TCP window
//     closes: once the kernel buffers fill (the proxy-side buffers are kept
//     small), a peer's writes block (or time out with a deadline) and its
//     reads see nothing. This is a frozen or half-open peer. How much a peer
//     can write before blocking is mostly its own send buffer: over loopback
//     Linux autotunes it up to tcp_wmem's maximum (4 MiB by default); with
//     SO_SNDBUF set to 64 KiB a peer blocks after about 140 KiB. New connections
//     are still accepted (the dial succeeds) but get the same treatment.
//     Bytes read just before the freeze are held and flow, in order, after
//     Pass or Delay.
//
//   - Blackhole: the proxy keeps reading both directions and discards what it
//     reads. Peers' writes succeed, their reads see nothing, nothing is
//     closed (a half-close from a peer is held back too). After Pass, new
//     bytes flow again; discarded ones are gone.
//
//   - Reset: every current link is closed with SO_LINGER 0 on both sides,
//     so both peers get a TCP RST: their next read or write fails with
//     ECONNRESET (a read may also report EOF, a write EPIPE), and a write
//     blocked in the kernel fails promptly. New connections are accepted.
//
//   - Refuse(true): the listener is closed (new dials get ECONNREFUSED) and
//     current links are reset; Refuse(false) listens again on the same port.
//
// When a peer closes normally the proxy forwards the half-close (FIN) after
// the bytes before it, and closes a link once both directions have ended.
package netfault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

const (
	// sockBuf is the read and write buffer size of the proxy's sockets, kept
	// small so that a freeze makes the peers' writes block quickly.
	sockBuf = 16 << 10
	// readSize is the largest chunk read at once.
	readSize = 32 << 10
	// queueLen is the number of chunks a direction may hold between its
	// reader and its writer (relevant with Delay and around a freeze).
	queueLen = 128
	// dialTimeout bounds the dial to the target.
	dialTimeout = 10 * time.Second
)

type mode int

const (
	modePass mode = iota
	modeFreeze
	modeBlackhole
)

// Proxy forwards TCP connections from a local listener to a target address.
// All methods are safe for concurrent use.
type Proxy struct {
	target string
	addr   string

	ctx    context.Context // cancelled by Close; aborts dials in progress
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the proxy started

	mu       sync.Mutex
	cond     *sync.Cond // signalled on mode changes and link aborts
	ln       net.Listener
	mode     mode
	delay    time.Duration
	freezes  uint64 // incremented by each Freeze; see await
	hook     func([]byte) bool
	downHook func([]byte) bool
	drop     func([]byte, bool) bool
	links    map[*link]struct{}
	accepted int
	closed   bool
}

// link is one proxied connection. Its fields are guarded by Proxy.mu.
type link struct {
	client *net.TCPConn
	server *net.TCPConn // nil while dialing
	cancel context.CancelFunc
	done   chan struct{} // closed when the link ends
	dead   bool
}

type chunk struct {
	data       []byte
	due        time.Time
	resetAfter bool // reset every link once it is written (OnDownstream)
}

// Start listens on 127.0.0.1 on a free port and forwards every accepted
// connection to target. The proxy starts in Pass mode.
func Start(target string) (*Proxy, error) {
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := listen(ctx, "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, fmt.Errorf("netfault: listen: %w", err)
	}
	p := &Proxy{
		target: target,
		addr:   ln.Addr().String(),
		ctx:    ctx,
		cancel: cancel,
		ln:     ln,
		links:  make(map[*link]struct{}),
	}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return p, nil
}

// Addr returns the address clients dial, "127.0.0.1:port". It does not change
// over the proxy's life.
func (p *Proxy) Addr() string { return p.addr }

// Pass switches to normal forwarding (no delay). A frozen link resumes: the
// bytes it held flow first.
func (p *Proxy) Pass() { p.setMode(modePass, 0) }

// Delay switches to forwarding with latency d per direction: each chunk is
// written d after it was read, order kept. Delay(0) is Pass.
func (p *Proxy) Delay(d time.Duration) {
	if d < 0 {
		d = 0
	}
	p.setMode(modePass, d)
}

// Blackhole switches to reading and discarding both directions of every
// link. Nothing is closed.
func (p *Proxy) Blackhole() { p.setMode(modeBlackhole, 0) }

// Freeze stops reading and writing every socket of every link, current and
// new, until Pass, Delay or Blackhole. Nothing is closed.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = modeFreeze
	p.freezes++
	// Interrupt Reads and Writes in progress; the goroutines see the
	// deadline, find the mode frozen and wait.
	past := time.Unix(1, 0)
	for l := range p.links {
		l.client.SetDeadline(past)
		if l.server != nil {
			l.server.SetDeadline(past)
		}
	}
	p.cond.Broadcast()
}

func (p *Proxy) setMode(m mode, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode, p.delay = m, d
	p.cond.Broadcast()
}

// Reset closes every current link with a TCP RST to both peers. The proxy
// keeps accepting new connections, in the current mode.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
}

func (p *Proxy) resetLocked() {
	for l := range p.links {
		p.abortLocked(l)
	}
}

// Refuse(true) stops listening, so new dials get "connection refused", and
// resets the current links. Refuse(false) listens again on the same address;
// it fails if the port has been taken meanwhile or the proxy is closed.
func (p *Proxy) Refuse(on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		if on {
			return nil
		}
		return errors.New("netfault: proxy closed")
	}
	if on {
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
		p.resetLocked()
		return nil
	}
	if p.ln != nil {
		return nil
	}
	ln, err := listen(p.ctx, p.addr)
	if err != nil {
		return fmt.Errorf("netfault: listen again: %w", err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return nil
}

// OnUpstream installs a hook called with each chunk read from a client,
// before it is forwarded (in every mode but Freeze, which reads nothing). If
// the hook returns true, all links are reset at once and the chunk is
// dropped. The hook must not keep or modify the slice, and must not call
// Close. nil removes the hook.
func (p *Proxy) OnUpstream(hook func(chunk []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = hook
}

// OnDownstream installs a hook called with each chunk read from the target,
// before it is forwarded. If the hook returns true, all links are reset
// right after the chunk was written to the client: the client reads it, then
// finds the connection reset (e.g. it gets a reply, writes its next request,
// and that write fails). The hook must not keep or modify the slice, and
// must not call Close. nil removes the hook.
func (p *Proxy) OnDownstream(hook func(chunk []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.downHook = hook
}

// Drop installs a filter called with each chunk read, either way (upstream:
// read from a client), before the hooks: a chunk for which it returns true
// is discarded, and the link stays open, as if a middlebox lost those bytes
// while the connection lives. The filter must not keep or modify the slice,
// and must not call Close. nil removes it.
func (p *Proxy) Drop(filter func(chunk []byte, upstream bool) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop = filter
}

// Links returns the number of links open now.
func (p *Proxy) Links() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Accepted returns the number of connections accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Close stops listening, resets every link and waits for every goroutine the
// proxy started. It is idempotent and always returns nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
		p.resetLocked()
		p.cancel()
		p.cond.Broadcast()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Proxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			p.mu.Lock()
			current := p.ln == ln
			p.mu.Unlock()
			if !current || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error (e.g. EMFILE): back off briefly.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		tc := c.(*net.TCPConn)
		p.mu.Lock()
		if p.closed || p.ln != ln {
			p.mu.Unlock()
			rst(tc)
			return
		}
		p.accepted++
		ctx, cancel := context.WithCancel(p.ctx)
		l := &link{client: tc, cancel: cancel, done: make(chan struct{})}
		if p.mode == modeFreeze {
			tc.SetDeadline(time.Unix(1, 0))
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.runLink(ctx, l)
	}
}

// runLink dials the target, runs the four pumps of the link and cleans up.
func (p *Proxy) runLink(ctx context.Context, l *link) {
	defer p.wg.Done()
	tune(l.client)
	d := net.Dialer{Timeout: dialTimeout, Control: setBuffers}
	c, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		p.abort(l)
		return
	}
	server := c.(*net.TCPConn)
	tune(server)
	p.mu.Lock()
	if l.dead {
		p.mu.Unlock()
		rst(server)
		return
	}
	l.server = server
	if p.mode == modeFreeze {
		server.SetDeadline(time.Unix(1, 0))
	}
	p.mu.Unlock()

	up := make(chan chunk, queueLen)
	down := make(chan chunk, queueLen)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); p.read(l, l.client, up, true) }()
	go func() { defer wg.Done(); p.write(l, server, up) }()
	go func() { defer wg.Done(); p.read(l, server, down, false) }()
	go func() { defer wg.Done(); p.write(l, l.client, down) }()
	wg.Wait()

	// Both directions ended (normally or not): close what is left.
	p.mu.Lock()
	graceful := !l.dead
	if graceful {
		l.dead = true
		delete(p.links, l)
		close(l.done)
		l.cancel()
	}
	p.mu.Unlock()
	if graceful {
		l.client.Close()
		server.Close()
	}
}

// abort resets both sides of l; it is idempotent.
func (p *Proxy) abort(l *link) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.abortLocked(l)
}

func (p *Proxy) abortLocked(l *link) {
	if l.dead {
		return
	}
	l.dead = true
	delete(p.links, l)
	close(l.done)
	l.cancel()
	rst(l.client)
	if l.server != nil {
		rst(l.server)
	}
	p.cond.Broadcast()
}

// await blocks while the mode is one of the modes in wait and the link is
// alive. It then clears the read (or write) deadline that Freeze may have
// set on c, if a Freeze happened since *seen, and returns the mode.
// ok is false if the link ended.
func (p *Proxy) await(l *link, c *net.TCPConn, writing, holdInBlackhole bool, seen *uint64) (m mode, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !l.dead && (p.mode == modeFreeze || (holdInBlackhole && p.mode == modeBlackhole)) {
		p.cond.Wait()
	}
	if l.dead {
		return 0, false
	}
	if *seen != p.freezes {
		// Cleared under p.mu, so a later Freeze's deadline is never lost.
		*seen = p.freezes
		if writing {
			c.SetWriteDeadline(time.Time{})
		} else {
			c.SetReadDeadline(time.Time{})
		}
	}
	return p.mode, true
}

// read pumps src into q. It calls Read only when not frozen.
func (p *Proxy) read(l *link, src *net.TCPConn, q chan<- chunk, upstream bool) {
	buf := make([]byte, readSize)
	var seen uint64
	for {
		if _, ok := p.await(l, src, false, false, &seen); !ok {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			data := append([]byte(nil), buf[:n]...)
			now := time.Now()
			p.mu.Lock()
			hook, downHook, drop := p.hook, p.downHook, p.drop
			p.mu.Unlock()
			dropped := drop != nil && drop(data, upstream)
			if !dropped && upstream && hook != nil && hook(data) {
				p.Reset()
				return
			}
			resetAfter := !dropped && !upstream && downHook != nil && downHook(data)
			p.mu.Lock()
			m, d := p.mode, p.delay
			p.mu.Unlock()
			if m != modeBlackhole && !dropped {
				select {
				case q <- chunk{data: data, due: now.Add(d), resetAfter: resetAfter}:
				case <-l.done:
					return
				}
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Interrupted by Freeze (or a Freeze already undone): re-check.
		case err == io.EOF:
			close(q)
			return
		default:
			p.abort(l)
			return
		}
	}
}

// write forwards the chunks of q to dst, each at its due time, and
// half-closes dst when q is closed.
func (p *Proxy) write(l *link, dst *net.TCPConn, q <-chan chunk) {
	var seen uint64
	for {
		var c chunk
		var more bool
		select {
		case c, more = <-q:
		case <-l.done:
			return
		}
		if !more {
			// The source sent FIN: pass it on, unless frozen or blackholed.
			if _, ok := p.await(l, dst, true, true, &seen); ok {
				dst.CloseWrite()
			}
			return
		}
		if wait := time.Until(c.due); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
		}
		for data := c.data; len(data) > 0; {
			m, ok := p.await(l, dst, true, false, &seen)
			if !ok {
				return
			}
			if m == modeBlackhole {
				break // dropped
			}
			n, err := dst.Write(data)
			data = data[n:]
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				p.abort(l)
				return
			}
		}
		if c.resetAfter {
			p.Reset()
			return
		}
	}
}

// listen listens with small buffers, which accepted sockets inherit.
func listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: setBuffers}
	return lc.Listen(ctx, "tcp", addr)
}

// tune sets small buffers on a connected socket (already done through
// setBuffers where supported; harmless then).
func tune(c *net.TCPConn) {
	c.SetReadBuffer(sockBuf)
	c.SetWriteBuffer(sockBuf)
}

// rst closes c so that the peer gets a TCP RST.
func rst(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
