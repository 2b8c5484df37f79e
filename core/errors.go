package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error returned by this package matches one of them
// with errors.Is, so callers (and the retry middleware) can tell a fault that
// retrying can fix from one it cannot. Use [IsPermanent] rather than listing
// them yourself.
var (
	// ErrClosed: the Publisher or Subscriber was closed. Permanent.
	ErrClosed = errors.New("resilient: closed")
	// ErrConfig: the configuration is invalid (bad URI, missing marshaler,
	// unsupported option). Permanent.
	ErrConfig = errors.New("resilient: invalid configuration")
	// ErrNilMessage: a nil *message.Message was passed to Publish. Permanent.
	ErrNilMessage = errors.New("resilient: nil message")
	// ErrMarshal: the configured Marshaler failed, or produced properties or
	// headers AMQP cannot carry. Permanent.
	ErrMarshal = errors.New("resilient: cannot marshal message")
	// ErrInvalidName: a topic, exchange, queue or routing key that AMQP cannot
	// carry (empty topic, longer than 255 bytes, not UTF-8). Permanent.
	ErrInvalidName = errors.New("resilient: invalid name")
	// ErrMessageTooLarge: the body exceeds Config.MaxMessageSize or the
	// broker's max_message_size (refused by the broker, or known from its
	// refusal of another on the same connection), or the properties and
	// headers exceed the connection's frame_max. Permanent.
	ErrMessageTooLarge = errors.New("resilient: message too large")
	// ErrTLS: the TLS handshake failed on a certificate: the broker's cannot
	// be verified (unknown authority, wrong host name, expired), or the
	// broker refused ours. Permanent: redialing cannot fix it; the error
	// names the x509 cause.
	ErrTLS = errors.New("resilient: TLS certificate rejected")
	// ErrAccessRefused: the broker refused the credentials, the vhost, or an
	// operation on a resource (AMQP 403). Permanent.
	ErrAccessRefused = errors.New("resilient: access refused")
	// ErrNotFound: the exchange or vhost does not exist (AMQP 404). Permanent.
	ErrNotFound = errors.New("resilient: not found")
	// ErrPreconditionFailed: a declare conflicts with what exists on the
	// broker, e.g. a queue declared with other arguments (AMQP 406). Permanent.
	ErrPreconditionFailed = errors.New("resilient: precondition failed")
	// ErrUnroutable: a mandatory message matched no queue (basic.return).
	// Permanent for this publish: nothing will route it until the topology
	// changes.
	ErrUnroutable = errors.New("resilient: message unroutable")
	// ErrNacked: the broker nacked the message, and it was not re-sent:
	// more than a positive Config.MaxNackRetries times, or once with -1.
	// With the default, a message last nacked fails with ErrNotConfirmed
	// when its bounds end, and matches ErrNacked too. Transient.
	ErrNacked = errors.New("resilient: message nacked by broker")
	// ErrChannelLimit: no channel could be opened, the connection has as
	// many as the broker's channel_max allows (each subscription holds one,
	// each publishing lane one). Transient: a channel may close; a running
	// subscription or lane keeps trying, and says so (a log line, a
	// ChannelRefused event, Health.Degraded).
	ErrChannelLimit = errors.New("resilient: channel_max reached")
	// ErrNotConfirmed: the message was not confirmed before its deadline
	// (its Context, Config.PublishTimeout, or Close). It may or may not have
	// reached the broker. Transient when a deadline ran out; IsPermanent
	// when it also matches ErrClosed (Close gave up on it) or
	// context.Canceled (the caller gave up).
	ErrNotConfirmed = errors.New("resilient: message not confirmed")
)

// errConnectionLost: the connection, or the channel under an operation,
// was lost (or deemed broken and cut): what was in flight is re-sent
// after the reconnect.
var errConnectionLost = errors.New("connection lost")

var permanentErrors = []error{
	ErrClosed, ErrConfig, ErrNilMessage, ErrMarshal, ErrInvalidName, ErrTLS,
	ErrMessageTooLarge, ErrAccessRefused, ErrNotFound, ErrPreconditionFailed,
	ErrUnroutable,
}

// IsPermanent reports whether err is a fault that retrying the same publish
// cannot fix. Context cancellation counts as permanent: the caller gave up.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) {
		return true
	}
	for _, p := range permanentErrors {
		if errors.Is(err, p) {
			return true
		}
	}
	return false
}

// PublishError is what Publish returns when not every message was confirmed.
// Messages not listed in Unconfirmed were confirmed by the broker.
type PublishError struct {
	Topic string
	// Unconfirmed holds the watermill UUIDs of the messages the broker did not
	// confirm, in the order they were passed to Publish.
	Unconfirmed []string
	// Err is the cause; when messages failed for different reasons, it is a
	// permanent one if there is any, so that IsPermanent errs on the side of
	// not retrying a publish that cannot succeed.
	Err error
}

func (e *PublishError) Error() string {
	ids := e.Unconfirmed
	suffix := ""
	if len(ids) > 10 {
		ids, suffix = ids[:10], fmt.Sprintf(" and %d more", len(e.Unconfirmed)-10)
	}
	what := fmt.Sprintf("publish to %q", e.Topic)
	if e.Topic == "" {
		what = "close"
	}
	return fmt.Sprintf("%s: %d message(s) not confirmed [%s%s]: %v",
		what, len(e.Unconfirmed), strings.Join(ids, " "), suffix, e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }
