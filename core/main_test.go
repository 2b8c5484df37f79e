package core

import (
	"testing"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// Most tests here need no broker (a scripted peer stands in for it); the
// few that do are marked with brokertest.Need. Goroutine leaks fail the run.
func TestMain(m *testing.M) {
	brokertest.Main(m, nil)
}
