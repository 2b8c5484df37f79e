package resilient

import "github.com/resilientmq/watermill-rabbitmq/core"

// The core's types and values under the names this package has always
// given them, so that code written against it keeps compiling (but for
// the Default* constants and PublishError.Temporary, removed). They are
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

	// Deprecated: ReconnectConfig is Backoff, whose name does not clash
	// with decorate.ReconnectConfig.
	ReconnectConfig = core.Backoff
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
	ErrAccessRefused      = core.ErrAccessRefused
	ErrNotFound           = core.ErrNotFound
	ErrPreconditionFailed = core.ErrPreconditionFailed
	ErrUnroutable         = core.ErrUnroutable
	ErrNacked             = core.ErrNacked
	ErrNotConfirmed       = core.ErrNotConfirmed
	ErrChannelLimit       = core.ErrChannelLimit
)

// IsPermanent is core.IsPermanent.
func IsPermanent(err error) bool { return core.IsPermanent(err) }

// ErrorClass is core.ErrorClass.
func ErrorClass(err error) string { return core.ErrorClass(err) }
