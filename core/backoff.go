package core

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff is the exponential backoff with jitter between dial attempts.
// Reconnecting never gives up before Close.
type Backoff struct {
	// InitialWait before the first redial. Default 100 ms.
	InitialWait time.Duration
	// MaxWait caps the wait between attempts. Default 3 s.
	MaxWait time.Duration
	// Multiplier grows the wait after each failed attempt. Default 2.
	Multiplier float64
	// Jitter randomizes each wait by ±Jitter×wait. Default 0.5; NoJitter
	// (-1) for none.
	Jitter float64
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

// newBackoff is a fresh backoff with these settings, for one loop of
// retries.
func (r Backoff) newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = r.InitialWait
	b.MaxInterval = r.MaxWait
	b.Multiplier = r.Multiplier
	b.RandomizationFactor = r.Jitter
	b.Reset()
	return b
}
