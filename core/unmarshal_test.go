package core

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A quorum queue's redelivery carries x-delivery-count as an integer, a
// dead-lettered message x-death as a list of tables: watermill-amqp's
// DefaultMarshaler refuses both, which made such a message come back for
// ever without reaching a handler.
func TestUnmarshalBrokerHeaders(t *testing.T) {
	d := amqp091.Delivery{
		MessageId: "m1",
		Body:      []byte("payload"),
		Headers: amqp091.Table{
			"_watermill_message_uuid": "uuid-1",
			"x-delivery-count":        int64(3),
			"x-death":                 []any{amqp091.Table{"count": int64(1), "queue": "q", "reason": "rejected"}},
			"at":                      time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC),
			"app":                     "kept as it is",
		},
	}
	// A marshaler of strings only (watermill-amqp's DefaultMarshaler) is
	// given strings at once.
	calls := 0
	stringsOnly := marshalerFunc(func(d amqp091.Delivery) (*message.Message, error) {
		calls++
		msg := message.NewMessage("", d.Body)
		for k, v := range d.Headers {
			s, ok := v.(string)
			if !ok {
				return nil, errors.New("not a string")
			}
			if k == "_watermill_message_uuid" {
				msg.UUID = s
				continue
			}
			msg.Metadata.Set(k, s)
		}
		return msg, nil
	})
	msg, err := unmarshal(stringsOnly, true, d)
	if err != nil || calls != 1 {
		t.Fatalf("strings-only marshaler: %v after %d calls, want one", err, calls)
	}
	if msg.UUID != "uuid-1" || msg.Metadata.Get("x-delivery-count") != "3" || msg.Metadata.Get("app") != "kept as it is" ||
		msg.Metadata.Get("at") != "2026-11-26T00:00:00Z" || msg.Metadata.Get("x-death") != `[{"count":1,"queue":"q","reason":"rejected"}]` {
		t.Fatalf("metadata %v", msg.Metadata)
	}
	if _, ok := d.Headers["x-delivery-count"].(int64); !ok {
		t.Fatal("the delivery itself was changed: it is acked or nacked as it came")
	}

	// Another marshaler sees the headers as they came, when it can read them.
	var seen any
	custom := marshalerFunc(func(d amqp091.Delivery) (*message.Message, error) {
		seen = d.Headers["x-delivery-count"]
		return message.NewMessage(d.MessageId, d.Body), nil
	})
	if _, err := unmarshal(custom, false, d); err != nil || seen != int64(3) {
		t.Fatalf("custom marshaler saw %#v (%v), want the integer", seen, err)
	}
	// And strings when it cannot.
	picky := marshalerFunc(func(d amqp091.Delivery) (*message.Message, error) {
		if !allStrings(d.Headers) {
			return nil, errors.New("not a string")
		}
		return message.NewMessage(d.MessageId, d.Body), nil
	})
	if _, err := unmarshal(picky, false, d); err != nil {
		t.Fatalf("picky marshaler: %v", err)
	}
}

type marshalerFunc func(amqp091.Delivery) (*message.Message, error)

func (f marshalerFunc) Marshal(*message.Message) (amqp091.Publishing, error) {
	return amqp091.Publishing{}, nil
}
func (f marshalerFunc) Unmarshal(d amqp091.Delivery) (*message.Message, error) { return f(d) }
