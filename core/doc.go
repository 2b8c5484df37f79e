// Where things live: one type per file, named after it, and its methods
// with it. From the bottom up:
//
//	the link        socket.go (the TCP socket under amqp091-go: cut, cork,
//	                silence), frame.go, tls.go, dial.go (dialer: URIs, their
//	                order, the handshake), redact.go
//	the connection  supervisor.go (dials, watches, redials; owns the
//	                session), supervisorstatus.go (its state, health, and
//	                the live session awaited), session.go (one live connection and what dies
//	                with it), trust.go (whether its confirms can be believed:
//	                pulses, breaking off, time blocked), awaitreply.go
//	                (a request to the broker bounded),
//	                pace.go, channellimit.go, unconfirming.go (nodes that
//	                answer but do not confirm), nodesleft.go, state.go,
//	                backoff.go, refusal.go (a refusal that lasts, logged
//	                once per reason)
//	publishing      publisher.go, outgoing.go (a message marshaled and
//	                checked, and prepare, which builds it), leanwire.go
//	                (the UUID header left out), call.go (one
//	                Publish: attempts, and what their messages' fates ask),
//	                lazydeadline.go (a call's context, made only when
//	                waited with), waker.go (one clock for the waiting
//	                calls, poked by Close and a session's end), attempt.go (one try on one lane),
//	                handoff.go (a message handed to a lane), lane.go (a
//	                confirm-mode channel and its goroutine), lanesend.go
//	                (taking and writing), laneanswers.go (confirms read in
//	                order, and what is lost with the channel),
//	                lanechannel.go (opened, retired), inflight.go,
//	                fact.go (what a lane saw become of a message), fate.go
//	                (what that means: the only place that decides), blame.go (which message a channel's close
//	                names), sizelimit.go, topology.go, publishing.go (the
//	                publisher's part of a session), contextwatch.go,
//	                closing.go
//	consuming       subscriber.go, subscription.go (one topic's goroutine:
//	                attach, consume, attach again), subscriptionhandle.go
//	                (one delivery to the handler, its verdict back),
//	                subscriptionattach.go
//	                (getting a consumer: channel, topology, Qos, Consume),
//	                subscriptionsettle.go (the verdict sent: ack, nack),
//	                consumer.go (one channel's consumer), ackbatch.go (acks held back, sent
//	                as one), attachhandoff.go (an attach given up on),
//	                idleprobe.go, prefetchnotice.go, unmarshal.go,
//	                deliverylimit.go
//	the contract    config.go, settings.go, wiring.go, errors.go,
//	                brokerreply.go (what each reply code means), events.go,
//	                supervised.go

