package core

import (
	"crypto/tls"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Wiring is what the core needs of watermill-amqp's Config, in terms of its
// own: where to connect, how to marshal, how topics map to exchanges,
// queues and routing keys, and how to declare them. A front door (package
// resilient for watermill-amqp v2, resilientv3 for v3) reads its version's
// Config into one; the core knows neither version.
//
// Every field mirrors the watermill-amqp field named in its comment, which
// is also the name errors use.
type Wiring struct {
	// URI is Connection.AmqpURI.
	URI string
	// TLSConfig is Connection.TLSConfig.
	TLSConfig *tls.Config
	// AMQPConfig is Connection.AmqpConfig: amqp091-go's Config, whose
	// Recovery must stay nil.
	AMQPConfig *amqp091.Config
	// Reconnect is Connection.Reconnect, zero when unset: the fallback of
	// Config.Reconnect.
	Reconnect Backoff

	// Marshaler is Marshaler.
	Marshaler Marshaler
	// StringHeadersOnly says that Marshaler reads string headers only
	// (watermill-amqp's DefaultMarshaler): deliveries reach it with every
	// header as a string, at once rather than after a first failure.
	StringHeadersOnly bool
	// UUIDHeader is the header Marshaler writes the message UUID in:
	// the DefaultMarshaler's MessageUUIDHeaderKey, else watermill-amqp's
	// DefaultMessageUUIDHeaderKey. Config.UUIDInMessageIDOnly leaves it
	// out.
	UUIDHeader string
	// FreshHeaders says that Marshaler is watermill-amqp's DefaultMarshaler
	// without PostprocessPublishing: it returns a header table of its own
	// with each message, held by no one else, so the publisher may change
	// it in place rather than copy it; and what it makes of a message is
	// known (the body, the metadata and the UUID as headers, DeliveryMode),
	// so that on the lean wire a message without metadata is built
	// directly, without a table made only to be dropped (leanwire.go).
	FreshHeaders bool
	// DeliveryMode is the delivery mode that Marshaler sets when
	// FreshHeaders: amqp091.Persistent, or 0 with its
	// NotPersistentDeliveryMode.
	DeliveryMode uint8

	// ExchangeName is Exchange.GenerateName.
	ExchangeName func(topic string) string
	// QueueName is Queue.GenerateName; nil on a publisher that has none.
	QueueName func(topic string) string
	// QueueAutoDelete is Queue.AutoDelete.
	QueueAutoDelete bool
	// QueueArguments is Queue.Arguments: the subscriber reads a quorum
	// queue's delivery limit and dead-letter exchange from them.
	QueueArguments amqp091.Table
	// QueueExclusive is Queue.Exclusive: the queue belongs to the connection
	// that declares it, the subscriber's, so the publisher never declares it.
	QueueExclusive bool
	// RoutingKey is Publish.GenerateRoutingKey.
	RoutingKey func(topic string) string
	// Mandatory, Immediate, Transactional and ChannelPoolSize are those of
	// Publish (the last two are refused: see Config).
	Mandatory, Immediate, Transactional bool
	ChannelPoolSize                     int

	// Consume is Consume.
	Consume Consume

	// DeclareExchange is TopologyBuilder.ExchangeDeclare.
	DeclareExchange func(ch *amqp091.Channel, exchange string) error
	// BuildTopology is TopologyBuilder.BuildTopology: it declares topic's
	// queue and exchange and binds them.
	BuildTopology func(ch *amqp091.Channel, topic, queue, exchange string, logger watermill.LoggerAdapter) error
}

// Marshaler is watermill-amqp's Marshaler, of either version.
type Marshaler interface {
	Marshal(msg *message.Message) (amqp091.Publishing, error)
	Unmarshal(amqpMsg amqp091.Delivery) (*message.Message, error)
}

// Consume is watermill-amqp's ConsumeConfig.
type Consume struct {
	Consumer                string
	Exclusive, NoLocal      bool
	NoWait, NoRequeueOnNack bool
	Arguments               amqp091.Table
	// PrefetchCount and PrefetchSize are Qos's. Qos.Global is not used:
	// each consuming channel has one consumer, so it is the same limit,
	// and quorum queues refuse a global one.
	PrefetchCount, PrefetchSize int
}
