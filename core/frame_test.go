package core

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// capture records what amqp091-go writes to the broker.
type capture struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// headerFrames returns the sizes of the content header frames (type 2) in
// what was written, overhead included.
func (c *capture) headerFrames(t *testing.T) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buf.Bytes()[8:] // the protocol header
	var sizes []int
	for len(b) >= 7 {
		size := int(binary.BigEndian.Uint32(b[3:7]))
		if b[0] == 2 {
			sizes = append(sizes, 7+size+1)
		}
		b = b[7+size+1:]
	}
	return sizes
}

// headerFrameSize must be what amqp091-go writes, whatever the properties
// and header types: a message whose header frame exceeds frame_max fails
// before it is sent, by that size.
//
// The scripted peer stands in for the broker: what counts is what the
// client writes. A write to net.Pipe returns once the peer read it, so the
// frames are all captured when Publish returns.
func TestHeaderFrameSizeMatchesTheWire(t *testing.T) {
	peer := newScriptedPeer(t)
	var c *capture
	conn, err := amqp091.DialConfig("amqp://guest:guest@peer:5672/", amqp091.Config{Dial: func(network, addr string) (net.Conn, error) {
		raw, err := peer.dial(network, addr)
		c = &capture{Conn: raw}
		return c, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	pubs := []amqp091.Publishing{
		{Body: []byte("x")},
		{ContentType: "application/json", MessageId: "id-1", DeliveryMode: amqp091.Persistent, Priority: 3,
			Timestamp: time.Now(), Type: "t", AppId: "app", UserId: "guest", CorrelationId: "c", ReplyTo: "r", Expiration: "60000", ContentEncoding: "gzip"},
		{Headers: amqp091.Table{
			"s": "string", "b": true, "i": int(7), "i8": int8(1), "i16": int16(2), "i32": int32(3), "i64": int64(4),
			"u8": byte(5), "u16": uint16(6), "u32": uint32(7), "f32": float32(1.5), "f64": 2.5,
			"d": amqp091.Decimal{Scale: 2, Value: 314}, "t": time.Now(), "bytes": []byte("raw"), "nil": nil,
			"table": amqp091.Table{"nested": "yes", "n": int64(1)}, "array": []any{"a", int32(1), nil, []byte("z"), []any{int8(1)}, amqp091.Table{"x": "y"}},
		}},
		{Headers: amqp091.Table{"big": string(make([]byte, 10000))}},
		{Headers: amqp091.Table{}}, // empty, not nil
	}
	for _, pub := range pubs {
		if err := ch.Publish("", "q", false, false, pub); err != nil {
			t.Fatal(err)
		}
	}
	got := c.headerFrames(t)
	if len(got) != len(pubs) {
		t.Fatalf("%d header frames written, want %d", len(got), len(pubs))
	}
	for i, pub := range pubs {
		if want, err := headerFrameSize(pub); err != nil || got[i] != want {
			t.Errorf("publishing %d: %d bytes on the wire, headerFrameSize says %d (%v)", i, got[i], want, err)
		}
	}
}

// A header name too long for a shortstr fails the message at any depth,
// inside a table in a list too, on the walk that sizes the header frame.
func TestHeaderNamesCheckedAtEveryDepth(t *testing.T) {
	long := strings.Repeat("k", maxShortString+1)
	for name, headers := range map[string]amqp091.Table{
		"top level":          {long: "v"},
		"nested table":       {"a": amqp091.Table{long: int32(1)}},
		"table inside array": {"a": []any{"x", amqp091.Table{long: true}}},
	} {
		if _, err := validProperties(amqp091.Publishing{Headers: headers}); err == nil {
			t.Errorf("%s: a %d-byte header name was accepted", name, len(long))
		}
	}
	ok := amqp091.Publishing{Headers: amqp091.Table{"a": []any{amqp091.Table{"b": "c"}}}}
	size, err := validProperties(ok)
	if want, _ := headerFrameSize(ok); err != nil || size != want {
		t.Fatalf("valid headers: %d, %v; want %d", size, err, want)
	}
}
