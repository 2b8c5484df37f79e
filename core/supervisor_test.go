package core

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The supervisor's state machine, against a scripted peer: connected,
// blocked and unblocked by the broker, closed by an operator and
// reconnected, closed by the caller; each change reported once, in order,
// with its reason.
func TestSupervisorStateMachine(t *testing.T) {
	peer := newScriptedPeer(t)
	changes := make(chan StateChange, 64)
	w := peerWiring(peer)
	sub, err := NewSubscriber(Config[Wiring]{
		Reconnect:     Backoff{InitialWait: time.Millisecond, MaxWait: 10 * time.Millisecond},
		OnStateChange: func(c StateChange) { changes <- c },
	}, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() }) // on failure too: it would redial the peer
	first := peer.next(t)
	expectChange(t, changes, StateConnecting, StateConnected, "")
	if !sub.IsConnected() {
		t.Fatal("not connected after the change was reported")
	}

	first.blocked("low on memory")
	expectChange(t, changes, StateConnected, StateBlocked, "low on memory")
	if h := sub.Health(); h.State != StateBlocked || h.Err == nil {
		t.Fatalf("health while blocked: %+v", h)
	}
	first.unblocked()
	expectChange(t, changes, StateBlocked, StateConnected, "")

	first.closeConnection(320, "CONNECTION_FORCED - closed by an operator")
	expectChange(t, changes, StateConnected, StateReconnecting, "CONNECTION_FORCED")
	peer.next(t)
	expectChange(t, changes, StateReconnecting, StateConnected, "")

	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	expectChange(t, changes, StateConnected, StateClosed, "")
	if err := sub.WaitConnected(t.Context()); err != ErrClosed {
		t.Fatalf("WaitConnected after Close: %v, want ErrClosed", err)
	}
	select {
	case c := <-changes:
		t.Fatalf("a change after Close: %+v", c)
	default:
	}
}

// peerWiring connects to peer, with the least a Subscriber needs.
func peerWiring(peer *scriptedPeer) Wiring {
	return Wiring{
		URI:          "amqp://guest:guest@peer:5672/",
		AMQPConfig:   &amqp091.Config{Dial: peer.dial},
		Marshaler:    nopMarshaler{},
		ExchangeName: func(string) string { return "" },
		QueueName:    func(topic string) string { return topic },
		RoutingKey:   func(topic string) string { return topic },
	}
}

// peerPublisherWiring is peerWiring for a Publisher, whose topology is
// taken as declared: the peer answers no declaration.
func peerPublisherWiring(peer *scriptedPeer) Wiring {
	w := peerWiring(peer)
	w.BuildTopology = func(*amqp091.Channel, string, string, string, watermill.LoggerAdapter) error { return nil }
	return w
}

func expectChange(t *testing.T, changes <-chan StateChange, from, to State, reason string) {
	t.Helper()
	select {
	case c := <-changes:
		if c.From != from || c.To != to || (reason != "") != (c.Err != nil) || (c.Err != nil && !strings.Contains(c.Err.Error(), reason)) {
			t.Fatalf("change %s -> %s (%v), want %s -> %s (%q)", c.From, c.To, c.Err, from, to, reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no change to %s in 10 s", to)
	}
}

type nopMarshaler struct{}

func (nopMarshaler) Marshal(*message.Message) (amqp091.Publishing, error) {
	return amqp091.Publishing{}, nil
}
func (nopMarshaler) Unmarshal(amqp091.Delivery) (*message.Message, error) { return nil, nil }

// A round starts after the node last connected to, and tries the nodes out
// of reach lately (a failed dial, a connection lost) after the others; a
// node left on purpose (it answers, but confirms nothing) is not out of
// reach. Seen in a partition: node 1 isolated, nodes 2 and 3 each left for
// confirming nothing while the cluster recovered; the round after node 3
// must not spend a DialTimeout on node 1 before node 2.
func TestDialOrderTriesNodesOutOfReachLast(t *testing.T) {
	uris := []string{"amqp://guest:guest@n1:5672/", "amqp://guest:guest@n2:5672/", "amqp://guest:guest@n3:5672/"}
	d := newDialer(&settings{Config[Wiring]{AMQP: Wiring{URI: uris[0]}, FailoverURIs: uris[1:], FailoverInOrder: true}}, context.Background())
	d.lost(redactURI(uris[0]), errors.New("a pulse failed"))
	d.lost(redactURI(uris[1]), &unconfirmingNodeError{after: 7500 * time.Millisecond})
	now := time.Now()
	d.next = 0 // after node 3
	if got := d.order(now); !slices.Equal(got, []int{1, 2, 0}) {
		t.Fatalf("order %v, want [1 2 0]: node 1, out of reach, last", got)
	}
	if got := d.order(now.Add(outOfReachFor)); !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("order %v a minute later, want [0 1 2]", got)
	}
}