// Package core is a watermill message.Publisher for RabbitMQ that keeps
// publishing through connection faults and returns nil only for messages the
// broker has confirmed, and a message.Subscriber that keeps consuming through
// them, at-least-once.
//
// # Switching from watermill-amqp
//
// Two front doors take watermill-amqp's own amqp.Config, so switching is
// one line: package resilient for watermill-amqp v2, package resilientv3 for
// v3.
//
//	pub, err := amqp.NewPublisher(amqp.NewDurableQueueConfig(uri), logger)                                // before
//	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, logger)     // after, v2
//	pub, err := resilientv3.NewPublisher(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, logger) // after, v3
//
// Any watermill-amqp config works: durable or not, queue or pub/sub, topic
// exchanges, a custom TopologyBuilder or Marshaler. Each door reads it into
// a Wiring, and this package, the core, knows neither version: everything
// below holds through both doors. The Publisher and Subscriber they return,
// the errors, states and events are this package's.
//
// # Guarantees
//
//   - At-least-once, never silently lost: Publish returns nil only after the
//     broker confirmed (basic.ack) every message. Otherwise it returns a
//     *PublishError naming the unconfirmed messages by UUID (each once, in
//     call order; a message not listed was confirmed), and IsPermanent
//     tells whether retrying can help.
//   - Faults are absorbed: on a TCP reset, a broker restart, a heartbeat
//     timeout on a half-open or frozen link, a connection closed by an
//     operator, a cluster node lost, or a channel closed by the broker,
//     Publish waits for the reconnect and re-sends every unconfirmed
//     message. A nack is the broker refusing for now (a quorum queue
//     electing a leader, a full queue rejecting publishes): the message is
//     re-sent with backoff, on a fresh channel if its own is older than a
//     second, within its bounds (see
//     Config.MaxNackRetries). A message can therefore arrive twice; it
//     carries its UUID as the AMQP message_id, for consumers to drop
//     duplicates (watermill's Deduplicator middleware does).
//   - Never hangs: every wait is bounded by the message's Context(),
//     Config.PublishTimeout and, for Close, Config.CloseTimeout. A channel
//     that leaves a message unconfirmed for Config.ConfirmTimeout, or that
//     owes confirms and confirms nothing for a quarter of it, is replaced
//     and its messages re-sent on a fresh channel at once: no one waits
//     for the old channel's close, which ends in the background. A
//     connection that confirms nothing for half of ConfirmTimeout, on
//     fresh channels too, is left for another URI (when there is one): its
//     node answers but cannot confirm (a minority in a network partition).
//     While the broker blocks the connection
//     (memory or disk alarm) sending pauses, and publishes time out cleanly.
//     A peer that stops reading (a frozen link) cannot hold a writer: the
//     heartbeat's read deadline cuts the socket, and so does Close. Every
//     request awaiting the broker's reply gets it within ConfirmTimeout
//     (at least two heartbeat intervals), or the connection is replaced.
//     A link that goes dark and comes back (bytes discarded, the
//     connection never closed) cannot make a lost message look confirmed:
//     on a lane owed confirms, 250 ms without a byte from the broker send
//     a pulse (so does a message sent on a link silent that long), and no
//     confirm is believed until it is answered; unanswered, the connection
//     is cut and the messages not yet reported are re-sent. A pulse also
//     goes out every heartbeat interval, on subscribers too, and when a
//     consumer with another URI to go to has had no delivery for 0.5 s. Such
//     a consumer of a quorum queue also asks its node for the queue's
//     consumer count, and leaves a node that cannot count it (the queue's
//     leader out of reach: idleprobe.go). A consumer's attach unanswered
//     within a quarter of ConfirmTimeout is tried again on a fresh channel
//     (attachhandoff.go).
//   - Permanent faults fail fast with typed errors and no retry loop:
//     ErrAccessRefused, ErrNotFound (exchange, vhost), ErrPreconditionFailed
//     (declare, a property the broker refuses), ErrMessageTooLarge (the
//     body, or headers larger than the connection's frame_max),
//     ErrInvalidName, ErrNilMessage, ErrMarshal, ErrConfig, ErrUnroutable
//     (mandatory; an exclusive queue no subscriber holds), ErrTLS (a
//     certificate). Every AMQP reply code has a meaning decided on purpose
//     (brokerreply.go). ErrChannelLimit (channel_max reached) is transient,
//     typed, and never taken for a lost connection: see channellimit.go.
//     Only the messages concerned fail;
//     the publisher keeps working for other topics and other callers. When
//     the broker closes a channel without naming the message at fault, the
//     messages in flight on it are re-sent one at a time: the one that
//     closes the channel alone fails, the others are confirmed.
//   - Durable by default: the watermill-amqp durable configs declare durable
//     queues and exchanges and mark messages persistent. With a queue config
//     (default exchange) the publisher declares the queue itself, and
//     publishes to it with the mandatory flag, so a message published before
//     any subscriber exists is kept, and a queue deleted under a live
//     connection (an operator, a policy) returns the message instead of the
//     broker confirming and dropping it: the queue is declared again and the
//     message re-sent (Config.NoQueueDeletionGuard trades this for the
//     throughput the flag costs a classic queue on RabbitMQ 3.x). Topology
//     is declared once per topic per connection and again after each
//     reconnect.
//   - Close is idempotent: it stops intake, waits for the publishes in
//     progress, closes the connection, and waits for every goroutine it
//     started; it returns within CloseTimeout and a small margin, whatever
//     the network does.
//   - Passwords never appear in logs or errors.
//
// Order: the messages of one Publish call reach the queue in call order,
// re-sends included: when one is lost with its channel, none of the call's
// later messages is written before it is sent again (a re-sent message may
// repeat; its first copy is in order). A nack is the exception: the
// messages already sent after a nacked one may be accepted before its
// re-send. A caller that waits for each Publish before the next keeps its
// order; concurrent callers may interleave.
//
// Limits: a handshake slower than amqp091-go's read deadline (1.5
// heartbeats once the broker's tune arrives) cannot succeed, and is retried
// as a transient fault; set Heartbeat above the link's round trip. A
// user_id property must be the login user (checked before sending; RabbitMQ's
// impersonator tag is not supported).
//
// # Design and ownership
//
// A supervisor goroutine owns the connection: it dials (the URIs shuffled
// once, each round starting after the node last used), watches NotifyClose
// and NotifyBlocked, and redials with exponential backoff and jitter
// (Config.Reconnect) until Close; it never gives up on its own. amqp091-go's
// experimental Config.Recovery stays off. It owns the socket under
// amqp091-go too: a read error cuts it, and so does the end of a session
// after a bounded grace, which frees a lane stuck writing to a peer that
// stopped reading, whatever amqp091-go's locks are doing.
// Each live connection is a session: Config.Channels publishing lanes, each a
// confirm-mode channel owned by exactly one goroutine, which writes the
// messages handed to it, with up to Config.MaxInFlight unconfirmed, and
// matches the broker's answers to them in delivery-tag order from their
// deferred confirmations, waiting on the oldest only, so that a
// multiple-ack wakes it once. It reports a confirm only when the session's
// trust allows (trust.go: never while a pulse is out, nor once the
// connection was broken off). The lane
// drains every notification channel it registers, and sizes them to its
// window, so amqp091-go never blocks on it. amqp091-go writes each publish
// to the socket on its own; a lane with a run of messages queued corks the
// socket for the run, so that the run leaves in one write (bounded to 256
// KiB), which saves system calls here and reads at the broker. No lock is held
// across network I/O: callers hand messages to a lane through a channel and
// wait for the facts of their messages on a channel of their own.
//
// Publish runs on the caller's goroutine: it marshals and validates every
// message, waits for a connection, ensures the topic's topology (declared on
// a goroutine and channel of the session's, so a broker refusal harms no
// lane), hands the messages to one lane as one attempt, and waits. Each
// message of an attempt ends it confirmed, to be sent again, or failed, and
// is counted once, whichever comes first of the lane's fact, the end of
// its Context() and the loss of the session. The lane reports facts only
// (acked, nacked, returned, lost with its channel); fate.go alone decides
// what each means. A lane whose channel dies reports every unconfirmed
// message lost: when the broker's reason names the culprits (an exchange, a
// size limit, a user_id, an expiration) those fail; when it names none,
// every message in flight becomes a suspect, sent alone next time. The
// others go to the next attempt, on a new channel or connection, in call
// order. Config.OnEvent reports what happens, for metrics.
//
// # Consuming
//
// Subscriber is the matching message.Subscriber (and SubscribeInitializer),
// on the same Config and the same kind of connection supervisor, on a
// connection of its own:
//
//	sub, err := amqp.NewSubscriber(amqp.NewDurableQueueConfig(uri), logger)                                // before
//	sub, err := resilient.NewSubscriber(resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, logger)     // after, v2
//	sub, err := resilientv3.NewSubscriber(resilientv3.Config{AMQP: amqp.NewDurableQueueConfig(uri)}, logger) // after, v3
//
// It uses the config's queue name generator, exchange, bindings
// (TopologyBuilder), Consume settings (Qos prefetch, consumer tag, exclusive,
// arguments, NoRequeueOnNack) and Marshaler.Unmarshal. What it promises:
//
//   - At-least-once: a delivery is acked only after the handler Acks the
//     message; Nack sends basic.nack with requeue, unless NoRequeueOnNack.
//     Acks are sent in batches (Config.AckBatch, AckBatchWait: one
//     basic.ack with multiple set for up to 32 deliveries, at most half the
//     prefetch count, sent at once when the handler goes idle): a channel
//     that dies with acks held has the broker deliver those messages again.
//   - Quorum queues: the broker's headers that are not strings
//     (x-delivery-count, x-death) reach the Marshaler as strings, so a
//     redelivered message reaches the handler with its redelivery count in
//     its metadata ("x-delivery-count"). Prefetch (Consume.Qos) is applied
//     per consumer, global or not: each channel has one consumer, and quorum
//     queues refuse global QoS. A message the Marshaler cannot read is
//     nacked (with requeue, unless NoRequeueOnNack) after a pause that
//     grows to 5 s, rather than at once for ever. A quorum queue takes a
//     message back only so many times (its x-delivery-limit; on RabbitMQ
//     4.x 20 by default; on 4.0 a consumer's channel closing with it
//     unacked counts too), then drops it, or dead-letters it when the
//     queue has a dead-letter exchange, telling no one: the subscriber
//     logs an error and emits DeliveryLimitReached when it sends back a
//     message past that limit, as far as it can tell (see
//     DeliveryLimitReached). Give such queues a dead-letter exchange to
//     keep what they give up on.
//     Messages are handed out one at a time, the next after the previous
//     one's Ack or Nack, as watermill's Router expects.
//   - Faults are absorbed: after a connection loss (reset, restart, forced
//     close, dead heartbeat) or a channel closed by the broker (e.g. a
//     consumer_timeout's PRECONDITION_FAILED, a deleted queue's
//     basic.cancel), it declares the topology again and resumes consuming on
//     its own. Nothing is lost: the broker redelivers what was not acked, so
//     a message may be handled twice (same UUID; watermill's
//     middleware.Deduplicator drops the copy).
//   - Never a phantom: a closed delivery channel is never read as a message.
//     A message without watermill's UUID header gets its AMQP message_id as
//     UUID.
//   - An outcome is sent only on the channel that delivered the message: a
//     handler that Acks after that channel died sends nothing (delivery tags
//     belong to their channel), and the broker delivers the message again.
//     Meanwhile the subscription waits for that handler, so the redelivered
//     copy is not handled concurrently with it.
//   - The output channel closes when the Subscribe context ends or on Close;
//     what was not acked then goes back to the queue. Close is idempotent and
//     waits for every goroutine the subscriber started.
//
// Each subscription is one goroutine owning one AMQP channel at a time; the
// supervisor owns the connection, and the subscription asks it for the live
// one after every loss. watermill-amqp's own subscriber (v2.1.3) is not used:
// it races on its connection flag during reconnects (ConnectionWrapper's
// connected field, written by handleConnectionClose while IsConnected and
// Subscribe read it), and reads its delivery channel without checking that
// it is open, which can hand a handler an empty message after a channel
// dies.
//
// OnStateChange callbacks run in order on one goroutine the publisher or
// subscriber owns, never under its locks. Status, IsConnected and WaitConnected report the
// connection state for middleware.
package core
