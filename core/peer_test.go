package core

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// scriptedPeer is a broker stand-in for unit tests: it speaks enough AMQP
// 0-9-1 over net.Pipe for amqp091-go to connect, open channels, select
// confirms and set QoS (pulses), and lets a test push what a broker would
// (connection.blocked, unblocked, close). Each dial gets a new link.
type scriptedPeer struct {
	t testing.TB

	// confirm answers the n-th message published on a link (n counts
	// from 1, over all its channels): true acks it, false nacks it. Nil
	// acks everything. Set before the first dial.
	confirm func(n uint64) bool
	// holdAnswers holds the confirms of a link's first holdAnswers
	// messages until they have all arrived, then sends them in order, so
	// that a test knows what the client wrote before any answer: a nack
	// then finds no later message of its call unwritten.
	holdAnswers int
	// silent, when set, says which messages get no answer at all: the
	// n-th published on link l (links count from 0, in dial order), on
	// the given channel.
	silent func(l *peerLink, channel uint16, n uint64) bool
	// onMethod, when set, may answer a method itself (true: handled).
	// Set before the first dial.
	onMethod func(l *peerLink, channel, class, method uint16) bool
	// onPublish, when set, is given the arguments of every basic.publish
	// (reserved, exchange, routing key, then the mandatory and immediate
	// bits). Set before the first dial.
	onPublish func(args []byte)

	mu    sync.Mutex
	links []*peerLink
	dials chan *peerLink // each new link, once its connection is open
	wg    sync.WaitGroup
}

// peerLink is one connection the peer accepted.
type peerLink struct {
	index   int // in dial order, from 0
	conn    net.Conn
	writeMu sync.Mutex
}

