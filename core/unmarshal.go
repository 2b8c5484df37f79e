package core

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// unmarshal reads a delivery with the configured Marshaler. The broker adds
// headers of its own that are not strings: a quorum queue counts
// redeliveries in x-delivery-count (an integer), dead-lettering adds x-death
// (a list of tables). watermill-amqp's DefaultMarshaler refuses any header
// that is not a string, so every redelivered message of a quorum queue
// would fail, be nacked, and come back for ever, never reaching a handler.
// The marshaler is given a copy of the delivery whose headers are all
// strings (x-delivery-count "3"; tables and lists as JSON): at once for a
// marshaler that reads strings only (stringsOnly: the DefaultMarshaler),
// after a first failure for another one, which sees the headers as they
// came when it can read them. A message the Marshaler finds no UUID in
// (watermill-amqp's header missing: sent with Config.UUIDInMessageIDOnly,
// or by another publisher) gets its AMQP message_id as UUID.
func unmarshal(m Marshaler, stringsOnly bool, d amqp091.Delivery) (*message.Message, error) {
	msg, err := unmarshalHeaders(m, stringsOnly, d)
	if err == nil && msg.UUID == "" {
		msg.UUID = d.MessageId
	}
	return msg, err
}

func unmarshalHeaders(m Marshaler, stringsOnly bool, d amqp091.Delivery) (*message.Message, error) {
	if stringsOnly {
		return m.Unmarshal(withStringHeaders(d))
	}
	msg, err := m.Unmarshal(d)
	if err == nil || allStrings(d.Headers) {
		return msg, err
	}
	return m.Unmarshal(withStringHeaders(d))
}

func allStrings(t amqp091.Table) bool {
	for _, v := range t {
		if _, ok := v.(string); !ok {
			return false
		}
	}
	return true
}

// withStringHeaders returns d with a copy of its headers, each a string.
func withStringHeaders(d amqp091.Delivery) amqp091.Delivery {
	if allStrings(d.Headers) {
		return d
	}
	headers := make(amqp091.Table, len(d.Headers))
	for k, v := range d.Headers {
		headers[k] = headerString(v)
	}
	d.Headers = headers
	return d
}

func headerString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case int8, int16, int32, int64, int, uint8, uint16, uint32, uint64:
		return fmt.Sprint(v)
	case float32:
		return strconv.FormatFloat(float64(v), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339)
	case nil:
		return ""
	}
	if b, err := json.Marshal(v); err == nil {
		return string(b)
	}
	return fmt.Sprint(v)
}
