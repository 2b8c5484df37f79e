package core

import (
	"errors"
	"fmt"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// lastRefusal is the broker's refusal a retry loop last heard (the
// supervisor's dials, a subscription's attaches), so that one that lasts is
// logged at ERROR once, and again only when its reason changes: the next
// step refused once an operator fixed the first.
type lastRefusal string

// isNew reports whether err is a refusal other than the last one, and
// remembers it.
func (r *lastRefusal) isNew(err error) bool {
	key := lastRefusal(refusalKey(err))
	if key == *r {
		return false
	}
	*r = key
	return true
}

// refusalKey tells two refusals apart: the broker's reply (its code and
// text, which names the step and the resource refused), not the words our
// side wraps it in (the declaration and the consume wrap the same reply
// differently); the error's class when the broker gave no reply.
func refusalKey(err error) string {
	var reply *amqp091.Error
	if errors.As(err, &reply) {
		return fmt.Sprintf("%d %s", reply.Code, reply.Reason)
	}
	return ErrorClass(err)
}
