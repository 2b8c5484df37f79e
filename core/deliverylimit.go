package core

import (
	"fmt"
	"strconv"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// defaultDeliveryLimit is a quorum queue's delivery limit on RabbitMQ 4.x
// when neither an x-delivery-limit argument nor a policy sets one (3.x has
// none by default).
const defaultDeliveryLimit = 20

// deliveryLimit is what a subscription knows of its queue's delivery limit:
// a quorum queue counts the times a message went back to it (a nack with
// requeue; on RabbitMQ 4.0 a consumer's channel closing with it unacked
// too) in x-delivery-count, and once a message that was delivered with a
// count of limit goes back, the broker drops it, or dead-letters it when
// the queue has a dead-letter exchange. The broker says nothing to the
// consumer: what the subscription knows comes from the queue's arguments in
// its config, the delivery's count, and the broker's version. A policy's
// delivery-limit or dead-letter-exchange is not visible to it.
type deliveryLimit struct {
	quorum     bool  // declared with x-queue-type quorum
	limit      int64 // its x-delivery-limit, if limitSet; negative: none
	limitSet   bool
	deadLetter string // its x-dead-letter-exchange, if dlxSet
	dlxSet     bool
}

func newDeliveryLimit(args amqp091.Table) deliveryLimit {
	var q deliveryLimit
	q.quorum = args["x-queue-type"] == "quorum"
	q.limit, q.limitSet = headerInt(args["x-delivery-limit"])
	q.deadLetter, q.dlxSet = args["x-dead-letter-exchange"].(string)
	return q
}

// last reports whether d going back to the queue ends it there (dropped or
// dead-lettered) rather than requeues it, as far as the subscription can
// tell, and why; brokerMajor is the broker's major version (0: unknown).
func (q deliveryLimit) last(d amqp091.Delivery, brokerMajor int) (why string, last bool) {
	count, counted := headerInt(d.Headers["x-delivery-count"])
	if !q.quorum && !counted {
		return "", false // not a quorum queue, as far as anyone can tell
	}
	limit, source := q.limit, "its x-delivery-limit"
	switch {
	case q.limitSet:
	case brokerMajor >= 4:
		limit, source = defaultDeliveryLimit, fmt.Sprintf("RabbitMQ %d's default for quorum queues", brokerMajor)
	default:
		return "", false // RabbitMQ 3.x: no limit unless one is set
	}
	if limit < 0 || count < limit {
		return "", false
	}
	fate := "it is dropped, unless a policy gives the queue a dead-letter exchange"
	if q.dlxSet {
		fate = fmt.Sprintf("it is dead-lettered to exchange %q", q.deadLetter)
	}
	return fmt.Sprintf("delivered %d time(s) before (x-delivery-count), and the queue's delivery limit is %d (%s): the broker does not requeue it, %s",
		count, limit, source, fate), true
}

// headerInt reads an AMQP integer (any width), as the broker sends counts.
func headerInt(v any) (int64, bool) {
	switch v := v.(type) {
	case int8:
		return int64(v), true
	case int16:
		return int64(v), true
	case int32:
		return int64(v), true
	case int64:
		return v, true
	case int:
		return int64(v), true
	case uint8:
		return int64(v), true
	case uint16:
		return int64(v), true
	case uint32:
		return int64(v), true
	}
	return 0, false
}

// brokerMajor is the major version of the broker at the other end of
// conn, from its version property ("4.0.5"), or 0 when it does not say.
func brokerMajor(conn *amqp091.Connection) int {
	v, _ := conn.Properties["version"].(string)
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}
