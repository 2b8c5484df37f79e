package core

import (
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The header frame of a message carries its properties and headers, and
// cannot be split: one larger than the connection's frame_max makes the
// broker close the whole connection (501 FRAME_ERROR), again on every
// reconnect if the message were sent again. Its size is known before
// sending, so such a message fails alone, at once, with ErrMessageTooLarge.

// frameOverhead is a frame's type, channel and size before its payload, and
// its end octet after.
const frameOverhead = 8

// headerFrameSize is the size of the header frame amqp091-go writes for
// pub, overhead included. The walk that sizes the headers also checks
// their names, at every depth: one longer than a shortstr cannot be
// encoded (amqp091-go would fail the whole connection on it).
func headerFrameSize(pub amqp091.Publishing) (int, error) {
	n := frameOverhead + 14 // class, weight, body size, property flags
	for _, s := range [...]string{
		pub.ContentType, pub.ContentEncoding, pub.CorrelationId, pub.ReplyTo,
		pub.Expiration, pub.MessageId, pub.Type, pub.UserId, pub.AppId,
	} {
		if s != "" {
			n += 1 + len(s)
		}
	}
	if len(pub.Headers) > 0 {
		size, err := tableSize(pub.Headers)
		if err != nil {
			return 0, err
		}
		n += 4 + size
	}
	if pub.DeliveryMode != 0 {
		n++
	}
	if pub.Priority != 0 {
		n++
	}
	if !pub.Timestamp.IsZero() {
		n += 8
	}
	return n, nil
}

// tableSize is the size of t encoded as an AMQP field table, without its
// own length.
func tableSize(t amqp091.Table) (int, error) {
	n := 0
	for k, v := range t {
		if len(k) > maxShortString {
			return 0, fmt.Errorf("header name of %d bytes, AMQP allows %d", len(k), maxShortString)
		}
		size, err := fieldSize(v)
		if err != nil {
			return 0, err
		}
		n += 1 + len(k) + size
	}
	return n, nil
}

// fieldSize is the size of v encoded as a field value, its type octet
// included (amqp091-go's writeField).
func fieldSize(v any) (int, error) {
	switch v := v.(type) {
	case bool, byte, int8:
		return 2, nil
	case int16, uint16:
		return 3, nil
	case int, int32, uint32, float32:
		return 5, nil
	case int64, float64, time.Time:
		return 9, nil
	case amqp091.Decimal:
		return 6, nil
	case string:
		return 5 + len(v), nil
	case []byte:
		return 5 + len(v), nil
	case []any:
		n := 5
		for _, e := range v {
			size, err := fieldSize(e)
			if err != nil {
				return 0, err
			}
			n += size
		}
		return n, nil
	case amqp091.Table:
		size, err := tableSize(v)
		return 5 + size, err
	case nil:
		return 1, nil
	}
	return 0, fmt.Errorf("header value of type %T, which AMQP cannot carry", v)
}
