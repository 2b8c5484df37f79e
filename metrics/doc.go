// Package metrics turns the events of a resilient.Publisher and a
// resilient.Subscriber (resilient.Config.OnEvent) into Prometheus series.
//
//	m, err := metrics.NewPrometheus(registry, "myapp", "rabbitmq")
//	pubCfg.OnEvent = m.Publisher("orders")  // series labelled publisher_name="orders"
//	subCfg.OnEvent = m.Subscriber("orders") // series labelled subscriber_name="orders"
//
// It follows watermill's components/metrics: names are
// <namespace>_<subsystem>_<name>; two series are watermill's own, with its
// names, help and labels, so that dashboards made for watermill read them:
// publish_time_seconds{handler_name,publisher_name,success} and
// subscriber_messages_received_total{handler_name,subscriber_name,acked}
// (handler_name is the Router handler's, "<no handler>" outside a Router).
// Every other series is this package's and starts with publisher_ or
// subscriber_. A collector already registered on the registry (by watermill's
// PrometheusMetricsBuilder, by another NewPrometheus) is reused rather than
// registered twice, whichever came first.
//
// watermill's router metrics (AddPrometheusRouterMetrics) decorate every
// publisher and subscriber of a Router and fill the two shared series too,
// labelled with the component's type name ("Publisher", "Subscriber") where
// ours carry the name given here: on the same namespace and subsystem a sum
// over publisher_name counts a publish twice. Give NewPrometheus another
// subsystem there, or filter on the name.
//
// Labels take values only from fixed sets and from the names given to
// Publisher and Subscriber: never a topic, a UUID, a URI or an error's text.
// Give each publisher and each subscriber its own name and its own Config
// (a Config shared by a Publisher and a Subscriber sends both their events to
// one function): two components under one name add up their counters and
// overwrite each other's state.
//
// The function Publisher and Subscriber return is called inline and
// concurrently by the component; it takes no lock and, for everything but a
// failure or a connection loss, allocates nothing: its series are resolved
// when it is made.
//
// # Publisher series (label publisher_name)
//
//	publish_time_seconds                    histogram  handler_name, success   watermill's: how long Publish calls took, re-sends and reconnects included (1 ms to 60 s); success "true" (every message confirmed) or "false".
//	publisher_messages_in_flight            gauge                Messages in Publish calls in progress.
//	publisher_messages_confirmed_total      counter              Messages the broker confirmed (once per message within a call; a new call, e.g. decorate.Retry's, counts again).
//	publisher_messages_nacked_total         counter              Messages the broker nacked (each is re-sent or fails).
//	publisher_messages_returned_total       counter              Messages the publisher's own queue returned (re-sent after the queue is declared again; a mandatory message no queue took is failed{class="unroutable"}).
//	publisher_messages_resent_total         counter              Messages sent again after a nack, a return, or the loss of their channel or connection.
//	publisher_messages_failed_total         counter    class     Messages that failed for good, by resilient.ErrorClass of the error.
//	publisher_connection_state              gauge      state     1 for the connection's current state, 0 for the others.
//	publisher_reconnects_total              counter    cause     Connections lost (each starts a reconnect), by resilient.ErrorClass of why.
//	publisher_reconnect_duration_seconds    histogram            Time from the loss of a connection to the next one up (0.1 s to 5 min).
//	publisher_channels_refused_total        counter              Channels a lane could not open under the broker's channel_max (core.ChannelRefused).
//
// # Subscriber series (label subscriber_name)
//
//	subscriber_messages_received_total      counter    handler_name, acked     watermill's: messages the handler acked or nacked, counted once the ack or nack reached the broker; acked "acked" or "nacked" (a message that cannot be unmarshaled is nacked too).
//	subscriber_messages_delivered_total     counter              Messages handed to the subscriber's reader, redeliveries included.
//	subscriber_messages_redelivered_total   counter              Of those, the ones the broker had delivered before.
//	subscriber_reattaches_total             counter              Times a subscription consumed again: after losing its channel or connection, and after ending a consumer itself (no delivery for 5 heartbeats, a gap in delivery tags, leaving a node).
//	subscriber_connection_state             gauge      state     As publisher_connection_state.
//	subscriber_reconnects_total             counter    cause     As publisher_reconnects_total.
//	subscriber_messages_delivery_limit_reached_total  counter    Messages sent back to a quorum queue past its delivery limit (core.DeliveryLimitReached).
//	subscriber_reconnect_duration_seconds   histogram            As publisher_reconnect_duration_seconds.
//	subscriber_channels_refused_total       counter              As publisher_channels_refused_total, for subscriptions.
//
// Label values: success is "true" or "false"; acked "acked" or "nacked";
// handler_name a Router handler's name or "<no handler>"; state one of
// "connecting", "connected", "blocked", "reconnecting", "closed" (a name
// starts at "connecting", unless a component already runs under it); class
// and cause one of the names core.ErrorClass documents ("not_confirmed",
// "nacked", "unroutable", "access_refused", "not_found",
// "precondition_failed", "message_too_large", "invalid_name", "nil_message",
// "marshal", "config", "tls", "closed", "channel_limit", "heartbeat",
// "network", "broker", "other"), anything else counted as "other". The causes "broker",
// "network", "heartbeat" and "other" start at 0, so that increase() sees the
// first loss.
package metrics
