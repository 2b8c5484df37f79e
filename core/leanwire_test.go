package core

import (
	"errors"
	"maps"
	"reflect"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// uuidHeader is watermill-amqp's DefaultMessageUUIDHeaderKey, which the
// doors set as Wiring.UUIDHeader (the core imports neither version).
const uuidHeader = "_watermill_message_uuid"

// headerMarshaler marshals as watermill-amqp's DefaultMarshaler does (every
// metadata entry a header, the UUID in header too, persistent), and
// unmarshals as it does (the UUID from header only, "" without it).
type headerMarshaler struct {
	header string
	// shared, when set, is the one table Marshal returns for every message,
	// as a Marshaler of the user's may: no one may change it.
	shared amqp091.Table
	// messageID, when set, is the message_id Marshal sets.
	messageID string
	// deliveryMode, when set, is the delivery mode Marshal sets, else
	// persistent.
	deliveryMode *uint8
}

func (m headerMarshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	headers := m.shared
	if headers == nil {
		headers = make(amqp091.Table, len(msg.Metadata)+1)
		for k, v := range msg.Metadata {
			headers[k] = v
		}
		headers[m.header] = msg.UUID
	}
	mode := amqp091.Persistent
	if m.deliveryMode != nil {
		mode = *m.deliveryMode
	}
	return amqp091.Publishing{Body: msg.Payload, Headers: headers, DeliveryMode: mode, MessageId: m.messageID}, nil
}

func (m headerMarshaler) Unmarshal(d amqp091.Delivery) (*message.Message, error) {
	uuid, _ := d.Headers[m.header].(string)
	msg := message.NewMessage(uuid, d.Body)
	for k, v := range d.Headers {
		s, ok := v.(string)
		if !ok {
			return nil, errors.New("not a string")
		}
		if k != m.header {
			msg.Metadata.Set(k, s)
		}
	}
	return msg, nil
}

// leanPublisher is a Publisher that can prepare messages, no more: no
// connection, no broker.
func leanPublisher(on bool, w Wiring) *Publisher {
	w.ExchangeName = func(string) string { return "" }
	w.RoutingKey = func(topic string) string { return topic }
	return &Publisher{cfg: newSettings(Config[struct{}]{UUIDInMessageIDOnly: on}, w, "test")}
}

func prepareOne(t *testing.T, p *Publisher, msg *message.Message) *outgoing {
	t.Helper()
	batch, err := p.prepare("topic", []*message.Message{msg})
	if err != nil || len(batch) != 1 {
		t.Fatalf("prepare: %v", err)
	}
	return batch[0]
}

func withMetadata(uuid string, metadata map[string]string) *message.Message {
	msg := message.NewMessage(uuid, []byte("body"))
	for k, v := range metadata {
		msg.Metadata.Set(k, v)
	}
	return msg
}

// Off (the default), a message goes as its Marshaler made it, the UUID in
// header and message_id both. On, the header goes, message_id carries the
// UUID, every other header stays, and a message with no other header goes
// with no table at all. The header frame is sized as sent.
func TestUUIDInMessageIDOnlyDropsTheHeader(t *testing.T) {
	fresh := Wiring{Marshaler: headerMarshaler{header: uuidHeader}, UUIDHeader: uuidHeader, FreshHeaders: true, DeliveryMode: amqp091.Persistent}
	for _, c := range []struct {
		name     string
		on       bool
		metadata map[string]string
		want     amqp091.Table
	}{
		{"off", false, map[string]string{"trace": "t1"}, amqp091.Table{uuidHeader: "u1", "trace": "t1"}},
		{"off, no metadata", false, nil, amqp091.Table{uuidHeader: "u1"}},
		{"on", true, map[string]string{"trace": "t1", "tenant": "a"}, amqp091.Table{"trace": "t1", "tenant": "a"}},
		{"on, no metadata", true, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := prepareOne(t, leanPublisher(c.on, fresh), withMetadata("u1", c.metadata))
			pub := out.publishing
			if pub.MessageId != "u1" {
				t.Errorf("message_id %q, want the UUID", pub.MessageId)
			}
			if !maps.Equal(pub.Headers, c.want) || (c.want == nil) != (pub.Headers == nil) {
				t.Errorf("headers %#v, want %#v", pub.Headers, c.want)
			}
			if size, _ := headerFrameSize(pub); out.headerFrame != size {
				t.Errorf("header frame sized %d, sent %d", out.headerFrame, size)
			}
		})
	}
}

// A table the Marshaler may still hold (it is not known to make a fresh
// one per message) is copied without the header, never changed: here one
// table shared by every message, as Publish calls on other goroutines
// would read it.
func TestUUIDInMessageIDOnlyLeavesTheMarshalersTableAlone(t *testing.T) {
	shared := amqp091.Table{uuidHeader: "u1", "trace": "t1"}
	p := leanPublisher(true, Wiring{Marshaler: headerMarshaler{header: uuidHeader, shared: shared}, UUIDHeader: uuidHeader})
	pub := prepareOne(t, p, withMetadata("u1", nil)).publishing
	if !maps.Equal(pub.Headers, amqp091.Table{"trace": "t1"}) {
		t.Errorf("headers sent %#v, want trace only", pub.Headers)
	}
	if !maps.Equal(shared, amqp091.Table{uuidHeader: "u1", "trace": "t1"}) {
		t.Errorf("the Marshaler's table changed: %#v", shared)
	}

	// Its only header: nothing sent, the table untouched.
	only := amqp091.Table{uuidHeader: "u1"}
	p = leanPublisher(true, Wiring{Marshaler: headerMarshaler{header: uuidHeader, shared: only}, UUIDHeader: uuidHeader})
	if pub := prepareOne(t, p, withMetadata("u1", nil)).publishing; pub.Headers != nil || len(only) != 1 {
		t.Errorf("headers sent %#v, the Marshaler's table now %#v", pub.Headers, only)
	}
}

