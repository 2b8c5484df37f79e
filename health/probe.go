package health

import (
	"fmt"
	"time"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// probe is a rule a component's health passes or fails.
type probe int

const (
	// readiness passes only while connected (not blocked).
	readiness probe = iota
	// liveness passes unless the component is closed or has had no
	// connection for longer than the checker's bound.
	liveness
)

// result is one component's health and whether it passed a probe.
type result struct {
	name   string
	health core.Health
	err    error // nil: passed; else why not, starting with name
}

// judge returns nil if h passes the probe at now, else why not.
func (p probe) judge(name string, h core.Health, now time.Time, maxDisconnected time.Duration) error {
	switch h.State {
	case core.StateConnected:
		if p == liveness || h.Degraded == nil {
			return nil
		}
	case core.StateBlocked:
		if p == liveness {
			return nil
		}
	case core.StateConnecting, core.StateReconnecting:
		if p == liveness && now.Sub(h.Since) <= maxDisconnected {
			return nil
		}
	}
	return fmt.Errorf("%s: %s", name, describe(h, now))
}

// describe says what state h is in, for how long, and why, with no
// password.
func describe(h core.Health, now time.Time) string {
	s := h.State.String()
	if !h.Since.IsZero() {
		s += " for " + roughly(now.Sub(h.Since)).String()
	}
	if h.Err != nil {
		s += ": " + redact(h.Err.Error())
	}
	if h.Degraded != nil {
		s += ", degraded: " + redact(h.Degraded.Error())
	}
	return s
}

// roughly rounds d to what a reader cares about: milliseconds under a
// second, tenths under a minute, else seconds.
func roughly(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
