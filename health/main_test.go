package health_test

import (
	"testing"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

func TestMain(m *testing.M) {
	brokertest.Main(m, nil)
}
