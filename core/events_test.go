package core

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// ErrorClass gives a bounded label: a sentinel's name, or how a connection
// was lost; never the error's own text.
func TestErrorClass(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&PublishError{Err: fmt.Errorf("%w: %w", ErrNotConfirmed, context.DeadlineExceeded)}, "not_confirmed"},
		{fmt.Errorf("%w 4 time(s)", ErrNacked), "nacked"},
		{fmt.Errorf("%w: x509: certificate signed by unknown authority", ErrTLS), "tls"},
		{classifyBroker(&amqp091.Error{Code: 404, Reason: "NOT_FOUND - no exchange 'x'", Server: true}), "not_found"},
		{&amqp091.Error{Code: 320, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}, "broker"},
		{&amqp091.Error{Code: 501, Reason: "read tcp 127.0.0.1:1->127.0.0.1:2: i/o timeout"}, "heartbeat"},
		{&amqp091.Error{Code: 501, Reason: "read: connection reset by peer"}, "network"},
		{fmt.Errorf("dial: %w", os.ErrDeadlineExceeded), "heartbeat"},
		{errors.New("something of a user's"), "other"},
	} {
		if got := ErrorClass(c.err); got != c.want {
			t.Errorf("ErrorClass(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
