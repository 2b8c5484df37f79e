package core

import (
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
// pub, overhead included.
func headerFrameSize(pub amqp091.Publishing) int {
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
		n += 4 + tableSize(pub.Headers)
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
	return n
}

// tableSize is the size of t encoded as an AMQP field table, without its
// own length.
func tableSize(t amqp091.Table) int {
	n := 0
	for k, v := range t {
		n += 1 + len(k) + fieldSize(v)
	}
	return n
}

// fieldSize is the size of v encoded as a field value, its type octet
// included (amqp091-go's writeField).
func fieldSize(v any) int {
	switch v := v.(type) {
	case bool, byte, int8:
		return 2
	case int16, uint16:
		return 3
	case int, int32, uint32, float32:
		return 5
	case int64, float64, time.Time:
		return 9
	case amqp091.Decimal:
		return 6
	case string:
		return 5 + len(v)
	case []byte:
		return 5 + len(v)
	case []any:
		n := 5
		for _, e := range v {
			n += fieldSize(e)
		}
		return n
	case amqp091.Table:
		return 5 + tableSize(v)
	}
	return 1 // nil
}
