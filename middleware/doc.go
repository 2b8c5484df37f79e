// Package middleware will hold watermill message.PublisherDecorators that
// make any publisher resilient: retry with backoff on transient errors, and
// waiting for a reconnect before retrying. It is empty for now: the
// resilient publisher itself already retries across reconnects, bounded by
// each message's context and its PublishTimeout.
package middleware
