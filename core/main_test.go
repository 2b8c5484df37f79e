package core

import (
	"testing"

	"go.uber.org/goleak"
)

// No test here needs a broker: a scripted AMQP peer (peer_test.go) or a
// scripted lane (attempt_test.go) stands in for it, so the package runs
// where no RabbitMQ does. Goroutine leaks fail the run.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
