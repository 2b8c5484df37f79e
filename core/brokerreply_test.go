package core

import (
	"errors"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Every reply code AMQP 0-9-1 defines (amqp091-go's constants) has a
// meaning decided on purpose: transient, or a permanent sentinel. A code
// missing from replyMeanings fails here, so that a new one is not retried
// to a deadline, or failed for good, by accident.
func TestEveryReplyCodeIsClassified(t *testing.T) {
	codes := map[int]struct {
		want      error // nil: transient
		permanent bool
	}{
		amqp091.ContentTooLarge:    {nil, false},
		amqp091.NoRoute:            {ErrUnroutable, true},
		amqp091.NoConsumers:        {ErrUnroutable, true},
		amqp091.ConnectionForced:   {nil, false},
		amqp091.InvalidPath:        {ErrNotFound, true},
		amqp091.AccessRefused:      {ErrAccessRefused, true},
		amqp091.NotFound:           {ErrNotFound, true},
		amqp091.ResourceLocked:     {ErrPreconditionFailed, true},
		amqp091.PreconditionFailed: {ErrPreconditionFailed, true},
		amqp091.FrameError:         {ErrInvalidName, true},
		amqp091.SyntaxError:        {ErrInvalidName, true},
		amqp091.CommandInvalid:     {ErrInvalidName, true},
		amqp091.ChannelError:       {nil, false},
		amqp091.UnexpectedFrame:    {nil, false},
		amqp091.ResourceError:      {nil, false},
		amqp091.NotAllowed:         {ErrAccessRefused, true},
		amqp091.NotImplemented:     {ErrConfig, true},
		amqp091.InternalError:      {nil, false},
	}
	if len(codes) != len(replyMeanings) {
		t.Errorf("%d codes have a meaning, %d are checked here", len(replyMeanings), len(codes))
	}
	for code, c := range codes {
		m, ok := replyMeanings[code]
		if !ok || m.name == "" || m.why == "" {
			t.Errorf("reply code %d has no meaning decided", code)
			continue
		}
		err := classifyBroker(&amqp091.Error{Code: code, Reason: m.name + " - something", Server: true})
		if IsPermanent(err) != c.permanent || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%d %s: %v (permanent %v), want %v (permanent %v)", code, m.name, err, IsPermanent(err), c.want, c.permanent)
		}
		if got := isTransientReply(&amqp091.Error{Code: code, Reason: m.name, Server: true}); got == c.permanent {
			t.Errorf("%d %s: isTransientReply %v", code, m.name, got)
		}
	}
}

// The reasons that refine a code: a queue whose home node is away, a
// limit reached (connections, channels), a missing vhost, a message over
// max_message_size, the 405 of an exclusive queue (named by its setting),
// and amqp091-go's own channel_max refusal (client side, typed, transient,
// and not a lost connection).
func TestReplyReasonsRefineTheCode(t *testing.T) {
	cases := []struct {
		err       *amqp091.Error
		want      error
		permanent bool
		text      string
	}{
		{&amqp091.Error{Code: 404, Reason: "NOT_FOUND - home node 'n' of durable queue 'q' in vhost '/' is down or inaccessible", Server: true}, nil, false, ""},
		{&amqp091.Error{Code: 530, Reason: "NOT_ALLOWED - number of channels opened (12) has reached the negotiated channel_max (12)", Server: true}, nil, false, ""},
		{&amqp091.Error{Code: 530, Reason: "NOT_ALLOWED - vhost v not found", Server: true}, ErrNotFound, true, ""},
		{&amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 9 is larger than configured max size 4", Server: true}, ErrMessageTooLarge, true, ""},
		{&amqp091.Error{Code: 405, Reason: "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q' in vhost '/'", Server: true}, ErrPreconditionFailed, true, "Queue.Exclusive"},
		{amqp091.ErrChannelMax, ErrChannelLimit, false, ""},
	}
	for _, c := range cases {
		err := classifyBroker(c.err)
		if IsPermanent(err) != c.permanent || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%v: %v (permanent %v), want %v", c.err, err, IsPermanent(err), c.want)
		}
		if c.text != "" && !containsText(err, c.text) {
			t.Errorf("%v: %v does not name %s", c.err, err, c.text)
		}
	}
	if isConnectionFault(amqp091.ErrChannelMax) {
		t.Error("channel_max reached is taken for a lost connection: it would be retried in silence")
	}
}

func containsText(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
