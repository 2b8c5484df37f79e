package core

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// laneWithPending is a lane of a session without a connection, holding one
// handoff in flight per message, as after a channel's death.
func laneWithPending(msgs []*outgoing) (*lane, *attempt) {
	sess := &session{cfg: &settings{Config[Wiring]{MaxInFlight: 8}}, logger: watermill.NopLogger{}, stopping: make(chan struct{})}
	sess.pub = &publishing{topology: newTopologyCache(sess)}
	l := newLane(sess, 0, &sess.pub.size, sess.pub.topology)
	a := newAttempt(msgs, 0)
	for i := range a.handoffs {
		d := &a.handoffs[i]
		d.claim()
		l.pending.push(d)
	}
	return l, a
}

// told collects the facts a lane told an attempt, by message UUID.
func told(a *attempt) map[string]fact {
	got := make(map[string]fact)
	for range a.handoffs {
		f := <-a.facts
		got[f.d.msg.uuid] = f
	}
	return got
}

// A lane whose channel ended tells every message in flight on it as lost,
// with the cause and whether only the channel closed, and stops the call;
// a size limit the broker named is learned for the connection.
func TestLoseTellsEveryMessageInFlight(t *testing.T) {
	msgs := newOutgoing(3)
	l, a := laneWithPending(msgs)
	cause := &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 100 is larger than configured max size 10", Server: true}
	l.lose(cause, true)
	got := told(a)
	for _, m := range msgs {
		if f := got[m.uuid]; f.kind != factLost || f.cause != cause || !f.channelOnly {
			t.Fatalf("%s: fact %d (cause %v, channel only %v), want lost with the channel's cause", m.uuid, f.kind, f.cause, f.channelOnly)
		}
	}
	if !a.stopped.Load() {
		t.Fatal("a message lost on the channel must stop its call")
	}
	if limit, over := l.size.over(11); !over || limit != 10 {
		t.Fatalf("size limit %d (over: %v), want the broker's 10 learned", limit, over)
	}
}

// An exchange the broker says is missing is suspected at once, for every
// call of the connection, whoever waits for the message that named it.
func TestLoseSuspectsAMissingExchange(t *testing.T) {
	l, a := laneWithPending(newOutgoing(1))
	l.lose(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'gone' in vhost '/'", Server: true}, true)
	<-a.facts
	if !l.sess.pub.topology.suspect["gone"] {
		t.Fatal("the missing exchange is not suspected")
	}
}

// A handoff parked for its turn while others are in flight goes back as
// not sent when the channel dies before its turn.
func TestLoseTellsTheParkedHandoffUnsent(t *testing.T) {
	msgs := newOutgoing(2)
	l, a := laneWithPending(msgs)
	parked := l.pending.items[1] // not in flight: parked for its turn
	l.pending.items = l.pending.items[:1]
	parked.alone = true
	l.parked = parked
	l.lose(&amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED", Server: true}, false)
	if l.parked != nil {
		t.Fatal("the parked handoff is still parked")
	}
	first, second := <-a.facts, <-a.facts
	if first.kind != factLost || second.kind != factUnsent || second.d != parked {
		t.Fatalf("facts %d and %d (the second for the parked one: %v), want lost and not sent", first.kind, second.kind, second.d == parked)
	}
	if f := fateOf(second, 0); !f.resend {
		t.Fatalf("the parked handoff's fate %+v, want sent again", f)
	}
}
