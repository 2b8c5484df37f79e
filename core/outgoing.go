package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// outgoing is one message of a Publish call, marshaled and validated once,
// and owned by that call's goroutine across every attempt to send it.
type outgoing struct {
	index      int // in the Publish call
	uuid       string
	ctx        context.Context
	exchange   string
	routingKey string
	// mandatory: sent with the mandatory flag, because the user asked for
	// it or because ownQueue.
	mandatory bool
	// ownQueue: it goes to a queue the publisher declares itself, so a
	// return means the queue vanished under the live connection: declare it
	// again and re-send, rather than let the broker confirm and drop it.
	ownQueue bool
	// exclusive: it goes to an exclusive queue, a subscriber's, that exists
	// only while its connection holds it (Publisher.subscriberQueue).
	exclusive   bool
	publishing  amqp091.Publishing
	headerFrame int // the size of its header frame (frame.go)

	slot    int // its handoff's index in the current attempt
	nacks   int // broker nacks so far
	returns int // returns from its own queue so far
	// suspect: in flight when the broker closed a channel for a reason
	// that names no message (fate.go): sent alone from then on.
	suspect bool
}

// prepare marshals and validates every message before any is sent.
func (p *Publisher) prepare(topic string, messages []*message.Message) ([]*outgoing, error) {
	exchange := p.cfg.AMQP.ExchangeName(topic)
	routingKey := p.cfg.AMQP.RoutingKey(topic)
	var errs []error
	if err := validName("topic", topic, false); err != nil {
		errs = append(errs, err)
	}
	if err := validName("exchange", exchange, true); err != nil {
		errs = append(errs, err)
	}
	if err := validName("routing key", routingKey, true); err != nil {
		errs = append(errs, err)
	}
	queue := p.queueToDeclare(topic)
	if queue != "" {
		if err := validName("queue", queue, false); err != nil {
			errs = append(errs, err)
		}
	}
	// Its own queue, reached through the default exchange: publish
	// mandatory, so that a queue deleted under the live connection returns
	// the message instead of the broker confirming and dropping it; unless
	// the user traded that for the broker's throughput (3.x classic
	// queues), and the queue is not one its own arguments delete.
	ownQueue := queue != "" && exchange == "" && routingKey == queue
	exclusiveQueue := p.subscriberQueue(topic, exchange, routingKey) != ""
	guarded := !p.cfg.NoQueueDeletionGuard || p.queueDeletedByDesign()
	mandatory := p.cfg.AMQP.Mandatory || exclusiveQueue || ownQueue && guarded

	store, batch := outgoingStore(len(messages))
	for i, msg := range messages {
		if msg == nil {
			errs = append(errs, fmt.Errorf("%w at index %d", ErrNilMessage, i))
			continue
		}
		pub, err := p.marshal(msg)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w %s: %w", ErrMarshal, msg.UUID, err))
			continue
		}
		headerFrame, err := validProperties(pub)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w %s: %w", ErrMarshal, msg.UUID, err))
			continue
		}
		if pub.UserId != "" && p.login != "" && pub.UserId != p.login {
			errs = append(errs, fmt.Errorf("%w: %s has user_id %q, but the connection logs in as %q: RabbitMQ would refuse it (and close the channel) unless that user has the impersonator tag, which this publisher does not support", ErrPreconditionFailed, msg.UUID, pub.UserId, p.login))
			continue
		}
		if len(pub.Body) > p.cfg.MaxMessageSize {
			errs = append(errs, fmt.Errorf("%w: %s has %d bytes, the limit is %d", ErrMessageTooLarge, msg.UUID, len(pub.Body), p.cfg.MaxMessageSize))
			continue
		}
		store[i] = outgoing{
			index:       i,
			uuid:        msg.UUID,
			ctx:         msg.Context(),
			exchange:    exchange,
			routingKey:  routingKey,
			mandatory:   mandatory,
			ownQueue:    ownQueue,
			exclusive:   exclusiveQueue,
			publishing:  pub,
			headerFrame: headerFrame,
		}
		batch = append(batch, &store[i])
	}
	if len(errs) > 0 {
		uuids := make([]string, 0, len(messages))
		for _, msg := range messages {
			if msg != nil {
				uuids = append(uuids, msg.UUID)
			}
		}
		// The first error names the kind; all are listed.
		return nil, &PublishError{Topic: topic, Unconfirmed: uuids, Err: fmt.Errorf("%w (nothing was sent)", joinFirst(errs))}
	}
	return batch, nil
}

