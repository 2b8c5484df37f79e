package resilientv3

import "github.com/resilientmq/watermill-rabbitmq/core"

// The core's types and values under this package's name, the same as
// package resilient offers, so that a program on watermill-amqp v3 imports
// this door alone: resilientv3.PublishError is core.PublishError (an alias,
// not a copy), and errors.Is / errors.As work across both names. They are
// documented in package core.

type (
	Publisher    = core.Publisher
	Subscriber   = core.Subscriber
	PublishError = core.PublishError
	Backoff      = core.Backoff
	State        = core.State
	StateChange  = core.StateChange
	Health       = core.Health
	Event        = core.Event
	EventKind    = core.EventKind
)

// NoJitter as Backoff.Jitter turns jitter off.
const NoJitter = core.NoJitter

const (
	StateConnecting   = core.StateConnecting
	StateConnected    = core.StateConnected
	StateBlocked      = core.StateBlocked
	StateReconnecting = core.StateReconnecting
	StateClosed       = core.StateClosed
)

const (
	PublishStarted       = core.PublishStarted
	PublishDone          = core.PublishDone
	MessagesConfirmed    = core.MessagesConfirmed
	MessagesNacked       = core.MessagesNacked
	MessagesReturned     = core.MessagesReturned
	MessagesResent       = core.MessagesResent
	MessagesFailed       = core.MessagesFailed
	StateChanged         = core.StateChanged
	ConnectionLost       = core.ConnectionLost
	Reconnected          = core.Reconnected
	MessageDelivered     = core.MessageDelivered
	MessageAcked         = core.MessageAcked
	MessageNacked        = core.MessageNacked
	ConsumerReattached   = core.ConsumerReattached
	ConsumerLost         = core.ConsumerLost
	DeliveryLimitReached = core.DeliveryLimitReached
	ChannelRefused       = core.ChannelRefused
)

var (
	ErrClosed             = core.ErrClosed
	ErrConfig             = core.ErrConfig
	ErrNilMessage         = core.ErrNilMessage
	ErrMarshal            = core.ErrMarshal
	ErrInvalidName        = core.ErrInvalidName
	ErrMessageTooLarge    = core.ErrMessageTooLarge
	ErrTLS                = core.ErrTLS
	ErrChannelLimit       = core.ErrChannelLimit
	ErrAccessRefused      = core.ErrAccessRefused
	ErrNotFound           = core.ErrNotFound
	ErrPreconditionFailed = core.ErrPreconditionFailed
	ErrUnroutable         = core.ErrUnroutable
	ErrNacked             = core.ErrNacked
	ErrNotConfirmed       = core.ErrNotConfirmed
)

// IsPermanent is core.IsPermanent.
func IsPermanent(err error) bool { return core.IsPermanent(err) }

// ErrorClass is core.ErrorClass.
func ErrorClass(err error) string { return core.ErrorClass(err) }
