package core

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// unconfirmingPublisher is a publisher of one lane on peer, with
// ConfirmTimeout 2 s (a stall bound of 1 s) and failover as given; the
// connections it lost are sent on lost.
func unconfirmingPublisher(t *testing.T, peer *scriptedPeer, failover bool, lost chan<- error) *Publisher {
	t.Helper()
	w := peerWiring(peer)
	w.BuildTopology = func(*amqp091.Channel, string, string, string, watermill.LoggerAdapter) error { return nil }
	cfg := Config[Wiring]{
		Channels:       1,
		ConfirmTimeout: 2 * time.Second,
		PublishTimeout: time.Minute, // the verdicts come from the peer, not from a clock
		OnEvent: func(e Event) {
			if e.Kind == ConnectionLost {
				lost <- e.Err
			}
		},
	}
	if failover {
		cfg.FailoverURIs = []string{"amqp://guest:guest@peer2:5672/"}
	}
	pub, err := NewPublisher(cfg, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return pub
}

// A channel that confirms nothing is replaced, and what it owes is sent on
// a fresh channel at once, though the broker never answers the old
// channel's close: no one waits for that answer, and the connection is
// kept (the broker answers everything else).
func TestAStuckChannelDoesNotHoldItsMessages(t *testing.T) {
	peer := newScriptedPeer(t)
	var mu sync.Mutex
	stuck := uint16(0) // the channel the first message went on
	closes := 0        // its channel.close requests, none answered
	peer.silent = func(_ *peerLink, channel uint16, n uint64) bool {
		if n != 1 {
			return false
		}
		mu.Lock()
		stuck = channel
		mu.Unlock()
		return true // the first message is never confirmed
	}
	peer.onMethod = func(_ *peerLink, channel, class, method uint16) bool {
		mu.Lock()
		defer mu.Unlock()
		if class == classChannel && method == 40 && channel == stuck {
			closes++
			return true
		}
		return false
	}
	lost := make(chan error, 4)
	pub := unconfirmingPublisher(t, peer, false, lost)
	peer.next(t)

	if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("payload"))); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	mu.Lock()
	n := closes
	mu.Unlock()
	if n != 1 {
		t.Fatalf("%d channel closes asked for, want 1 (the stuck channel's, never answered)", n)
	}
	select {
	case err := <-lost:
		t.Fatalf("the connection was lost (%v): the message waited for the stuck channel's close", err)
	default:
	}
	peer.mu.Lock()
	links := len(peer.links)
	peer.mu.Unlock()
	if links != 1 {
		t.Fatalf("%d connections, want 1", links)
	}
}

// A node that answers but confirms nothing, on fresh channels too, is
// left for another URI once ConfirmTimeout has passed; with no other URI
// the connection is kept.
func TestANodeThatCannotConfirmIsLeft(t *testing.T) {
	peer := newScriptedPeer(t)
	peer.silent = func(l *peerLink, _ uint16, _ uint64) bool { return l.index == 0 } // the first node confirms nothing
	lost := make(chan error, 4)
	pub := unconfirmingPublisher(t, peer, true, lost)
	peer.next(t)

	if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("payload"))); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case err := <-lost:
		var why *unconfirmingNodeError
		if !errors.As(err, &why) {
			t.Fatalf("connection lost with %v, want an unconfirmingNodeError", err)
		}
	default:
		t.Fatal("confirmed without leaving the first node")
	}
}

func TestANodeThatCannotConfirmIsKeptWithoutAnotherURI(t *testing.T) {
	peer := newScriptedPeer(t)
	peer.silent = func(*peerLink, uint16, uint64) bool { return true }
	lost := make(chan error, 4)
	pub := unconfirmingPublisher(t, peer, false, lost)
	peer.next(t)

	msg := message.NewMessage(watermill.NewUUID(), []byte("payload"))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second) // two ConfirmTimeouts
	defer cancel()
	msg.SetContext(ctx)
	if err := pub.Publish("orders", msg); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("Publish: %v, want ErrNotConfirmed once its context ended", err)
	}
	select {
	case err := <-lost:
		t.Fatalf("connection lost (%v) with no other URI to go to", err)
	default:
	}
}
