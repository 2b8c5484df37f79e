package core

import (
	"errors"
	"strconv"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// blame reads the reason the broker gave for closing a publishing channel,
// and tells which of the messages in flight on it caused it.
type blame struct {
	// culprit reports whether m is one the reason names; nil when it names
	// none (then only sending the suspects one at a time can tell).
	culprit func(m *outgoing) bool
	// exchange is the exchange the reason names, if any.
	exchange string
	// sizeLimit is the broker's max_message_size the reason names, if any.
	sizeLimit int
}

// blameFor reads a channel's close reason.
func blameFor(cause error) blame {
	var ae *amqp091.Error
	if !errors.As(cause, &ae) || !ae.Server {
		return blame{}
	}
	switch ae.Code {
	case amqp091.NotFound, amqp091.AccessRefused:
		name, ok := quotedName(ae.Reason, "exchange '")
		if !ok {
			return blame{}
		}
		if name == "amq.default" {
			name = "" // the default exchange, as messages name it
		}
		// "ACCESS_REFUSED - write access to topic 'a.b' in exchange 'x' in
		// vhost '/' refused for user 'u'": that routing key only, and the
		// exchange is fine.
		if key, ok := quotedName(ae.Reason, "access to topic '"); ok {
			return blame{culprit: func(m *outgoing) bool { return m.exchange == name && m.routingKey == key }}
		}
		// "NOT_FOUND - no exchange 'x' in vhost '/'", "ACCESS_REFUSED -
		// access to exchange 'x' in vhost '/' refused for user 'u'"
		b := blame{culprit: func(m *outgoing) bool { return m.exchange == name }}
		if name != "" {
			b.exchange = name // checked on a channel of its own from now on
		}
		return b
	case amqp091.PreconditionFailed:
		// "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024"
		if i := strings.LastIndex(ae.Reason, "max size "); i >= 0 {
			limit, err := strconv.Atoi(strings.TrimSpace(ae.Reason[i+len("max size "):]))
			if err != nil {
				return blame{}
			}
			return blame{culprit: func(m *outgoing) bool { return len(m.publishing.Body) > limit }, sizeLimit: limit}
		}
		// "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'"
		if name, ok := quotedName(ae.Reason, "user_id property set to '"); ok {
			return blame{culprit: func(m *outgoing) bool { return m.publishing.UserId == name }}
		}
		// "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
		if value, ok := quotedName(ae.Reason, "invalid expiration '"); ok {
			return blame{culprit: func(m *outgoing) bool { return m.publishing.Expiration == value }}
		}
	}
	return blame{}
}

// quotedName returns the single-quoted name that follows prefix (which ends
// with the opening quote) in a broker's reply text, e.g. "x" in
// "NOT_FOUND - no exchange 'x' in vhost '/'" after "exchange '".
func quotedName(reason, prefix string) (string, bool) {
	start := strings.Index(reason, prefix)
	if start < 0 {
		return "", false
	}
	rest := reason[start+len(prefix):]
	end := strings.IndexByte(rest, '\'')
	if end < 0 {
		return "", false
	}
	return rest[:end], true
}
