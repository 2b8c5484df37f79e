package core

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// trust's invariant, against a scripted peer: no confirm is reported while
// a pulse is out, or once the session broke off. In each test the first
// message's ack arrives while the pulse is out (the peer holds it until the
// pulse arrives); what the pulse then comes to decides whether that ack is
// believed.

// pulsePeer is a scripted peer whose first link holds the ack of its first
// message until the first pulse there arrives, and leaves that pulse to
// onPulse: it runs then, with the link, the message's channel and the
// pulse's, on a goroutine of its own, not on the peer's reader (which must
// go on reading while onPulse writes: net.Pipe has no buffer). Every other
// message is acked, and every other pulse answered, at once.
type pulsePeer struct {
	*scriptedPeer

	mu         sync.Mutex
	published  map[int]int // messages, by link index
	msgChannel uint16      // of the first link's first message
	pulsed     bool        // the first link's first pulse arrived
}

func newPulsePeer(t *testing.T, onPulse func(l *peerLink, msgChannel, pulseChannel uint16)) *pulsePeer {
	p := &pulsePeer{scriptedPeer: newScriptedPeer(t), published: map[int]int{}}
	p.silent = func(l *peerLink, channel uint16, n uint64) bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.published[l.index]++
		if l.index == 0 && n == 1 {
			p.msgChannel = channel
			return true // onPulse acks it
		}
		return false
	}
	p.onMethod = func(l *peerLink, channel, class, method uint16) bool {
		if l.index != 0 || class != classBasic || method != 10 {
			return false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.pulsed {
			return false
		}
		p.pulsed = true
		if p.published[0] == 0 {
			t.Error("a pulse before the first message: there is no ack for it to hold")
			return false
		}
		msgChannel := p.msgChannel
		p.wg.Add(1) // waited for by the peer's cleanup, once the links are closed
		go func() {
			defer p.wg.Done()
			onPulse(l, msgChannel, channel)
		}()
		return true
	}
	return p
}

// publishedOn is how many messages link index carried.
func (p *pulsePeer) publishedOn(index int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.published[index]
}

// dialled is how many links the client opened.
func (p *pulsePeer) dialled() int {
	p.scriptedPeer.mu.Lock()
	defer p.scriptedPeer.mu.Unlock()
	return len(p.links)
}

// ackFirst acks the first message of channel (delivery tag 1, not multiple).
func ackFirst(l *peerLink, channel uint16) { l.send(channel, classBasic, 80, u64(1), []byte{0}) }

// answerPulse sends basic.qos-ok on the pulse's channel.
func answerPulse(l *peerLink, channel uint16) { l.send(channel, classBasic, 11) }

// publishOne publishes one message through a publisher of one lane on p
// (ConfirmTimeout 2 s: a pulse bound of 1 s; no other URI) once it is
// connected, and returns when Publish returned, the publisher, and
// Publish's error. The connections lost are sent on lost.
func publishOne(t *testing.T, p *pulsePeer, lost chan<- error) (time.Time, *Publisher, error) {
	t.Helper()
	pub := unconfirmingPublisher(t, p.scriptedPeer, false, lost)
	p.next(t)
	err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("payload")))
	return time.Now(), pub, err
}

// expectAnsweredFirst checks that Publish returned nil on the first link
// alone (a reconnect would confirm the message without the pulse), at
// returned, not before the peer answered the pulse (answered has the moment
// just before it wrote qos-ok).
func expectAnsweredFirst(t *testing.T, p *pulsePeer, returned time.Time, err error, answered <-chan time.Time, lost <-chan error) {
	t.Helper()
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case err := <-lost:
		t.Fatalf("connection lost (%v), though the pulse was answered within its bound (time blocked aside)", err)
	default:
	}
	if n := p.dialled(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
	select {
	case at := <-answered:
		if returned.Before(at) {
			t.Fatalf("Publish returned %s before the pulse was answered", at.Sub(returned))
		}
	default:
		t.Fatal("Publish returned before the pulse was answered: an ack was reported while the pulse was out")
	}
	if n := p.publishedOn(0); n != 1 {
		t.Fatalf("%d messages published, want 1", n)
	}
}

// A pulse never answered: the ack that came back while it was out is not
// believed. The pulse's bound cuts the connection, and the message is
// confirmed only once sent again on the next one.
func TestTrustAPulseSwallowed(t *testing.T) {
	peer := newPulsePeer(t, func(l *peerLink, msgChannel, _ uint16) {
		ackFirst(l, msgChannel) // and the pulse is left unanswered
	})
	lost := make(chan error, 16)
	_, _, err := publishOne(t, peer, lost)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// Counted as Publish returned: had the first link's ack been believed,
	// it would have returned before the second link carried anything.
	if first, second := peer.publishedOn(0), peer.publishedOn(1); first != 1 || second != 1 {
		t.Fatalf("published %d on the first link and %d on the second when Publish returned, want 1 and 1", first, second)
	}
	select {
	case err := <-lost:
		var noReply *noReplyError
		if !errors.As(err, &noReply) || noReply.what != "a pulse" || !errors.Is(err, errConnectionLost) {
			t.Fatalf("connection lost with %v, want no reply to a pulse", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no connection lost in 10 s, though its pulse went unanswered")
	}
	if n := peer.dialled(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// A pulse answered late, within its bound: the ack that came back
// meanwhile is reported once it is answered, not before, on the same
// connection.
func TestTrustAPulseAnsweredLate(t *testing.T) {
	answered := make(chan time.Time, 1)
	peer := newPulsePeer(t, func(l *peerLink, msgChannel, pulseChannel uint16) {
		ackFirst(l, msgChannel)
		time.Sleep(300 * time.Millisecond) // a broker slow to answer, well within the bound of 1 s
		answered <- time.Now()
		answerPulse(l, pulseChannel)
	})
	lost := make(chan error, 16)
	returned, _, err := publishOne(t, peer, lost)
	expectAnsweredFirst(t, peer, returned, err, answered, lost)
}

// A pulse answered only after the broker blocked the connection for longer
// than the pulse's bound: time blocked does not count against the pulse,
// so the connection is kept, and the ack is reported once the pulse is
// answered. Nor is it taken for the broker's latency: the bounds are not
// stretched for it (pace.go).
func TestTrustABlockAcrossAPulse(t *testing.T) {
	answered := make(chan time.Time, 1)
	peer := newPulsePeer(t, func(l *peerLink, msgChannel, pulseChannel uint16) {
		ackFirst(l, msgChannel)
		l.blocked("low on memory")
		time.Sleep(1500 * time.Millisecond) // half as long again as the pulse's bound
		l.unblocked()
		answered <- time.Now()
		answerPulse(l, pulseChannel)
	})
	lost := make(chan error, 16)
	returned, pub, err := publishOne(t, peer, lost)
	expectAnsweredFirst(t, peer, returned, err, answered, lost)
	bound := pulseBound(2 * time.Second)
	if stretched := pub.sup.live().pace.stretch(bound); stretched != bound {
		t.Fatalf("a pulse's bound is %s after the block, want %s: time blocked was taken for the broker's latency", stretched, bound)
	}
}
