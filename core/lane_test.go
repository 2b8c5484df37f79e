package core

import (
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// laneWithPending is a lane of a session without a connection, holding one
// handoff in flight per message, as after a channel's death.
func laneWithPending(msgs []*outgoing) (*lane, *attempt) {
	sess := &session{cfg: &settings{Config[Wiring]{MaxInFlight: 8}}, logger: watermill.NopLogger{}, stopping: make(chan struct{})}
	sess.pub = &publishing{topology: newTopologyCache(sess)}
	l := newLane(sess, 0)
	a := newAttempt(msgs, 0)
	for i := range a.handoffs {
		d := &a.handoffs[i]
		d.claim()
		l.pending.push(d)
	}
	return l, a
}

func outcomes(a *attempt) map[string]outcome {
	got := make(map[string]outcome)
	for range a.handoffs {
		o := <-a.results
		got[o.d.msg.uuid] = o
	}
	return got
}

// failPending blames only the messages the broker's reason names; with a
// reason that names none but is permanent, every message in flight becomes
// a suspect, and a suspect alone on a channel the broker closed is the
// culprit.
func TestFailPendingBlamesOnlyTheCulprit(t *testing.T) {
	mk := func(solo bool) []*outgoing {
		msgs := newOutgoing(3)
		msgs[1].publishing.Body = make([]byte, 100)
		msgs[1].exchange = "gone"
		for _, m := range msgs {
			m.solo = solo
		}
		return msgs
	}
	refused := &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,7}", Server: true}
	cases := []struct {
		name        string
		cause       error
		solo        bool
		channelOnly bool
		want        []outcomeKind // per message
	}{
		{"size limit names the big one", &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 100 is larger than configured max size 10", Server: true},
			false, true, []outcomeKind{outcomeLost, outcomeFailed, outcomeLost}},
		{"a missing exchange is declared again", &amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'gone' in vhost '/'", Server: true},
			false, true, []outcomeKind{outcomeLost, outcomeLost, outcomeLost}},
		{"unattributed: all suspects", refused, false, true, []outcomeKind{outcomeSuspect, outcomeSuspect, outcomeSuspect}},
		{"unattributed, sent alone: the culprit", refused, true, true, []outcomeKind{outcomeFailed, outcomeFailed, outcomeFailed}},
		{"unattributed on a dead connection: suspects still", refused, true, false, []outcomeKind{outcomeSuspect, outcomeSuspect, outcomeSuspect}},
		{"a forced close is no one's fault", &amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED", Server: true},
			false, false, []outcomeKind{outcomeLost, outcomeLost, outcomeLost}},
		{"the session ends", nil, false, false, []outcomeKind{outcomeLost, outcomeLost, outcomeLost}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msgs := mk(c.solo)
			if c.solo {
				// A solo handoff is alone on its channel: one at a time.
				for i, m := range msgs {
					l, a := laneWithPending([]*outgoing{m})
					l.failPending(c.cause, c.channelOnly)
					if o := outcomes(a)[m.uuid]; o.kind != c.want[i] {
						t.Fatalf("message %d: outcome %d, want %d (%v)", i, o.kind, c.want[i], o.err)
					} else if o.kind == outcomeFailed && !errors.Is(o.err, ErrPreconditionFailed) {
						t.Fatalf("culprit's error %v, want ErrPreconditionFailed", o.err)
					}
				}
				return
			}
			l, a := laneWithPending(msgs)
			l.failPending(c.cause, c.channelOnly)
			got := outcomes(a)
			for i, m := range msgs {
				if got[m.uuid].kind != c.want[i] {
					t.Fatalf("message %d: outcome %d, want %d (%v)", i, got[m.uuid].kind, c.want[i], got[m.uuid].err)
				}
			}
			if !a.cut.Load() {
				t.Fatal("a message lost on the channel must cut its attempt")
			}
			if c.name == "a missing exchange is declared again" && !l.sess.pub.topology.suspect["gone"] {
				t.Fatal("the missing exchange is not suspected")
			}
		})
	}
}

// A solo handoff held back while others are in flight goes back as lost
// when the channel dies before its turn.
func TestFailPendingReturnsTheHeldSoloDelivery(t *testing.T) {
	msgs := newOutgoing(2)
	l, a := laneWithPending(msgs)
	held := l.pending.items[1] // not in flight: held for its turn
	l.pending.items = l.pending.items[:1]
	held.solo = true
	l.held = held
	l.failPending(&amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED", Server: true}, false)
	if l.held != nil {
		t.Fatal("the held handoff is still held")
	}
	first, second := <-a.results, <-a.results
	if first.kind != outcomeLost || second.kind != outcomeLost || second.d != held {
		t.Fatalf("outcomes %d and %d (the second for the held one: %v), want both lost", first.kind, second.kind, second.d == held)
	}
}
