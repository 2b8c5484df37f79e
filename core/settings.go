package core

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
		OnEvent:              cfg.OnEvent,
		OnStateChange:        cfg.OnStateChange,
	}}
	if s.ConnectionName == "" {
		s.ConnectionName = connectionName
	}
	s.setDefaults()
	return s
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
}

// setDefaults fills the zero fields of b from legacy (watermill-amqp's
// Connection.Reconnect, when set), then from the defaults.
func (b *Backoff) setDefaults(legacy Backoff) {
	if b.InitialWait == 0 {
		b.InitialWait = legacy.InitialWait
	}
	if b.MaxWait == 0 {
		b.MaxWait = legacy.MaxWait
	}
	if b.Multiplier == 0 {
		b.Multiplier = legacy.Multiplier
	}
	if b.Jitter == 0 {
		b.Jitter = legacy.Jitter
	}
	if b.InitialWait == 0 {
		b.InitialWait = defaultReconnectWait
	}
	if b.MaxWait == 0 {
		b.MaxWait = max(defaultReconnectMaxWait, b.InitialWait)
	}
	if b.Multiplier == 0 {
		b.Multiplier = defaultReconnectMultiplier
	}
	switch b.Jitter {
	case 0:
		b.Jitter = defaultReconnectJitter
	case NoJitter:
		b.Jitter = 0
	}
}