// The header stays wherever dropping it would lose the UUID or something
// else: a message_id of the Marshaler's own, a header of that name not
// holding the UUID. A DefaultMarshaler's MessageUUIDHeaderKey of the
// user's is the header dropped.
func TestUUIDInMessageIDOnlyKeepsWhatIsNotARepeat(t *testing.T) {
	// (Not the DefaultMarshaler, which sets no message_id: its tables are
	// not known to be fresh.)
	own := leanPublisher(true, Wiring{Marshaler: headerMarshaler{header: uuidHeader, messageID: "order-7"}, UUIDHeader: uuidHeader})
	if pub := prepareOne(t, own, withMetadata("u1", nil)).publishing; pub.MessageId != "order-7" || pub.Headers[uuidHeader] != "u1" {
		t.Errorf("a Marshaler's own message_id: sent %q and headers %#v, want both kept", pub.MessageId, pub.Headers)
	}

	other := amqp091.Table{uuidHeader: "not the UUID"}
	p := leanPublisher(true, Wiring{Marshaler: headerMarshaler{header: uuidHeader, shared: other}, UUIDHeader: uuidHeader})
	if pub := prepareOne(t, p, withMetadata("u1", nil)).publishing; pub.Headers[uuidHeader] != "not the UUID" {
		t.Errorf("a header not holding the UUID: sent %#v", pub.Headers)
	}

	custom := leanPublisher(true, Wiring{Marshaler: headerMarshaler{header: "x-id"}, UUIDHeader: "x-id", FreshHeaders: true})
	if pub := prepareOne(t, custom, withMetadata("u1", map[string]string{uuidHeader: "app's"})).publishing; !maps.Equal(pub.Headers, amqp091.Table{uuidHeader: "app's"}) {
		t.Errorf("a custom UUID header: sent %#v, want it dropped and the rest kept", pub.Headers)
	}
}

// On, with a Marshaler that makes a fresh table per message, preparing a
// message costs no allocation more than off: the header is deleted in
// place, or the table dropped.
func TestUUIDInMessageIDOnlyAllocatesNothingMore(t *testing.T) {
	w := Wiring{Marshaler: headerMarshaler{header: uuidHeader}, UUIDHeader: uuidHeader, FreshHeaders: true, DeliveryMode: amqp091.Persistent}
	msgs := []*message.Message{withMetadata("u1", map[string]string{"trace": "t1"})}
	allocs := func(on bool) float64 {
		p := leanPublisher(on, w)
		return testing.AllocsPerRun(100, func() {
			if _, err := p.prepare("topic", msgs); err != nil {
				t.Fatal(err)
			}
		})
	}
	if off, on := allocs(false), allocs(true); on > off {
		t.Errorf("%v allocations per prepare on, %v off", on, off)
	}
}

// With the DefaultMarshaler (FreshHeaders), a message without metadata is
// built directly on the lean wire: the same publishing as the Marshaler's
// with the header dropped, in either delivery mode, for fewer allocations.
func TestUUIDInMessageIDOnlyBuildsWhatTheMarshalerWould(t *testing.T) {
	for _, mode := range []uint8{amqp091.Persistent, 0} {
		marshaled := headerMarshaler{header: uuidHeader, deliveryMode: &mode}
		built := leanPublisher(true, Wiring{Marshaler: marshaled, UUIDHeader: uuidHeader, FreshHeaders: true, DeliveryMode: mode})
		viaMarshaler := leanPublisher(true, Wiring{Marshaler: marshaled, UUIDHeader: uuidHeader})
		msg := withMetadata("u1", nil)
		got, want := prepareOne(t, built, msg), prepareOne(t, viaMarshaler, msg)
		if !reflect.DeepEqual(got.publishing, want.publishing) || got.headerFrame != want.headerFrame {
			t.Errorf("delivery mode %d: built %+v (header frame %d), the Marshaler's %+v (%d)",
				mode, got.publishing, got.headerFrame, want.publishing, want.headerFrame)
		}
		allocs := func(p *Publisher) float64 {
			return testing.AllocsPerRun(100, func() { prepareOne(t, p, msg) })
		}
		if a, b := allocs(built), allocs(viaMarshaler); a >= b {
			t.Errorf("delivery mode %d: %v allocations built, %v through the Marshaler", mode, a, b)
		}
	}
}

// What such a message gives a handler of this package's Subscriber: the
// UUID from message_id, every metadata entry from the other headers, the
// same as with the header.
func TestUUIDInMessageIDOnlyReadBack(t *testing.T) {
	m := headerMarshaler{header: uuidHeader}
	for _, c := range []struct {
		name    string
		headers amqp091.Table
		want    map[string]string
	}{
		{"with the header", amqp091.Table{uuidHeader: "u1", "trace": "t1"}, map[string]string{"trace": "t1"}},
		{"without it", amqp091.Table{"trace": "t1"}, map[string]string{"trace": "t1"}},
		{"no table", nil, map[string]string{}},
	} {
		for _, stringsOnly := range []bool{true, false} {
			msg, err := unmarshal(m, stringsOnly, amqp091.Delivery{MessageId: "u1", Headers: c.headers, Body: []byte("body")})
			if err != nil || msg.UUID != "u1" || !maps.Equal(msg.Metadata, message.Metadata(c.want)) {
				t.Errorf("%s (strings only %v): UUID %q, metadata %v, %v", c.name, stringsOnly, msg.UUID, msg.Metadata, err)
			}
		}
	}
}
