// Package decorate holds watermill message.PublisherDecorators that make a
// publisher ride through faults. Each works on any message.Publisher: this
// module's core.Publisher (built by package resilient or resilientv3),
// watermill-amqp's amqp.Publisher, watermill's gochannel, or your own.
//
// The package was called middleware; it is decorate so that it cannot be
// mistaken for watermill's message/router/middleware, which a router app
// imports in the same file, and whose middleware.Retry retries a handler,
// not a publish.
//
// # Why publisher decorators
//
// A watermill Router publishes the messages a handler returns after the
// handler and its middleware chain have run: router.AddMiddleware (watermill's
// middleware.Retry included) never sees a failed publish of a handler's
// output; the router only logs it and nacks the input message, which is
// then redelivered and the handler run again. Publish-side resilience must therefore live in the publisher itself
// (resilient.Publisher already waits for reconnects and re-sends what was not
// confirmed) or in a decorator of it: decorate the publisher you pass to
// Router.AddHandler, or use Router.AddPublisherDecorators.
//
// # The decorators
//
//   - Retry publishes again, with exponential backoff and jitter
//     (cenkalti/backoff, a fresh one per call), when the publisher fails with
//     a transient error. It never retries a permanent one: a typed error of
//     package core (core.IsPermanent), context.Canceled, or what
//     RetryConfig.Classify calls permanent. It stops when a message's
//     Context() ends, after MaxAttempts or MaxElapsedTime, or on Close. When
//     the publisher is a resilient.Publisher it re-sends only the messages
//     its *core.PublishError names as unconfirmed; for other publishers,
//     all of them. Defaults: InitialInterval 100ms, MaxInterval 5s,
//     Multiplier 2, RandomizationFactor 0.5 (NoJitter for none), MaxAttempts 10 (the first
//     included), MaxElapsedTime 1m.
//   - Reconnect waits, before each Publish, until the publisher reports its
//     connection up (ConnectionReporter, and ConnectionWaiter if it has it),
//     so that retries are not burnt against a dead connection.
//     resilient.Publisher implements both interfaces; watermill-amqp's
//     publisher implements IsConnected, polled every PollInterval. The wait
//     is bounded by the messages' contexts and MaxWait, after which the
//     publish is attempted anyway. Defaults: MaxWait 30s, PollInterval
//     100ms. Reconnect does not retry: stack it under Retry.
//   - Timeout bounds a Publish with a deadline on the messages' contexts, for
//     publishers that honour them (resilient.Publisher does everywhere). No
//     default: the duration is its argument.
//   - Metrics calls a function after every Publish with the topic, the
//     number of messages, the duration and the error, for your metrics
//     library of choice.
//
// A circuit breaker is left out on purpose: resilient.Publisher already
// fails fast on permanent errors and waits (bounded) for the connection
// rather than hammering it, and Reconnect gives the same to other
// publishers, which covers what a breaker would protect the broker from.
//
// # Stacking and order
//
// A decorator returns a publisher that forwards IsConnected and
// WaitConnected to the one it wraps, when that one has them (and only
// then), so decorators stack in any order without hiding the connection
// state. The recommended order, innermost first:
//
//	pub, _ = decorate.Reconnect(decorate.ReconnectConfig{})(pub) // wait for the connection before each attempt
//	pub, _ = decorate.Retry(decorate.RetryConfig{})(pub)         // retry transient failures
//	pub, _ = decorate.Timeout(2 * time.Minute)(pub)                // bound the whole call, retries included
//	pub, _ = decorate.Metrics(observe)(pub)                        // see what callers see
//
// Reconnect under Retry makes each retry wait for the connection first, the
// wait costing no attempt (MaxElapsedTime still counts it). Timeout above
// Retry is the deadline of the whole call; under Retry it bounds each
// attempt, and Retry tries again after an attempt that ran out of time (a
// deadline that is not the caller's is transient). Metrics outermost
// observes calls; under Retry, attempts.
//
// Router.AddPublisherDecorators of watermill v1.5.2 applies its decorators
// last first, so the first one listed ends up outermost, whatever its doc
// comment says: decorating the publisher yourself, as above, leaves no doubt.
//
// Close on a decorated publisher ends the waits of Retry and Reconnect in
// progress (those publishes return their last error), then closes the
// publisher underneath. Hooks (OnRetry, OnGiveUp, OnWait, Metrics' function)
// run on the publishing goroutine: keep them short.
//
// Retry may publish a message more than once (always so after a failure of
// a publisher that does not say which messages were confirmed): consumers
// should drop duplicates by message UUID, e.g. with watermill's
// Deduplicator middleware.
package decorate
