package core

import (
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// settings is a Config as the core uses it: the front door's AMQP config
// read into a Wiring, defaults applied.
type settings struct {
	Config[Wiring]
}

// newSettings is cfg with w in place of its AMQP field, every knob copied.
func newSettings[A any](cfg Config[A], w Wiring, connectionName string) *settings {
	s := &settings{Config[Wiring]{
		AMQP:                 w,
		FailoverURIs:         cfg.FailoverURIs,
		FailoverInOrder:      cfg.FailoverInOrder,
		ConnectionName:       cfg.ConnectionName,
		Heartbeat:            cfg.Heartbeat,
		DialTimeout:          cfg.DialTimeout,
		Reconnect:            cfg.Reconnect,
		RetryOnFailedConnect: cfg.RetryOnFailedConnect,
		Channels:             cfg.Channels,
		MaxInFlight:          cfg.MaxInFlight,
		PublishTimeout:       cfg.PublishTimeout,
		ConfirmTimeout:       cfg.ConfirmTimeout,
		CloseTimeout:         cfg.CloseTimeout,
		MaxNackRetries:       cfg.MaxNackRetries,
		MaxMessageSize:       cfg.MaxMessageSize,
		AckBatch:             cfg.AckBatch,
		AckBatchWait:         cfg.AckBatchWait,
		UUIDInMessageIDOnly:  cfg.UUIDInMessageIDOnly,
		NoQueueDeletionGuard: cfg.NoQueueDeletionGuard,
		OnEvent:              cfg.OnEvent,
		OnStateChange:        cfg.OnStateChange,
	}}
	if s.ConnectionName == "" {
		s.ConnectionName = connectionNameOf(w.AMQPConfig, connectionName)
	}
	s.setDefaults()
	return s
}

// connectionNameOf is the name a user of watermill-amqp already gave the
// connection (Connection.AmqpConfig.Properties["connection_name"]), which a
// switch of front door must not lose, or else def.
func connectionNameOf(user *amqp091.Config, def string) string {
	if user != nil {
		if name, ok := user.Properties["connection_name"].(string); ok && name != "" {
			return name
		}
	}
	return def
}

func (c *settings) setDefaults() {
	if c.Heartbeat == 0 {
		c.Heartbeat = defaultHeartbeat
		if ac := c.AMQP.AMQPConfig; ac != nil && ac.Heartbeat != 0 {
			c.Heartbeat = ac.Heartbeat
		}
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = defaultDialTimeout
	}
	c.Reconnect.setDefaults(c.AMQP.Reconnect)
	if c.Channels == 0 {
		c.Channels = defaultChannels
		if c.AMQP.ChannelPoolSize > 0 {
			c.Channels = c.AMQP.ChannelPoolSize
		}
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = defaultMaxInFlight
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = defaultPublishTimeout
	}
	if c.ConfirmTimeout == 0 {
		c.ConfirmTimeout = defaultConfirmTimeout
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = defaultCloseTimeout
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = defaultMaxMessageSize
	}
	if c.AckBatch == 0 {
		c.AckBatch = defaultAckBatch
	}
	if c.AckBatchWait == 0 {
		c.AckBatchWait = defaultAckBatchWait
	}
}

// validate checks what a publisher (publishing) or a subscriber needs.
func (c *settings) validate(publishing bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	uris := append([]string{c.AMQP.URI}, c.FailoverURIs...)
	for i, uri := range uris {
		if uri == "" {
			if i == 0 {
				add("AMQP.Connection.AmqpURI is empty")
			} else {
				add("FailoverURIs[%d] is empty", i-1)
			}
			continue
		}
		parsed, err := amqp091.ParseURI(uri)
		switch {
		case err != nil:
			// The parser's own text may quote a piece of the password (a '#',
			// '/' or '?' in it ends the authority early): none of it here.
			add("URI %s cannot be parsed (%s); percent-encode reserved characters in the user name and password", redactURI(uri), uriProblem(err))
		case parsed.Port < 1 || parsed.Port > 65535:
			add("URI %s: port %d out of range", redactURI(uri), parsed.Port)
		}
	}
	if c.AMQP.Marshaler == nil {
		add("AMQP.Marshaler is nil")
	}
	if c.AMQP.ExchangeName == nil {
		add("AMQP.Exchange.GenerateName is nil")
	}
	if publishing {
		if c.AMQP.RoutingKey == nil {
			add("AMQP.Publish.GenerateRoutingKey is nil")
		}
		if c.AMQP.Immediate {
			add("AMQP.Publish.Immediate is not supported by RabbitMQ")
		}
		if c.AMQP.Transactional {
			add("AMQP.Publish.Transactional is not supported: publisher confirms are always on")
		}
	} else if c.AMQP.QueueName == nil {
		add("AMQP.Queue.GenerateName is nil")
	}
	if c.AMQP.AMQPConfig != nil && c.AMQP.AMQPConfig.Recovery != nil {
		add("AMQP.Connection.AmqpConfig.Recovery must be nil: this publisher owns reconnection")
	}
	for name, d := range map[string]time.Duration{
		"Heartbeat": c.Heartbeat, "DialTimeout": c.DialTimeout, "PublishTimeout": c.PublishTimeout,
		"ConfirmTimeout": c.ConfirmTimeout, "CloseTimeout": c.CloseTimeout,
		"Reconnect.InitialWait": c.Reconnect.InitialWait, "Reconnect.MaxWait": c.Reconnect.MaxWait,
	} {
		if d < 0 {
			add("%s is negative (%s)", name, d)
		}
	}
	if c.Reconnect.MaxWait > 0 && c.Reconnect.InitialWait > c.Reconnect.MaxWait {
		add("Reconnect.InitialWait (%s) exceeds Reconnect.MaxWait (%s)", c.Reconnect.InitialWait, c.Reconnect.MaxWait)
	}
	if c.Reconnect.Multiplier != 0 && c.Reconnect.Multiplier < 1 {
		add("Reconnect.Multiplier must be at least 1, got %v", c.Reconnect.Multiplier)
	}
	if (c.Reconnect.Jitter < 0 || c.Reconnect.Jitter > 1) && c.Reconnect.Jitter != NoJitter {
		add("Reconnect.Jitter must be within [0, 1] or NoJitter, got %v", c.Reconnect.Jitter)
	}
	if c.Heartbeat > 0 && c.Heartbeat < time.Second {
		add("Heartbeat must be at least 1s (AMQP counts whole seconds), got %s", c.Heartbeat)
	}
	if c.ConfirmTimeout > 0 && c.ConfirmTimeout < 100*time.Millisecond {
		add("ConfirmTimeout must be at least 100ms, got %s", c.ConfirmTimeout)
	}
	if c.Channels < 0 || c.Channels > 1024 {
		add("Channels must be within [1, 1024], got %d", c.Channels)
	}
	if c.MaxInFlight < 0 || c.MaxInFlight > 65535 {
		add("MaxInFlight must be within [1, 65535], got %d", c.MaxInFlight)
	}
	if c.AckBatch < 0 {
		add("AckBatch must be 1 (each ack at once) or more, got %d", c.AckBatch)
	}
	if c.AckBatchWait < 0 {
		add("AckBatchWait must not be negative, got %s", c.AckBatchWait)
	}
	if c.MaxNackRetries < -1 {
		add("MaxNackRetries must be -1 (none) or more, got %d", c.MaxNackRetries)
	}
	if c.MaxMessageSize < 0 {
		add("MaxMessageSize is negative (%d)", c.MaxMessageSize)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
}

// emit sends e to the configured OnEvent, if any.
func (c *settings) emit(e Event) {
	if c.OnEvent != nil {
		c.OnEvent(e)
	}
}
