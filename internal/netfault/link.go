package netfault

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The goroutines of a link: accepting, forwarding each direction, and
// cutting it.

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
	var split frames // FrameDownstream: whole frames only
	for {
		if _, ok := p.await(l, src, false, false, &seen); !ok {
			return
		}
		n, err := src.Read(buf)
		now := time.Now()
		data := append([]byte(nil), buf[:n]...)
		p.mu.Lock()
		hook, downHook, drop := p.hook, p.downHook, p.drop
		framed, dropF := p.framed && !upstream, p.dropF
		p.mu.Unlock()
		if framed && n > 0 {
			data = split.whole(data, dropF)
		}
		if len(data) > 0 {
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
