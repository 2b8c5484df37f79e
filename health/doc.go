// Package health turns the connection state of resilient Publishers and
// Subscribers (their Health method) into readiness and liveness probes, as
// Go checks and as HTTP handlers for Kubernetes or a load balancer.
//
//	checker := health.NewChecker(0).
//		Add("publisher", pub).
//		Add("subscriber", sub)
//	http.Handle("/readyz", checker.ReadyHandler())
//	http.Handle("/livez", checker.LiveHandler())
//
// Readiness fails while any component is not connected: connecting,
// reconnecting, closed, or blocked by the broker (a memory or disk alarm:
// publishing is paused until it clears); and while one is connected but
// degraded (Health().Degraded: channels refused under the broker's
// channel_max, so some publishing lane or subscription is not running).
// Send no traffic then.
//
// Liveness fails only when a component has had no connection for longer
// than the checker's bound (DefaultMaxDisconnected, one minute, unless set),
// or is closed: the reconnect loop never gives up, so a restart of the
// process helps only when something is wrong with it (a closed component,
// credentials revoked, a network the process cannot reach). A blocked
// connection is alive: restarting does not clear a broker's alarm.
//
// The handlers answer 200 or 503 with a short plain-text body, one line per
// component: its state, for how long, and why (the broker's alarm, the last
// dial error). The resilient package keeps passwords out of those errors;
// this package strips any user:password@ from a URI in them once more.
package health
