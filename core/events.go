package core

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Event is something a Publisher or a Subscriber did, for metrics: package
// metrics turns events into Prometheus series. Config.OnEvent receives them
// inline, on the goroutine that did it (several at once: it must be safe
// for concurrent use), in the order that goroutine did them: it must return
// quickly, never block, and never call the Publisher or Subscriber. Give
// each Publisher and Subscriber an OnEvent of its own: events do not say
// which one sent them.
//
// Every Publish call of at least one message emits PublishStarted, then
// PublishDone, even one refused before anything is sent; MessagesFailed comes once per kind of
// failure (ErrorClass) with the first error of that kind. StateChanged
// comes for the first state (connecting) too. ConnectionLost's Err is the
// first sign amqp091-go saw: a broker that closes the connection and its
// socket at once may be seen as either.
type Event struct {
	Kind EventKind
	// Messages is how many messages the event concerns.
	Messages int
	// Duration is how long the Publish call took (PublishDone), or how long
	// the connection was away (Reconnected).
	Duration time.Duration
	// Err is why the Publish call or the messages failed (PublishDone,
	// MessagesFailed), or why the connection was lost (ConnectionLost). It
	// never contains a password; ErrorClass gives a bounded label for it.
	Err error
	// State is the new connection state (StateChanged).
	State State
	// Redelivered: the broker delivered the message before
	// (MessageDelivered).
	Redelivered bool
	// Handler is the name of the watermill Router handler the event is
	// about, "" outside a Router: the handler whose output the call
	// published (PublishDone), or that consumed the message (MessageAcked,
	// MessageNacked), read with message.HandlerNameFromCtx from the
	// message's Context() (the first of a call's; the last of acks sent
	// as one, AckBatch), as watermill's own metrics do.
	Handler string
}

// EventKind says what an Event reports.
type EventKind int

const (
	// PublishStarted: a Publish call of Messages messages started.
	PublishStarted EventKind = iota + 1
	// PublishDone: a Publish call of Messages messages returned, after
	// Duration, with Err (nil: all were confirmed).
	PublishDone
	// MessagesConfirmed: the broker confirmed Messages messages.
	MessagesConfirmed
	// MessagesNacked: the broker nacked Messages messages.
	MessagesNacked
	// MessagesReturned: Messages messages came back from the publisher's own
	// queue, which is declared again.
	MessagesReturned
	// MessagesResent: Messages messages are sent again (after a nack, a
	// return, or the loss of their channel or connection).
	MessagesResent
	// MessagesFailed: Messages messages failed for good, with Err.
	MessagesFailed
	// StateChanged: the connection entered State.
	StateChanged
	// ConnectionLost: the connection was lost, with Err.
	ConnectionLost
	// Reconnected: a connection is up again, Duration after the loss.
	Reconnected
	// MessageDelivered: the subscriber handed a message out.
	MessageDelivered
	// MessageAcked: the subscriber acked a message the handler acked.
	MessageAcked
	// MessageNacked: the subscriber nacked a message (the handler nacked it,
	// or it could not be unmarshaled).
	MessageNacked
	// ConsumerReattached: a subscription consumes again on a new channel:
	// after a loss (ConsumerLost), or of its own accord (no delivery for
	// five heartbeats, or a gap in delivery tags: see Subscriber).
	ConsumerReattached
	// ConsumerLost: the broker closed a subscription's channel or
	// cancelled its consumer (its queue deleted), or its connection died;
	// Err says why. What was not acked goes back to the
	// queue, and the subscription attaches again (ConsumerReattached).
	ConsumerLost
	// DeliveryLimitReached: the subscriber sent back to the queue (a nack
	// with requeue: the handler's, or its own for a message the Marshaler
	// cannot read) a message that had reached its quorum queue's delivery
	// limit, or lost its channel holding one: the broker drops it, or
	// dead-letters it when the queue has a dead-letter exchange. Err says
	// why (the count, the limit and where it comes from). Only what the
	// subscriber can know: the queue's x-delivery-limit and
	// x-dead-letter-exchange arguments in its config, RabbitMQ 4's default
	// of 20, the delivery's x-delivery-count; not a policy's limit.
	DeliveryLimitReached
	// ChannelRefused: a subscription could not attach, or a publishing lane
	// could not open its channel, because the connection has as many
	// channels as the broker's channel_max allows (Err matches
	// ErrChannelLimit). It keeps trying, with backoff; Health.Degraded says
	// so until it succeeds.
	ChannelRefused
)

func (k EventKind) String() string {
	switch k {
	case PublishStarted:
		return "publish_started"
	case PublishDone:
		return "publish_done"
	case MessagesConfirmed:
		return "messages_confirmed"
	case MessagesNacked:
		return "messages_nacked"
	case MessagesReturned:
		return "messages_returned"
	case MessagesResent:
		return "messages_resent"
	case MessagesFailed:
		return "messages_failed"
	case StateChanged:
		return "state_changed"
	case ConnectionLost:
		return "connection_lost"
	case Reconnected:
		return "reconnected"
	case MessageDelivered:
		return "message_delivered"
	case MessageAcked:
		return "message_acked"
	case MessageNacked:
		return "message_nacked"
	case ConsumerReattached:
		return "consumer_reattached"
	case ConsumerLost:
		return "consumer_lost"
	case DeliveryLimitReached:
		return "delivery_limit_reached"
	case ChannelRefused:
		return "channel_refused"
	}
	return "unknown"
}

// ErrorClass names the kind of err in a few words, for a metric label: the
// sentinel it matches ("not_confirmed", "nacked", "unroutable",
// "access_refused", "not_found", "precondition_failed", "message_too_large",
// "invalid_name", "nil_message", "marshal", "config", "tls", "closed",
// "channel_limit"), or,
// for why a connection was lost, "heartbeat" (the peer went silent),
// "network" (reset, refused, closed), "broker" (the broker closed it, e.g.
// an operator or a shutdown); "other" for the rest, "" for nil.
func ErrorClass(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range errorClasses {
		if errors.Is(err, c.sentinel) {
			return c.name
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return "heartbeat"
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		if ae.Server {
			return "broker"
		}
		if isTimeoutText(ae.Reason) {
			return "heartbeat"
		}
		return "network"
	}
	if isConnectionFault(err) {
		return "network"
	}
	return "other"
}

var errorClasses = []struct {
	sentinel error
	name     string
}{
	{ErrNotConfirmed, "not_confirmed"}, {ErrNacked, "nacked"}, {ErrUnroutable, "unroutable"},
	{ErrTLS, "tls"}, {ErrAccessRefused, "access_refused"}, {ErrNotFound, "not_found"},
	{ErrMessageTooLarge, "message_too_large"}, {ErrPreconditionFailed, "precondition_failed"},
	{ErrInvalidName, "invalid_name"}, {ErrNilMessage, "nil_message"}, {ErrMarshal, "marshal"},
	{ErrConfig, "config"}, {ErrClosed, "closed"}, {ErrChannelLimit, "channel_limit"},
}

// ErrorClasses lists every value ErrorClass returns for a non-nil error:
// the bounded set a metric label takes.
func ErrorClasses() []string {
	names := make([]string, 0, len(errorClasses)+4)
	for _, c := range errorClasses {
		names = append(names, c.name)
	}
	return append(names, "heartbeat", "network", "broker", "other")
}

// isTimeoutText: amqp091-go reports a read deadline that expired (a silent
// peer) as a FrameError whose reason is the socket error's text.
func isTimeoutText(reason string) bool { return strings.HasSuffix(reason, "i/o timeout") }
