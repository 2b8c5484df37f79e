// Package resilientv3 is the front door for watermill-amqp v3: a Publisher
// that returns nil only once RabbitMQ has confirmed every message and rides
// through connection faults, and a Subscriber that keeps consuming through
// them, both built from watermill-amqp v3's own amqp.Config, so that
// switching is one line:
//
//	pub, err := amqp.NewPublisher(amqp.NewDurableQueueConfig(uri), logger)                                // before
//	pub, err := resilientv3.NewPublisher(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, logger) // after
//
//	sub, err := amqp.NewSubscriber(amqp.NewDurableQueueConfig(uri), logger)                                // before
//	sub, err := resilientv3.NewSubscriber(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, logger) // after
//
// This package only reads watermill-amqp's Config; the Publisher and
// Subscriber, their guarantees, what happens on each fault, every knob and
// its default, and the errors are package core's, which documents them.
// The names a program needs beside Config, NewPublisher and NewSubscriber
// (Publisher, PublishError, IsPermanent, ErrorClass, the Err* sentinels,
// State, StateChange, Health, Event and its kinds, Backoff) are here as
// aliases of core's: import this door alone; core is for reading the manual
// (go doc github.com/resilientmq/watermill-rabbitmq/core).
// Package resilient is the same door for watermill-amqp v2.
package resilientv3
