package core

import (
	"strings"
	"time"
)

// Defaults of the knobs of Config, each documented on its field. Each
// applies where the field is zero.
const (
	defaultHeartbeat                = 10 * time.Second
	defaultDialTimeout              = 10 * time.Second
	defaultChannels                 = 4
	defaultMaxInFlight              = 512
	defaultPublishTimeout           = 30 * time.Second
	defaultConfirmTimeout           = 15 * time.Second
	defaultCloseTimeout             = 10 * time.Second
	defaultAckBatch                 = 32
	defaultAckBatchWait             = 10 * time.Millisecond
	defaultMaxMessageSize           = 512 << 20 // RabbitMQ's hard cap on max_message_size: no broker takes more
	defaultReconnectWait            = 100 * time.Millisecond
	defaultReconnectMaxWait         = 3 * time.Second
	defaultReconnectMultiplier      = 2.0
	defaultReconnectJitter          = 0.5
	defaultPublisherConnectionName  = "watermill-resilient-publisher"
	defaultSubscriberConnectionName = "watermill-resilient-subscriber"
	maxShortString                  = 255 // AMQP shortstr: names and routing keys
)

// NoJitter as Backoff.Jitter turns jitter off (0 means the default).
const NoJitter = -1

// Config configures a Publisher or a Subscriber. AMQP is the front door's
// own configuration: watermill-amqp's Config, v2 (package resilient) or v3
// (package resilientv3), which the door reads into a Wiring; the other
// fields are the knobs of this package, the same through either door.
// Each knob is optional: zero means its default.
//
// A Subscriber uses FailoverURIs, FailoverInOrder, ConnectionName,
// Heartbeat, DialTimeout, Reconnect, RetryOnFailedConnect, PublishTimeout
// (which bounds how long SubscribeInitialize waits for a connection),
// ConfirmTimeout (which bounds the broker's replies), CloseTimeout,
// AckBatch, AckBatchWait, OnEvent and OnStateChange; it ignores the
// others (Channels, MaxInFlight, MaxNackRetries, MaxMessageSize,
// UUIDInMessageIDOnly and NoQueueDeletionGuard are the publisher's).
type Config[A any] struct {
	// AMQP is watermill-amqp's Config: where to connect, the Marshaler,
	// and how topics map to exchanges, queues and routing keys.
	AMQP A

	// FailoverURIs are the other brokers to connect to, e.g. the other
	// nodes of a cluster. Each dial round tries every URI once, in turn,
	// starting after the one last connected to, so that a node that just
	// died is tried last.
	FailoverURIs []string
	// FailoverInOrder keeps AMQP.Connection.AmqpURI first and FailoverURIs
	// in their order. By default the list is shuffled once per Publisher or
	// Subscriber, as RabbitMQ advises for clusters, so that a fleet of
	// clients spreads over the nodes rather than all landing on the first.
	FailoverInOrder bool

	// ConnectionName is shown in RabbitMQ's management UI. Default: the
	// "connection_name" property of AMQP.Connection.AmqpConfig if it is a
	// non-empty string, else "watermill-resilient-publisher" for a Publisher,
	// "watermill-resilient-subscriber" for a Subscriber.
	ConnectionName string
	// Heartbeat is the AMQP heartbeat interval, at least 1 s; a silent peer is
	// declared dead after about 1.5 intervals (amqp091-go's read deadline).
	// Default 10 s, unless AMQP.Connection.AmqpConfig sets one.
	Heartbeat time.Duration
	// DialTimeout bounds each TCP connect and AMQP handshake. Default 10 s.
	DialTimeout time.Duration

	// Reconnect is the backoff between dial attempts. Zero fields fall back to
	// AMQP.Connection.Reconnect when set, then to Backoff's defaults.
	Reconnect Backoff
	// RetryOnFailedConnect makes NewPublisher (NewSubscriber) return at once
	// when the broker cannot be reached, and connect in the background
	// (Publish and Subscribe wait, bounded as always). Default false: they
	// fail. Wrong credentials, a missing vhost or a bad URI fail them in
	// either case.
	RetryOnFailedConnect bool

	// Channels is the number of confirm-mode channels (publishing lanes), each
	// owned by one goroutine. Default AMQP.Publish.ChannelPoolSize, else 4.
	Channels int
	// MaxInFlight bounds the unconfirmed messages per channel. Default 512.
	MaxInFlight int

	// PublishTimeout bounds a whole Publish call, reconnects and re-sends
	// included, on top of each message's Context(). Default 30 s.
	PublishTimeout time.Duration
	// ConfirmTimeout is how long a channel may leave its oldest message
	// unconfirmed (while the connection is not blocked) before it is deemed
	// stuck: it is replaced and its messages are re-sent on a fresh channel
	// at once (its close is not waited for). A channel that owes confirms
	// and confirms nothing for a quarter of it (at least 1 s) is replaced
	// the same way. A connection on which nothing was confirmed for twice
	// that (half of ConfirmTimeout, at least 2 s), on fresh channels too, is
	// left for another of the URIs, when there is one: its node answers but
	// cannot confirm (the minority side of a network partition). It also
	// bounds each reply the broker owes (a channel opened or closed, a
	// declaration, a consumer started), at least two heartbeat intervals:
	// past it the connection is deemed broken and replaced. A quarter of
	// it bounds a consumer's attach: one unanswered by then is tried again
	// on a fresh channel (twice as long after each one the broker
	// answered after all: a slow broker, not a stuck one). A fifth of
	// it, at least 1 s, bounds a pulse on a link gone silent while
	// confirms are owed, or while a consumer has had no delivery for 0.5 s
	// (see the package doc). While the broker answers slowly (its confirms
	// and pulses on the connection take more than a quarter of these
	// bounds), the time-out, the stall and pulse bounds grow to four times
	// its smoothed latency, at most four times their configured values: a
	// re-send only adds to a loaded broker's work. At least 100 ms; default
	// 15 s.
	ConfirmTimeout time.Duration
	// CloseTimeout bounds how long Close waits for in-flight publishes.
	// Default 10 s.
	CloseTimeout time.Duration
	// MaxNackRetries bounds how many times a message the broker nacked is
	// re-sent before it fails with ErrNacked. A nack is the broker refusing
	// for now (a quorum queue electing a leader after a node loss, a full
	// queue with x-overflow reject-publish), so by default (0) a nacked
	// message is re-sent, with exponential backoff from 50 ms to 2 s, for as
	// long as its bounds allow (its Context(), PublishTimeout), and fails
	// with ErrNotConfirmed (matching ErrNacked too) when they end. A positive
	// value caps the re-sends; -1 fails a message at its first nack.
	MaxNackRetries int
	// MaxMessageSize rejects larger bodies before sending, with
	// ErrMessageTooLarge (the whole Publish call fails, nothing sent, as for
	// any invalid message). Default 512 MiB: RabbitMQ's hard cap, above
	// which no broker of either line takes a message, so the default never
	// refuses what the broker would take. The broker's own limit
	// (max_message_size: 128 MiB by default on RabbitMQ 3.x, 16 MiB on 4.x,
	// set by the operator, possibly per node) is not told to clients; each
	// connection learns it instead: a body larger than any the broker
	// confirmed on that connection goes alone on its channel, so that a
	// refusal costs no other message a re-send, and once the broker has
	// refused one (naming its limit), larger bodies fail at once with
	// ErrMessageTooLarge, before they are sent, and alone. Set it to the
	// broker's limit to fail such messages before the first refusal.
	MaxMessageSize int
	// UUIDInMessageIDOnly sends each message's watermill UUID in its AMQP
	// message_id only, leaving out the header watermill-amqp's Marshaler
	// repeats it in (_watermill_message_uuid, or the DefaultMarshaler's
	// MessageUUIDHeaderKey): the broker parses and stores every header
	// table, and a message whose only header that was goes without a
	// table at all. Every other header, so every metadata entry, is sent
	// as before, and this package's Subscriber, which takes the UUID from
	// message_id when the header is missing, hands its handlers the same
	// message either way. Turn it on when every consumer of the topics is
	// this package's Subscriber, or reads the UUID from message_id.
	// Default false, because watermill-amqp's own subscriber (v2 and v3)
	// reads it from the header only: its handlers would get every message
	// with an empty UUID (the metadata intact). The header stays where
	// message_id does not carry the UUID (a Marshaler that sets a
	// message_id of its own). A Subscriber ignores it.
	UUIDInMessageIDOnly bool
	// NoQueueDeletionGuard publishes to the publisher's own queues (a queue
	// config: the default exchange, the queue's name as routing key)
	// without the mandatory flag. By default they are published mandatory,
	// so that a queue deleted under the live connection (an operator, a
	// policy, an expiry) returns the message, which is then declared again
	// and re-sent, instead of the broker confirming and dropping it. That
	// costs nothing on RabbitMQ 4.x, nor on a quorum queue; but on RabbitMQ
	// 3.x a classic queue answers each mandatory message it takes with a
	// message of its own to the publishing channel, which ignores it, and
	// the queue, usually the broker's bottleneck, loses 5 to 13 % of its
	// throughput with many publishers (see the README's "What mandatory
	// costs the broker"). Turn it on only on RabbitMQ 3.x, for classic
	// queues nothing deletes: with it, a queue deleted under a live
	// connection loses, confirmed, every message published to it until
	// something declares it again (a subscriber attaching, or this
	// publisher after its next reconnect). Still published mandatory: an
	// exclusive queue, a queue its own arguments delete (Queue.AutoDelete,
	// x-expires; not one a policy expires), and any message when
	// AMQP.Publish.Mandatory is set. Default false. A Subscriber ignores
	// it.
	NoQueueDeletionGuard bool

	// AckBatch is how many of the handler's acks a Subscriber may hold back
	// and send as one basic.ack with multiple set, which acks every
	// delivery of the channel up to the last: one frame for the broker to
	// handle instead of one per message (on a quorum queue, one Raft
	// command). At most half the prefetch count (Consume.Qos.PrefetchCount)
	// is held, so that the broker keeps delivering meanwhile: with
	// watermill-amqp's prefetch of 1, every ack goes at once. Held acks go
	// out after AckBatchWait, as soon as no delivery is ready when the
	// handler is done (it is idle), before a nack, and when the consumer
	// stops while its channel lives (Close, the subscription's context, an
	// attach again). At-least-once is kept: when the channel dies, or the
	// connection is cut, before its acks went, the broker delivers those
	// messages again (at most AckBatch duplicates per channel and fault).
	// Default 32; 1 sends each ack at once.
	AckBatch int
	// AckBatchWait is how long a Subscriber may hold an ack back (see
	// AckBatch). Default 10 ms.
	AckBatchWait time.Duration

	// OnEvent, when set, is told what the publisher or subscriber does
	// (Publish calls, confirms, nacks, re-sends, state changes, reconnects,
	// deliveries), inline, for metrics: see Event, and package metrics for
	// Prometheus. It must return quickly and never block.
	OnEvent func(Event)

	// OnStateChange, when set, is called on each connection state change, in
	// order, on one goroutine owned by the publisher or subscriber (never
	// under its locks). A slow callback delays later callbacks, never
	// publishing or consuming; past 64
	// pending changes the oldest are dropped. It must not call Close, which
	// waits for the callbacks to finish.
	OnStateChange func(StateChange)
}

// ValidatePublisher reports every problem of cfg, read through w, for a
// Publisher, at once; ValidateSubscriber for a Subscriber. The front doors'
// Config.Validate call them. Errors match ErrConfig and never contain a
// password.
func ValidatePublisher[A any](cfg Config[A], w Wiring) error {
	return newSettings(cfg, w, defaultPublisherConnectionName).validate(true)
}

// ValidateSubscriber: see ValidatePublisher.
func ValidateSubscriber[A any](cfg Config[A], w Wiring) error {
	return newSettings(cfg, w, defaultSubscriberConnectionName).validate(false)
}

// uriProblem names what amqp091-go found wrong with a URI, without quoting
// any of it.
func uriProblem(err error) string {
	text := err.Error()
	for _, known := range []string{"Bad scheme", "invalid port", "missing protocol scheme", "invalid character", "invalid URL escape"} {
		if strings.Contains(text, known) {
			return strings.ToLower(known)
		}
	}
	return "malformed"
}
