package core

import (
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// When a message going back to its queue is its last time there, as far as
// the queue's arguments, the delivery's count and the broker's version tell.
func TestDeliveryLimitLast(t *testing.T) {
	quorum := amqp091.Table{"x-queue-type": "quorum"}
	withLimit := func(limit any, more ...string) amqp091.Table {
		t := amqp091.Table{"x-queue-type": "quorum", "x-delivery-limit": limit}
		if len(more) > 0 {
			t["x-dead-letter-exchange"] = more[0]
		}
		return t
	}
	delivery := func(count any) amqp091.Delivery {
		if count == nil {
			return amqp091.Delivery{}
		}
		return amqp091.Delivery{Headers: amqp091.Table{"x-delivery-count": count}}
	}
	for _, c := range []struct {
		name  string
		args  amqp091.Table
		count any
		major int
		last  bool
		says  string
	}{
		{"4.x default, first delivery", quorum, nil, 4, false, ""},
		{"4.x default, count 19", quorum, int64(19), 4, false, ""},
		{"4.x default, count 20", quorum, int64(20), 4, true, "RabbitMQ 4's default"},
		{"3.x, no limit set", quorum, int64(50), 3, false, ""},
		{"unknown version, no limit set", quorum, int64(50), 0, false, ""},
		{"limit set, 3.x", withLimit(int32(3)), int64(3), 3, true, "its x-delivery-limit"},
		{"limit set below the count", withLimit(int64(3)), int32(2), 4, false, ""},
		{"limit 0, first delivery", withLimit(int16(0)), nil, 4, true, "limit is 0"},
		{"no limit (-1)", withLimit(int32(-1)), int64(500), 4, false, ""},
		{"dead-letter exchange", withLimit(int32(1), "dlx"), int64(1), 4, true, `dead-lettered to exchange "dlx"`},
		{"no dead-letter exchange", quorum, int64(20), 4, true, "dropped, unless a policy"},
		{"not declared quorum, counted", amqp091.Table{}, int64(20), 4, true, ""},
		{"not declared quorum, not counted", amqp091.Table{"x-delivery-limit": int32(0)}, nil, 4, false, ""},
		{"classic, no arguments", nil, nil, 4, false, ""},
	} {
		why, last := newDeliveryLimit(c.args).last(delivery(c.count), c.major)
		if last != c.last || !strings.Contains(why, c.says) {
			t.Errorf("%s: last %v (%q), want %v saying %q", c.name, last, why, c.last, c.says)
		}
	}
}
