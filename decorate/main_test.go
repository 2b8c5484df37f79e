package decorate_test

import (
	"testing"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// The unit tests need no broker; the broker tests (broker_test.go,
// stock_test.go) use the one at $AMQP_URI and sweep what they create.
func TestMain(m *testing.M) {
	brokertest.Main(m, nil)
}
