package core

import (
	"errors"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// lostFates is the fate of each message lost with a channel for cause,
// each sent alone or not.
func lostFates(msgs []*outgoing, alone bool, cause error, channelOnly bool) []fate {
	a := newAttempt(msgs, 0)
	fates := make([]fate, len(msgs))
	for i := range a.handoffs {
		a.handoffs[i].alone = alone
		fates[i] = fateOf(fact{d: &a.handoffs[i], kind: factLost, cause: cause, channelOnly: channelOnly}, 0)
	}
	return fates
}

// A channel's loss blames only the messages the broker's reason names;
// with a reason that names none but is permanent, every message in flight
// becomes a suspect, and a suspect alone on a channel the broker closed is
// the culprit.
func TestLostFateBlamesOnlyTheCulprit(t *testing.T) {
	mk := func() []*outgoing {
		msgs := newOutgoing(3)
		msgs[1].publishing.Body = make([]byte, 100)
		msgs[1].exchange = "gone"
		return msgs
	}
	const (
		resent = iota
		failed
		suspect // sent again, alone
	)
	refused := &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - invalid message: {delivery_mode_unknown,7}", Server: true}
	cases := []struct {
		name        string
		cause       error
		alone       bool
		channelOnly bool
		want        []int // per message
	}{
		{"size limit names the big one", &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 100 is larger than configured max size 10", Server: true},
			false, true, []int{resent, failed, resent}},
		{"a missing exchange is declared again", &amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'gone' in vhost '/'", Server: true},
			false, true, []int{resent, resent, resent}},
		{"unattributed: all suspects", refused, false, true, []int{suspect, suspect, suspect}},
		{"unattributed, sent alone: the culprit", refused, true, true, []int{failed, failed, failed}},
		{"unattributed on a dead connection: suspects still", refused, true, false, []int{suspect, suspect, suspect}},
		{"a forced close is no one's fault", &amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED", Server: true},
			false, false, []int{resent, resent, resent}},
		{"the session ends", errConnectionLost, false, false, []int{resent, resent, resent}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msgs := mk()
			var fates []fate
			if c.alone {
				// A handoff sent alone is alone on its channel: one at a time.
				for _, m := range msgs {
					fates = append(fates, lostFates([]*outgoing{m}, true, c.cause, c.channelOnly)...)
				}
			} else {
				fates = lostFates(msgs, false, c.cause, c.channelOnly)
			}
			for i, f := range fates {
				var got int
				switch {
				case f.resend && msgs[i].suspect:
					got = suspect
				case f.resend:
					got = resent
				case f.err != nil:
					got = failed
				default:
					t.Fatalf("message %d: fate %+v, neither sent again nor failed", i, f)
				}
				if got != c.want[i] {
					t.Fatalf("message %d: fate %+v (%d), want %d", i, f, got, c.want[i])
				}
				if got == failed && c.alone && !errors.Is(f.err, ErrPreconditionFailed) {
					t.Fatalf("culprit's error %v, want ErrPreconditionFailed", f.err)
				}
			}
		})
	}
}

// A nacked message is sent again and backs its call off; a return from its
// own queue has the topic declared again; a return from any other queue
// fails it with ErrUnroutable. Acks confirm, and only facts that may mean
// a re-send stop the call: not the culprit of its channel's loss, which
// fails.
func TestFateOfAnswers(t *testing.T) {
	msgs := newOutgoing(2)
	msgs[1].ownQueue = false
	a := newAttempt(msgs, 0)
	own, other := &a.handoffs[0], &a.handoffs[1]
	ret := &amqp091.Return{ReplyCode: 312, ReplyText: "NO_ROUTE"}
	own.msg.publishing.Body = make([]byte, 100)
	tooLarge := &amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 100 is larger than configured max size 10", Server: true}
	for _, c := range []struct {
		name  string
		f     fact
		check func(fate) bool
		stops bool
	}{
		{"acked", fact{d: own, kind: factAcked}, func(f fate) bool { return f.confirmed }, false},
		{"nacked", fact{d: own, kind: factNacked}, func(f fate) bool { return f.resend && f.nacked }, true},
		{"returned by its own queue", fact{d: own, kind: factReturned, returned: ret}, func(f fate) bool { return f.resend && f.returned }, true},
		{"returned by another", fact{d: other, kind: factReturned, returned: ret}, func(f fate) bool { return errors.Is(f.err, ErrUnroutable) && !f.returned }, false},
		{"refused", fact{d: own, kind: factRefused, cause: ErrMessageTooLarge}, func(f fate) bool { return errors.Is(f.err, ErrMessageTooLarge) }, false},
		{"not sent", fact{d: own, kind: factUnsent, cause: errHeldBack}, func(f fate) bool { return f.resend }, true},
		{"lost, innocent", fact{d: own, kind: factLost, cause: errConnectionLost}, func(f fate) bool { return f.resend }, true},
		{"lost, the culprit", fact{d: own, kind: factLost, cause: tooLarge, channelOnly: true}, func(f fate) bool { return errors.Is(f.err, ErrMessageTooLarge) }, false},
	} {
		if got := fateOf(c.f, 0); !c.check(got) {
			t.Errorf("%s: fate %+v", c.name, got)
		}
		if c.f.stopsItsCall() != c.stops {
			t.Errorf("%s: stops its call %v, want %v", c.name, !c.stops, c.stops)
		}
	}
	// Past maxReturns, its own queue's returns fail it.
	for range maxReturns {
		fateOf(fact{d: own, kind: factReturned, returned: ret}, 0)
	}
	if f := fateOf(fact{d: own, kind: factReturned, returned: ret}, 0); !errors.Is(f.err, ErrUnroutable) {
		t.Fatalf("after %d returns: fate %+v, want ErrUnroutable", own.msg.returns, f)
	}
}
