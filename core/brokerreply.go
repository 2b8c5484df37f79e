package core

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// What the broker's replies mean: an AMQP error classified into this
// package's sentinels, transient or permanent, or a fault of the
// connection itself. blame.go reads the close reasons that name a culprit.

// replyMeaning is what a reply code means to a caller, decided for every
// code AMQP 0-9-1 defines (amqp091-go's constants, 311 to 541), so that
// none is retried to a deadline, or failed for good, by accident: a
// permanent sentinel, or nil for a transient code (the operation is worth
// doing again, on a new channel or connection). classifyBroker refines some
// by the broker's reason text.
type replyMeaning struct {
	name      string
	permanent error // nil: transient
	why       string
}

var replyMeanings = map[int]replyMeaning{
	// Soft (channel) errors.
	amqp091.ContentTooLarge: {"CONTENT_TOO_LARGE", nil,
		"the spec says the server cannot take it at present, retry later; RabbitMQ sends 406 for max_message_size instead"},
	amqp091.NoRoute: {"NO_ROUTE", ErrUnroutable,
		"a basic.return code; as an error, nothing routes the message until the topology changes"},
	amqp091.NoConsumers: {"NO_CONSUMERS", ErrUnroutable,
		"a basic.return code (immediate, which the publisher refuses); as an error, as NO_ROUTE"},
	amqp091.AccessRefused: {"ACCESS_REFUSED", ErrAccessRefused,
		"the user may not do this (permissions, an exclusive consumer or queue in use elsewhere)"},
	amqp091.NotFound: {"NOT_FOUND", ErrNotFound,
		"no such exchange or queue; except a queue whose home node is down (transient, by its reason)"},
	amqp091.ResourceLocked: {"RESOURCE_LOCKED", ErrPreconditionFailed,
		"an exclusive queue held by another connection, or declared with another exclusive flag: it stays so while that connection lives"},
	amqp091.PreconditionFailed: {"PRECONDITION_FAILED", ErrPreconditionFailed,
		"a declaration unlike what exists, or a message over max_message_size (ErrMessageTooLarge, by its reason)"},
	// Hard (connection) errors.
	amqp091.ConnectionForced: {"CONNECTION_FORCED", nil,
		"an operator or a shutdown closed the connection: reconnect; a deleted vhost shows at the redial (530)"},
	amqp091.InvalidPath: {"INVALID_PATH", ErrNotFound,
		"an unknown virtual host"},
	amqp091.FrameError: {"FRAME_ERROR", ErrInvalidName,
		"the broker could not decode a frame we sent (a name or value AMQP cannot carry); amqp091-go's own socket errors are 501 too, and are not the broker's (Server false): those are connection faults"},
	amqp091.SyntaxError: {"SYNTAX_ERROR", ErrInvalidName,
		"a field value the broker refuses (an illegal name)"},
	amqp091.CommandInvalid: {"COMMAND_INVALID", ErrInvalidName,
		"a method the broker refuses in this state, for what we sent"},
	amqp091.ChannelError: {"CHANNEL_ERROR", nil,
		"a channel not correctly opened (a race with its closing): open another; amqp091-go's ErrChannelMax is 504 too, and is not transient (ErrChannelLimit)"},
	amqp091.UnexpectedFrame: {"UNEXPECTED_FRAME", nil,
		"a frame the broker did not expect (a race with a closing channel): on a new connection it goes"},
	amqp091.ResourceError: {"RESOURCE_ERROR", nil,
		"the broker lacks resources for now"},
	amqp091.NotAllowed: {"NOT_ALLOWED", ErrAccessRefused,
		"not allowed; a limit reached (connections, channels, queues) is transient and a missing vhost ErrNotFound, by their reasons"},
	amqp091.NotImplemented: {"NOT_IMPLEMENTED", ErrConfig,
		"the configuration asks what this broker or queue type does not implement (a global Qos on a quorum queue)"},
	amqp091.InternalError: {"INTERNAL_ERROR", nil,
		"the broker failed internally (a queue process crashed): try again"},
}