// oneOutgoing holds the outgoing message of a call of one message, and the
// batch that points to it, in one allocation.
type oneOutgoing struct {
	store [1]outgoing
	batch [1]*outgoing
}

// outgoingStore returns room for n outgoing messages and an empty batch of
// capacity n to point to them: two allocations for all the messages of a
// call, however many; one for a single message, the usual call.
func outgoingStore(n int) (store []outgoing, batch []*outgoing) {
	if n == 1 {
		one := new(oneOutgoing)
		return one.store[:], one.batch[:0]
	}
	return make([]outgoing, n), make([]*outgoing, 0, n)
}

// marshal makes msg's publishing, its UUID as message_id unless the
// Marshaler set one, on the lean wire without the UUID header
// (Config.UUIDInMessageIDOnly).
func (p *Publisher) marshal(msg *message.Message) (amqp091.Publishing, error) {
	if p.cfg.UUIDInMessageIDOnly {
		if pub, ok := leanPublishing(msg, &p.cfg.AMQP); ok {
			return pub, nil
		}
	}
	pub, err := p.cfg.AMQP.Marshaler.Marshal(msg)
	if err != nil {
		return pub, err
	}
	if pub.MessageId == "" {
		pub.MessageId = msg.UUID
	}
	if p.cfg.UUIDInMessageIDOnly {
		dropUUIDHeader(&pub, msg.UUID, &p.cfg.AMQP)
	}
	return pub, nil
}

// joinFirst joins errs so that errors.Is matches all of them and the text
// starts with the first.
func joinFirst(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

func validName(kind, name string, emptyOK bool) error {
	switch {
	case name == "" && !emptyOK:
		return fmt.Errorf("%w: empty %s", ErrInvalidName, kind)
	case len(name) > maxShortString:
		return fmt.Errorf("%w: %s of %d bytes, AMQP allows %d", ErrInvalidName, kind, len(name), maxShortString)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %s %q is not UTF-8", ErrInvalidName, kind, name)
	}
	return nil
}

// validProperties rejects what amqp091-go cannot encode, before it is sent:
// an encoding failure would otherwise close the whole connection, again after
// every reconnect; and a delivery mode that does not exist, which the broker
// lines treat differently. It returns the size of the message's header frame.
func validProperties(pub amqp091.Publishing) (headerFrame int, err error) {
	// An array, not a map: this runs for every message.
	for _, f := range [...]struct{ name, value string }{
		{"content type", pub.ContentType}, {"content encoding", pub.ContentEncoding},
		{"correlation id", pub.CorrelationId}, {"reply to", pub.ReplyTo}, {"expiration", pub.Expiration},
		{"message id", pub.MessageId}, {"type", pub.Type}, {"user id", pub.UserId}, {"app id", pub.AppId},
	} {
		if len(f.value) > maxShortString {
			return 0, fmt.Errorf("%s of %d bytes, AMQP allows %d", f.name, len(f.value), maxShortString)
		}
	}
	if pub.DeliveryMode > amqp091.Persistent {
		// RabbitMQ 3.10 refuses it, closing the channel without naming the
		// message; 4.x takes it and stores the message as transient, which
		// a Marshaler that meant it persistent would never hear of.
		return 0, fmt.Errorf("delivery mode %d: AMQP has 1 (transient) and 2 (persistent), 0 meaning the default (transient)", pub.DeliveryMode)
	}
	if err := pub.Headers.Validate(); err != nil { // the value types amqp091-go writes
		return 0, fmt.Errorf("headers: %w", err)
	}
	return headerFrameSize(pub) // and the names, on the same walk as the size
}

// loginUser is the user every URI logs in as (with PLAIN or AMQPLAIN
// credentials), or "" when that is unknown (EXTERNAL, a mechanism of the
// user's) or not the same for all.
func loginUser(cfg *settings) string {
	if ac := cfg.AMQP.AMQPConfig; ac != nil && len(ac.SASL) > 0 {
		switch auth := ac.SASL[0].(type) {
		case *amqp091.PlainAuth:
			return auth.Username
		case *amqp091.AMQPlainAuth:
			return auth.Username
		}
		return ""
	}
	login := ""
	for i, uri := range append([]string{cfg.AMQP.URI}, cfg.FailoverURIs...) {
		u, err := amqp091.ParseURI(uri)
		if err != nil || slices.ContainsFunc(u.AuthMechanism, isExternal) {
			return ""
		}
		if i > 0 && u.Username != login {
			return ""
		}
		login = u.Username
	}
	return login
}

func isExternal(mechanism string) bool { return strings.EqualFold(mechanism, "external") }
