package metrics

import "github.com/resilientmq/watermill-rabbitmq/core"

// classes are the values core.ErrorClass documents: the only values of
// the class and cause labels.
var classes = map[string]bool{
	"not_confirmed": true, "nacked": true, "unroutable": true, "access_refused": true,
	"not_found": true, "precondition_failed": true, "message_too_large": true,
	"invalid_name": true, "nil_message": true, "marshal": true, "config": true,
	"tls": true, "closed": true, "heartbeat": true, "network": true, "broker": true,
	"other": true,
}

// class is the label value for err: its core.ErrorClass, or "other"
// for a class this package does not know (the label stays bounded) and for
// a nil error.
func class(err error) string {
	if c := core.ErrorClass(err); classes[c] {
		return c
	}
	return "other"
}
