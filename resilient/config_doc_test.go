package resilient

import (
	"reflect"
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/core"
	"github.com/resilientmq/watermill-rabbitmq/internal/doortest"
)

// go doc on Config shows no fields (a defined type over core.Config): its
// doc lists them, and must list each one core.Config has.
func TestConfigDocListsEveryField(t *testing.T) {
	doortest.ConfigDocListsEveryField(t, "resilient.go", reflect.TypeFor[core.Config[amqp.Config]]())
}
