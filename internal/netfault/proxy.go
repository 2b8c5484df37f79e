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
	"encoding/binary"
	"errors"
	"fmt"
	"net"
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
	framed   bool              // FrameDownstream
	dropF    func([]byte) bool // DropFrames
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

// FrameDownstream makes the proxy forward what it reads from the target in
// whole AMQP 0-9-1 frames only: the start of a frame is held until its end
// has arrived. DropFrames needs it. Call it before any client connects.
func (p *Proxy) FrameDownstream() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.framed = true
}

// DropFrames installs a filter called with each whole frame read from the
// target (FrameDownstream): a frame for which it returns true is
// discarded, and the link stays open, as if a middlebox lost that reply
// while the connection lives. Unlike Drop, it never cuts the stream inside
// a frame: a client reading a stream cut mid-frame can take the start of
// one frame and the end of another for a third, valid one (an ack the
// broker never sent), which no AMQP 0-9-1 client can tell, and which TCP
// never lets happen. The filter must not keep or modify the slice, and
// must not call Close. nil removes it.
func (p *Proxy) DropFrames(filter func(frame []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropF = filter
}

// frames splits a byte stream into whole AMQP 0-9-1 frames (a 7-byte
// header whose last 4 bytes are the payload's size, the payload, a
// frame-end byte), holding an incomplete one until the rest comes.
type frames struct{ held []byte }

// whole returns the complete frames of held+data that drop does not
// discard, and keeps the incomplete rest.
func (f *frames) whole(data []byte, drop func([]byte) bool) []byte {
	f.held = append(f.held, data...)
	var out []byte
	for len(f.held) >= 7 {
		size := 8 + int(binary.BigEndian.Uint32(f.held[3:7]))
		if len(f.held) < size {
			break
		}
		if frame := f.held[:size]; drop == nil || !drop(frame) {
			out = append(out, frame...)
		}
		f.held = f.held[size:]
	}
	f.held = append([]byte(nil), f.held...)
	return out
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
