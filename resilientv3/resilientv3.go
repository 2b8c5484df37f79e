package resilientv3

import (
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// Config configures a Publisher or a Subscriber. It is core.Config with
// AMQP set to watermill-amqp v3's own Config, so its fields are
// core.Config's, each optional (zero means its default), each documented
// with its default in `go doc github.com/resilientmq/watermill-rabbitmq/core.Config`:
//
//	AMQP                   amqp.Config: URI, TLS, Marshaler, names, topology
//	FailoverURIs           other brokers (a cluster's nodes) to dial in turn
//	FailoverInOrder        keep the URIs' order rather than shuffle them
//	ConnectionName         the name the broker shows for the connection
//	Heartbeat              AMQP heartbeat (default 10s)
//	DialTimeout            bound of one dial (default 10s)
//	Reconnect              backoff between dials (core.Backoff)
//	RetryOnFailedConnect   start even if the broker is down, dial in the background
//	Channels               publishing channels (default 4)
//	MaxInFlight            unconfirmed messages per channel (default 512)
//	PublishTimeout         bound of one Publish call (default 30s)
//	ConfirmTimeout         bound of the broker's confirm or reply (default 15s)
//	CloseTimeout           how long Close waits for confirms (default 10s)
//	MaxNackRetries         cap on re-sends after broker nacks (default none)
//	MaxMessageSize         larger messages fail at once (default 512 MiB, RabbitMQ's cap)
//	UUIDInMessageIDOnly    the UUID in message_id only, no header (default off)
//	NoQueueDeletionGuard   own queues published without mandatory (default off: see core)
//	AckBatch               acks a Subscriber sends as one (default 32)
//	AckBatchWait           how long it may hold one back (default 10 ms)
//	OnEvent                called on every Event (package metrics uses it)
//	OnStateChange          called on every StateChange, in order
//
// From AMQP a Publisher uses Connection (AmqpURI, TLSConfig, AmqpConfig,
// Reconnect), Marshaler, Exchange, Queue (to declare the queue of a
// default-exchange config), Publish (GenerateRoutingKey, Mandatory,
// ChannelPoolSize as Channels when Channels is zero) and TopologyBuilder
// (default amqp.DefaultTopologyBuilder). Publisher confirms are always on,
// so Publish.ConfirmDelivery is ignored; Publish.Transactional and
// Publish.Immediate are rejected. A Subscriber uses Connection, Queue,
// Exchange, QueueBind, TopologyBuilder, Consume and Marshaler.
type Config core.Config[amqp.Config]

// ValidatePublisher reports every problem of the configuration for a
// Publisher at once, as watermill-amqp's Config.ValidatePublisher does;
// NewPublisher calls it. Errors match ErrConfig and never contain a
// password.
func (c Config) ValidatePublisher() error {
	return core.ValidatePublisher(core.Config[amqp.Config](c), wire(c.AMQP))
}

// ValidateSubscriber reports every problem of the configuration for a
// Subscriber at once, as watermill-amqp's Config.ValidateSubscriber does;
// NewSubscriber calls it. Errors match ErrConfig and never contain a
// password.
func (c Config) ValidateSubscriber() error {
	return core.ValidateSubscriber(core.Config[amqp.Config](c), wire(c.AMQP))
}

// Validate is ValidatePublisher, under the name it had first.
func (c Config) Validate() error { return c.ValidatePublisher() }

// NewPublisher validates cfg, connects, and returns a Publisher: see
// core.NewPublisher.
func NewPublisher(cfg Config, logger watermill.LoggerAdapter) (*Publisher, error) {
	return core.NewPublisher(core.Config[amqp.Config](cfg), wire(cfg.AMQP), logger)
}

// NewSubscriber validates cfg, connects, and returns a Subscriber: see
// core.NewSubscriber.
func NewSubscriber(cfg Config, logger watermill.LoggerAdapter) (*Subscriber, error) {
	return core.NewSubscriber(core.Config[amqp.Config](cfg), wire(cfg.AMQP), logger)
}

// wire reads watermill-amqp v3's Config into the core's terms.
func wire(c amqp.Config) core.Wiring {
	w := core.Wiring{
		URI:             c.Connection.AmqpURI,
		TLSConfig:       c.Connection.TLSConfig,
		AMQPConfig:      c.Connection.AmqpConfig,
		Marshaler:       c.Marshaler,
		ExchangeName:    c.Exchange.GenerateName,
		QueueName:       c.Queue.GenerateName,
		QueueAutoDelete: c.Queue.AutoDelete,
		QueueArguments:  c.Queue.Arguments,
		QueueExclusive:  c.Queue.Exclusive,
		RoutingKey:      c.Publish.GenerateRoutingKey,
		Mandatory:       c.Publish.Mandatory,
		Immediate:       c.Publish.Immediate,
		Transactional:   c.Publish.Transactional,
		ChannelPoolSize: c.Publish.ChannelPoolSize,
		Consume: core.Consume{
			Consumer: c.Consume.Consumer, Exclusive: c.Consume.Exclusive, NoLocal: c.Consume.NoLocal,
			NoWait: c.Consume.NoWait, NoRequeueOnNack: c.Consume.NoRequeueOnNack, Arguments: c.Consume.Arguments,
			PrefetchCount: c.Consume.Qos.PrefetchCount, PrefetchSize: c.Consume.Qos.PrefetchSize,
		},
	}
	if r := c.Connection.Reconnect; r != nil {
		w.Reconnect = core.Backoff{InitialWait: r.BackoffInitialInterval, MaxWait: r.BackoffMaxInterval,
			Multiplier: r.BackoffMultiplier, Jitter: r.BackoffRandomizationFactor}
	}
	w.UUIDHeader = amqp.DefaultMessageUUIDHeaderKey
	if m, ok := defaultMarshaler(c.Marshaler); ok {
		w.StringHeadersOnly = true
		w.FreshHeaders = m.PostprocessPublishing == nil // it may return a table of the user's
		if !m.NotPersistentDeliveryMode {
			w.DeliveryMode = amqp091.Persistent
		}
		if m.MessageUUIDHeaderKey != "" {
			w.UUIDHeader = m.MessageUUIDHeaderKey
		}
	}
	builder := c.TopologyBuilder
	if builder == nil {
		builder = &amqp.DefaultTopologyBuilder{}
	}
	w.DeclareExchange = func(ch *amqp091.Channel, exchange string) error {
		return builder.ExchangeDeclare(ch, exchange, c)
	}
	w.BuildTopology = func(ch *amqp091.Channel, topic, queue, exchange string, logger watermill.LoggerAdapter) error {
		params := amqp.BuildTopologyParams{Topic: topic, QueueName: queue, ExchangeName: exchange}
		if c.QueueBind.GenerateRoutingKey != nil {
			params.RoutingKey = c.QueueBind.GenerateRoutingKey(topic)
		}
		return builder.BuildTopology(ch, params, c, logger)
	}
	return w
}

// defaultMarshaler is m as watermill-amqp's DefaultMarshaler, if it is one.
func defaultMarshaler(m amqp.Marshaler) (amqp.DefaultMarshaler, bool) {
	switch m := m.(type) {
	case amqp.DefaultMarshaler:
		return m, true
	case *amqp.DefaultMarshaler:
		if m != nil {
			return *m, true
		}
	}
	return amqp.DefaultMarshaler{}, false
}
