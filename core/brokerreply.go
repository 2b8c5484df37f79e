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

// classifyBroker maps an AMQP error to this package's sentinels, keeping the
// original *amqp091.Error reachable through errors.As.
func classifyBroker(err error) error {
	var ae *amqp091.Error
	if !errors.As(err, &ae) {
		return err
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
	case amqp091.AccessRefused:
		return fmt.Errorf("%w: %w", ErrAccessRefused, err)
	case amqp091.NotFound:
		if strings.Contains(ae.Reason, "down or inaccessible") {
			// "home node 'n' of durable queue 'q' in vhost '/' is down or
			// inaccessible": a cluster node is away; it comes back.
			return err
		}
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case amqp091.PreconditionFailed:
		if strings.Contains(ae.Reason, "message size") {
			return fmt.Errorf("%w: %w", ErrMessageTooLarge, err)
		}
		return fmt.Errorf("%w: %w", ErrPreconditionFailed, err)
	case amqp091.NotAllowed:
		switch {
		case strings.Contains(ae.Reason, "limit"):
			// "connection limit (n) is reached", "cannot be queried": wait.
			return err
		case strings.Contains(ae.Reason, "not found"):
			// "NOT_ALLOWED - vhost x not found" on connection.open.
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return fmt.Errorf("%w: %w", ErrAccessRefused, err)
	case amqp091.FrameError, amqp091.SyntaxError, amqp091.CommandInvalid:
		return fmt.Errorf("%w: %w", ErrInvalidName, err)
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
		return !ae.Server && !isPermanentBroker(ae)
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
