package brokertest

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// uuidHeader is the header watermill-amqp's DefaultMarshaler (v2 and v3)
// writes a message's UUID in.
const uuidHeader = "_watermill_message_uuid"

// MessagesWithMetadata returns n new messages (payloads as Messages'),
// each but every third with metadata of its own (its index, a trace ID),
// for checks that metadata round-trips. Every third has none: leaving the
// UUID header out, a publisher sends it without a header table.
func MessagesWithMetadata(n int) []*message.Message {
	msgs, _ := Messages(n)
	for i, m := range msgs {
		if i%3 != 2 {
			m.Metadata.Set("index", strconv.Itoa(i))
			m.Metadata.Set("trace_id", watermill.NewUUID())
		}
	}
	return msgs
}

// RequireUUIDInMessageIDOnly takes every message of sent out of queue, as
// it lay on the broker, and fails the test for one carrying the UUID
// header, or a message_id that is not its UUID, or a header table where its
// message had no metadata, or one not persistent (the DefaultMarshaler's
// mode, which the lean wire keeps). It acks them: given back, they would
// come again redelivered, which a subscriber may note in their metadata
// (watermill-amqp v3's does).
func RequireUUIDInMessageIDOnly(t testing.TB, queue string, sent []*message.Message) {
	t.Helper()
	byUUID := make(map[string]*message.Message, len(sent))
	for _, m := range sent {
		byUUID[m.UUID] = m
	}
	conn := Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	for range sent {
		d, ok, err := ch.Get(queue, true)
		if err != nil || !ok {
			t.Fatalf("queue %s: get: %v (a message there: %v)", queue, err, ok)
		}
		m := byUUID[d.MessageId]
		switch _, hasUUID := d.Headers[uuidHeader]; {
		case m == nil:
			t.Errorf("message_id %q is no UUID sent", d.MessageId)
		case hasUUID:
			t.Errorf("%s carries the UUID header: %v", m.UUID, d.Headers)
		case len(m.Metadata) == 0 && d.Headers != nil:
			t.Errorf("%s, without metadata, has a header table: %v", m.UUID, d.Headers)
		case d.DeliveryMode != amqp091.Persistent:
			t.Errorf("%s lay on the broker in delivery mode %d, not persistent as its Marshaler makes it", m.UUID, d.DeliveryMode)
		}
	}
}

// RequireReceived reads from out until it has a message with each payload
// of sent (bounded by progress, StallBound), acking every one, duplicates
// too. It fails the test for a message whose metadata differs from the one
// sent, or whose UUID is not uuid(the one sent): its UUID, or "" for a
// subscriber that cannot know it.
func RequireReceived(t testing.TB, out <-chan *message.Message, sent []*message.Message, uuid func(sent *message.Message) string) {
	t.Helper()
	byPayload := make(map[string]*message.Message, len(sent))
	for _, m := range sent {
		byPayload[string(m.Payload)] = m
	}
	received := make(map[string]bool, len(sent))
	stall := time.NewTimer(StallBound)
	defer stall.Stop()
	for len(received) < len(sent) {
		select {
		case got, ok := <-out:
			if !ok {
				t.Fatalf("the subscriber's channel closed after %d of %d messages", len(received), len(sent))
			}
			got.Ack()
			stall.Reset(StallBound)
			want := byPayload[string(got.Payload)]
			if want == nil {
				t.Errorf("received a message not sent: %q", got.Payload)
				continue
			}
			received[string(got.Payload)] = true
			if problem := differs(got, want, uuid(want)); problem != "" {
				t.Errorf("%s (sent as %s): %s", got.Payload, want.UUID, problem)
			}
		case <-stall.C:
			t.Fatalf("received %d of %d messages, then none for %s", len(received), len(sent), StallBound)
		}
	}
}

func differs(got, want *message.Message, uuid string) string {
	if got.UUID != uuid {
		return fmt.Sprintf("UUID %q, want %q", got.UUID, uuid)
	}
	if !maps.Equal(got.Metadata, want.Metadata) {
		return fmt.Sprintf("metadata %v, want %v", got.Metadata, want.Metadata)
	}
	return ""
}

// RequireLeanRoundTrip publishes messages with and without metadata to
// topic, whose queue is queue, through pub (set to leave the UUID header
// out): a first lot it checks as they lie in the queue
// (RequireUUIDInMessageIDOnly), a second it consumes through sub, checking
// each (RequireReceived, with uuid).
func RequireLeanRoundTrip(t testing.TB, pub message.Publisher, sub message.Subscriber, topic, queue string, uuid func(sent *message.Message) string) {
	t.Helper()
	publish := func(msgs []*message.Message) {
		for i := 0; i < len(msgs); i += 10 {
			if err := pub.Publish(topic, msgs[i:min(i+10, len(msgs))]...); err != nil {
				t.Fatalf("Publish: %v", err)
			}
		}
	}
	onWire := MessagesWithMetadata(30)
	publish(onWire)
	RequireUUIDInMessageIDOnly(t, queue, onWire)
	sent := MessagesWithMetadata(150)
	publish(sent)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	RequireReceived(t, out, sent, uuid)
}
