package core

import (
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// leanPublishing is msg's publishing on the lean wire when the Marshaler is
// watermill-amqp's DefaultMarshaler without PostprocessPublishing
// (w.FreshHeaders) and msg has no metadata: its body, its UUID as
// message_id, the Marshaler's delivery mode, no header table. That is what
// Marshal and dropUUIDHeader would make of it, without the table and the
// boxed UUID made only to be dropped, for every message. ok is false where
// the Marshaler must run.
func leanPublishing(msg *message.Message, w *Wiring) (pub amqp091.Publishing, ok bool) {
	if !w.FreshHeaders || len(msg.Metadata) > 0 {
		return amqp091.Publishing{}, false
	}
	return amqp091.Publishing{Body: msg.Payload, DeliveryMode: w.DeliveryMode, MessageId: msg.UUID}, true
}

// dropUUIDHeader leaves w.UUIDHeader out of pub, the publishing of the
// message uuid, when its message_id carries that UUID already
// (Config.UUIDInMessageIDOnly): the broker parses and stores every header
// table, and this header only repeats message_id. Where message_id is
// another (a Marshaler's own), or the header holds something else under
// that name, the header is the UUID's only carrier, or not the UUID at
// all: it stays.
func dropUUIDHeader(pub *amqp091.Publishing, uuid string, w *Wiring) {
	if w.UUIDHeader == "" || pub.MessageId != uuid {
		return
	}
	if v, ok := pub.Headers[w.UUIDHeader].(string); !ok || v != uuid {
		return
	}
	switch {
	case len(pub.Headers) == 1:
		// No table at all, rather than an empty one: the lean wire.
		pub.Headers = nil
	case w.FreshHeaders:
		delete(pub.Headers, w.UUIDHeader)
	default:
		// A Marshaler of the user's may hand out a table it keeps, or the
		// same one for every message, read by other Publish calls at the
		// same time: a copy without the header, never a change to it.
		headers := make(amqp091.Table, len(pub.Headers)-1)
		for k, v := range pub.Headers {
			if k != w.UUIDHeader {
				headers[k] = v
			}
		}
		pub.Headers = headers
	}
}
