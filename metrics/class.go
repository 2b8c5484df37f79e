package metrics

import "github.com/resilientmq/watermill-rabbitmq/core"

// classes are the values core.ErrorClass returns: the only values of the
// class and cause labels. Taken from core, so that a class added there is
// never counted as "other" here.
var classes = func() map[string]bool {
	m := map[string]bool{}
	for _, c := range core.ErrorClasses() {
		m[c] = true
	}
	return m
}()

// class is the label value for err: its core.ErrorClass, or "other"
// for a class this package does not know (the label stays bounded) and for
// a nil error.
func class(err error) string {
	if c := core.ErrorClass(err); classes[c] {
		return c
	}
	return "other"
}