// classifyBroker maps an AMQP error to this package's sentinels, keeping the
// original *amqp091.Error reachable through errors.As. Every code has a
// meaning in replyMeanings; an unknown code is transient.
func classifyBroker(err error) error {
	var ae *amqp091.Error
	if !errors.As(err, &ae) || errors.Is(err, ErrChannelLimit) {
		return err
	}
	if ae == amqp091.ErrChannelMax || ae.Code == amqp091.ChannelError && !ae.Server && ae.Reason == amqp091.ErrChannelMax.Reason {
		return fmt.Errorf("%w: %w", ErrChannelLimit, err)
	}
	// amqp091-go reports its own socket errors as *Error too (a reset link
	// is a 501 FRAME_ERROR with Server false): only the broker's replies, and
	// the library's credential sentinels, say anything about our input.
	if !ae.Server && ae.Code != amqp091.AccessRefused {
		return err
	}
	if refused := transientQueueRefused(ae); refused != nil {
		return fmt.Errorf("%w: %w", refused, err)
	}
	switch ae.Code {
	case amqp091.NotFound:
		if strings.Contains(ae.Reason, "down or inaccessible") || strings.Contains(ae.Reason, "process is stopped by supervisor") {
			// "home node 'n' of durable queue 'q' in vhost '/' is down or
			// inaccessible": a cluster node is away; it comes back.
			// "queue 'q' in vhost '/' process is stopped by supervisor":
			// the queue exists but its process is stopped, as RabbitMQ 4.0
			// says of a classic queue whose node is shutting down (seen by
			// cluster/ in a graceful stop; it comes back with the node).
			return err
		}
	case amqp091.PreconditionFailed:
		if strings.Contains(ae.Reason, "message size") {
			return fmt.Errorf("%w: %w", ErrMessageTooLarge, err)
		}
	case amqp091.ResourceLocked:
		return fmt.Errorf("%w: another connection holds the queue as exclusive, or declared it with another exclusive flag than this config's Queue.Exclusive: %w", ErrPreconditionFailed, err)
	case amqp091.NotAllowed:
		switch {
		case strings.Contains(ae.Reason, "limit") || strings.Contains(ae.Reason, "channel_max"):
			// "connection limit (n) is reached", "cannot be queried",
			// "number of channels opened (n) has reached the negotiated
			// channel_max (m)": wait.
			return err
		case strings.Contains(ae.Reason, "not found"):
			// "NOT_ALLOWED - vhost x not found" on connection.open.
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
	}
	if m, ok := replyMeanings[ae.Code]; ok && m.permanent != nil {
		return fmt.Errorf("%w: %w", m.permanent, err)
	}
	return err
}

// isConnectionFault reports whether err says the connection or the channel
// under an operation broke (a network error, or amqp091-go's own error for
// a closed connection or channel), as opposed to a reply of the broker's or
// a fault of the caller's: an operation that failed so is worth doing again
// on the next connection.
func isConnectionFault(err error) bool {
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return !ae.Server && !isPermanentBroker(ae) && !errors.Is(classifyBroker(ae), ErrChannelLimit)
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, errConnectionLost)
}

// isTransientReply reports whether err is a reply of the broker's that says
// to try again later, e.g. that a cluster node hosting the queue is away.
func isTransientReply(err error) bool {
	var ae *amqp091.Error
	return errors.As(err, &ae) && ae.Server && !isPermanentBroker(err)
}

// isPermanentBroker reports whether an AMQP error closing a channel or a
// connection is one that reconnecting will not fix.
func isPermanentBroker(err error) bool {
	return IsPermanent(classifyBroker(err))
}

// transientQueueRefused names the setting to change when the broker refused
// to declare a transient (non-durable, non-exclusive) queue: deprecated in
// RabbitMQ 4.0 and refused from 4.3 on, or earlier where the operator set
// deprecated_features.permit.transient_nonexcl_queues = false. RabbitMQ
// 4.0 refuses it with a 541 INTERNAL_ERROR that closes the whole
// connection ("Feature `transient_nonexcl_queues` is deprecated. Its use is
// not permitted ..."): no retry can help, and each one would cost the
// connection again.
func transientQueueRefused(ae *amqp091.Error) error {
	if !ae.Server || !strings.Contains(ae.Reason, "transient_nonexcl_queues") {
		return nil
	}
	return fmt.Errorf("%w: the broker refuses transient (non-durable, non-exclusive) queues, deprecated since RabbitMQ 4.0 and refused from 4.3: "+
		"set Queue.Durable (watermill-amqp's durable configs do), or Queue.Exclusive for a queue of one subscriber's own", ErrConfig)
}

// isTransientQueueRefusal reports whether err is the broker's refusal of a
// transient queue.
func isTransientQueueRefusal(err error) bool {
	var ae *amqp091.Error
	return errors.As(err, &ae) && transientQueueRefused(ae) != nil
}