func newScriptedPeer(t testing.TB) *scriptedPeer {
	p := &scriptedPeer{t: t, dials: make(chan *peerLink, 16)}
	t.Cleanup(func() {
		p.mu.Lock()
		for _, l := range p.links {
			_ = l.conn.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// dial is an amqp091.Config.Dial that connects to the peer.
func (p *scriptedPeer) dial(network, addr string) (net.Conn, error) {
	client, server := net.Pipe()
	l := &peerLink{conn: server}
	p.mu.Lock()
	l.index = len(p.links)
	p.links = append(p.links, l)
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer server.Close()
		p.serve(l)
	}()
	return client, nil
}

// AMQP class and method ids (AMQP 0-9-1, section 1.x of the spec).
const (
	classConnection, classChannel, classBasic, classConfirm = 10, 20, 60, 85
	frameMethod, frameHeader, frameBody, frameEnd           = 1, 2, 3, 0xCE
)

func (p *scriptedPeer) serve(l *peerLink) {
	r := bufio.NewReader(l.conn)
	header := make([]byte, 8)
	if _, err := io.ReadFull(r, header); err != nil || !bytes.Equal(header, []byte("AMQP\x00\x00\x09\x01")) {
		return
	}
	// connection.start: version 0-9, no server properties, PLAIN, en_US.
	l.send(0, classConnection, 10, []byte{0, 9}, table(), longstr("PLAIN"), longstr("en_US"))
	a := &answerer{peer: p, link: l, tags: map[uint16]uint64{}}
	bodyLeft := map[uint16]uint64{} // of the message being published
	for {
		kind, channel, payload, err := readFrame(r)
		if err != nil {
			return
		}
		switch kind {
		case frameHeader: // body size at 4..12
			if bodyLeft[channel] = binary.BigEndian.Uint64(payload[4:]); bodyLeft[channel] == 0 {
				a.published(channel)
			}
			continue
		case frameBody:
			if bodyLeft[channel] -= uint64(len(payload)); bodyLeft[channel] == 0 {
				a.published(channel)
			}
			continue
		}
		if kind != frameMethod || len(payload) < 4 {
			continue // heartbeats
		}
		class, method := binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])
		if p.onPublish != nil && class == classBasic && method == 40 {
			p.onPublish(payload[4:])
		}
		if p.onMethod != nil && p.onMethod(l, channel, class, method) {
			continue
		}
		switch {
		case class == classConnection && method == 11: // start-ok: tune
			l.send(0, classConnection, 30, u16(2047), u32(131072), u16(0))
		case class == classConnection && method == 40: // open: open-ok
			l.send(0, classConnection, 41, shortstr(""))
			p.dials <- l
		case class == classConnection && method == 50: // close: close-ok
			l.send(0, classConnection, 51)
			return
		case class == classConnection && method == 51: // close-ok to ours
			return
		case class == classChannel && method == 10: // open: open-ok
			l.send(channel, classChannel, 11, longstr(""))
		case class == classChannel && method == 40: // close: close-ok
			l.send(channel, classChannel, 41)
		case class == classBasic && method == 10: // qos (a pulse): qos-ok
			l.send(channel, classBasic, 11)
		case class == classConfirm && method == 10: // select: select-ok
			l.send(channel, classConfirm, 11)
		}
	}
}

// answerer confirms what a link publishes: basic.ack or basic.nack, each
// for its own delivery tag, held back as holdAnswers says.
type answerer struct {
	peer *scriptedPeer
	link *peerLink
	tags map[uint16]uint64 // the last delivery tag, per channel
	n    uint64            // messages published on the link
	held []func()
}

func (a *answerer) published(channel uint16) {
	a.tags[channel]++
	a.n++
	tag, n := a.tags[channel], a.n
	if a.peer.silent != nil && a.peer.silent(a.link, channel, n) {
		return
	}
	answer := func() {
		if a.peer.confirm == nil || a.peer.confirm(n) {
			a.link.send(channel, classBasic, 80, u64(tag), []byte{0}) // ack, not multiple
			return
		}
		a.link.send(channel, classBasic, 120, u64(tag), []byte{0}) // nack, not multiple
	}
	if int(n) < a.peer.holdAnswers {
		a.held = append(a.held, answer)
		return
	}
	for _, f := range a.held {
		f()
	}
	a.held = nil
	answer()
}

// blocked sends connection.blocked, as a broker under an alarm does.
func (l *peerLink) blocked(reason string) { l.send(0, classConnection, 60, shortstr(reason)) }

// unblocked sends connection.unblocked.
func (l *peerLink) unblocked() { l.send(0, classConnection, 61) }

// closeChannel sends channel.close, as a broker refusing what was asked
// on it does.
func (l *peerLink) closeChannel(channel, code uint16, text string, class, method uint16) {
	l.send(channel, classChannel, 40, u16(code), shortstr(text), u16(class), u16(method))
}

// closeConnection sends connection.close, as an operator's
// close_connection does (320 CONNECTION_FORCED).
func (l *peerLink) closeConnection(code uint16, text string) {
	l.send(0, classConnection, 50, u16(code), shortstr(text), u16(0), u16(0))
}

func (l *peerLink) send(channel uint16, class, method uint16, args ...[]byte) {
	payload := append(u16(class), u16(method)...)
	for _, a := range args {
		payload = append(payload, a...)
	}
	frame := append([]byte{frameMethod}, u16(channel)...)
	frame = append(frame, u32(uint32(len(payload)))...)
	frame = append(frame, payload...)
	frame = append(frame, frameEnd)
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	_, _ = l.conn.Write(frame) // a closed link: the client is gone
}

func readFrame(r *bufio.Reader) (kind byte, channel uint16, payload []byte, err error) {
	head := make([]byte, 7)
	if _, err = io.ReadFull(r, head); err != nil {
		return
	}
	payload = make([]byte, binary.BigEndian.Uint32(head[3:])+1) // and frame-end
	if _, err = io.ReadFull(r, payload); err != nil {
		return
	}
	return head[0], binary.BigEndian.Uint16(head[1:]), payload[:len(payload)-1], nil
}

func u16(v uint16) []byte      { return binary.BigEndian.AppendUint16(nil, v) }
func u64(v uint64) []byte      { return binary.BigEndian.AppendUint64(nil, v) }
func u32(v uint32) []byte      { return binary.BigEndian.AppendUint32(nil, v) }
func shortstr(s string) []byte { return append([]byte{byte(len(s))}, s...) }
func longstr(s string) []byte  { return append(u32(uint32(len(s))), s...) }
func table() []byte            { return u32(0) }

// next waits for the next connection to open.
func (p *scriptedPeer) next(t testing.TB) *peerLink {
	t.Helper()
	select {
	case l := <-p.dials:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no connection opened in 10 s")
		return nil
	}
}
