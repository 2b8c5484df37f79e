package core

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func TestClassifyBroker(t *testing.T) {
	cases := []struct {
		err       error
		want      error
		permanent bool
	}{
		{&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'x' in vhost '/'", Server: true}, ErrNotFound, true},
		{&amqp091.Error{Code: 403, Reason: "ACCESS_REFUSED - access to exchange 'x'", Server: true}, ErrAccessRefused, true},
		{amqp091.ErrCredentials, ErrAccessRefused, true},
		{&amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - inequivalent arg 'durable'", Server: true}, ErrPreconditionFailed, true},
		{&amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 9 is larger than configured max size 4", Server: true}, ErrMessageTooLarge, true},
		{&amqp091.Error{Code: 530, Reason: "NOT_ALLOWED - vhost v not found", Server: true}, ErrNotFound, true},
		{&amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED - shutdown", Server: true}, nil, false},
		// A classic queue whose node is away (3.10) or stopping (4.0): it comes back.
		{&amqp091.Error{Code: 404, Reason: "NOT_FOUND - home node 'q1@localhost' of durable queue 'q' in vhost '/' is down or inaccessible", Server: true}, nil, false},
		{&amqp091.Error{Code: 404, Reason: "NOT_FOUND - queue 'q' in vhost '/' process is stopped by supervisor", Server: true}, nil, false},
		// A connection limit passes: not permanent.
		{&amqp091.Error{Code: 530, Reason: "NOT_ALLOWED - connection limit (10) is reached", Server: true}, nil, false},
		// A reset socket, as amqp091-go reports it: never permanent.
		{&amqp091.Error{Code: 501, Reason: "write: connection reset by peer"}, nil, false},
		{fmt.Errorf("wrapped: %w", &amqp091.Error{Code: 404, Reason: "NOT_FOUND", Server: true}), ErrNotFound, true},
	}
	for _, c := range cases {
		got := classifyBroker(c.err)
		if c.want != nil && !errors.Is(got, c.want) {
			t.Errorf("%v: got %v, want %v", c.err, got, c.want)
		}
		var ae *amqp091.Error
		if !errors.As(got, &ae) {
			t.Errorf("%v: the *amqp091.Error is no longer reachable", c.err)
		}
		if IsPermanent(got) != c.permanent {
			t.Errorf("%v: permanent %v, want %v", c.err, IsPermanent(got), c.permanent)
		}
	}
}

func TestBlameFor(t *testing.T) {
	m := func(exchange string, size int, userID string) *outgoing {
		o := &outgoing{exchange: exchange}
		o.publishing.Body = make([]byte, size)
		o.publishing.UserId = userID
		return o
	}
	b := blameFor(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'gone' in vhost '/'", Server: true})
	if b.culprit == nil || b.exchange != "gone" || !b.culprit(m("gone", 1, "")) || b.culprit(m("other", 1, "")) {
		t.Fatalf("404 should blame exchange 'gone' only, got exchange %q", b.exchange)
	}
	b = blameFor(&amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - message size 9 is larger than configured max size 4", Server: true})
	if b.culprit == nil || !b.culprit(m("", 9, "")) || b.culprit(m("", 4, "")) {
		t.Fatal("406 message size should blame the bodies over 4 bytes only")
	}
	b = blameFor(&amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'", Server: true})
	if b.culprit == nil || !b.culprit(m("", 1, "mallory")) || b.culprit(m("", 1, "")) || b.culprit(m("", 1, "guest")) {
		t.Fatal("406 user_id should blame the messages claiming to be mallory only")
	}
	m2 := func(exchange, key string) *outgoing { return &outgoing{exchange: exchange, routingKey: key} }
	b = blameFor(&amqp091.Error{Code: 403, Reason: "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'", Server: true})
	if b.culprit == nil || !b.culprit(m2("", "q")) || b.culprit(m2("x", "q")) || b.exchange != "" {
		t.Fatal("403 on amq.default should blame the messages to the default exchange, and suspect no exchange")
	}
	b = blameFor(&amqp091.Error{Code: 403, Reason: "ACCESS_REFUSED - write access to topic 'denied.x' in exchange 'events' in vhost '/' refused for user 'u'", Server: true})
	if b.culprit == nil || !b.culprit(m2("events", "denied.x")) || b.culprit(m2("events", "allowed.x")) || b.exchange != "" {
		t.Fatal("403 on a topic should blame that routing key on that exchange only, and suspect no exchange")
	}
	for _, unnamed := range []error{
		&amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED", Server: true},
		&amqp091.Error{Code: 406, Reason: "PRECONDITION_FAILED - something else", Server: true},
		errConnectionLost,
	} {
		if b := blameFor(unnamed); b.culprit != nil {
			t.Fatalf("%v blames a message", unnamed)
		}
	}
}

func TestPublishErrorText(t *testing.T) {
	ids := make([]string, 12)
	for i := range ids {
		ids[i] = fmt.Sprintf("id-%d", i)
	}
	err := &PublishError{Topic: "orders", Unconfirmed: ids, Err: ErrNacked}
	text := err.Error()
	if !strings.Contains(text, "id-0") || !strings.Contains(text, "and 2 more") || !strings.Contains(text, "12 message(s)") {
		t.Fatalf("text: %s", text)
	}
	if IsPermanent(err) || !errors.Is(err, ErrNacked) {
		t.Fatal("a nack is temporary")
	}
}

func TestRedaction(t *testing.T) {
	const uri = "amqp://user:Sup3r-S3cret@broker:5672/vhost"
	if got := redactURI(uri); strings.Contains(got, "Sup3r-S3cret") || !strings.Contains(got, "broker:5672") {
		t.Fatalf("redactURI: %s", got)
	}
	err := redactErr(fmt.Errorf("dial %s: refused (password Sup3r-S3cret)", uri), uri)
	if strings.Contains(err.Error(), "Sup3r-S3cret") {
		t.Fatalf("redactErr: %v", err)
	}
	if got := redactText("parse amqp://u:p4ss@h:x/: bad port", "amqp://u:p4ss@h:x/"); strings.Contains(got, "p4ss") {
		t.Fatalf("redactText on an unparsable URI: %s", got)
	}
}

// session.channelErr counts amqp091-go's own errors as a lost connection
// unless they are permanent: a channel closed under an operation
// (amqp091.ErrClosed) must be one of them, so that a subscription attaches
// again rather than failing.
func TestClosedChannelIsNotPermanent(t *testing.T) {
	if amqp091.ErrClosed.Server || isPermanentBroker(amqp091.ErrClosed) {
		t.Fatalf("amqp091.ErrClosed (server %v) classified permanent: %v", amqp091.ErrClosed.Server, classifyBroker(amqp091.ErrClosed))
	}
}
