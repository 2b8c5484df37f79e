package metrics

import (
	"testing"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// Every class core.ErrorClass returns is a label value of its own, never
// folded into "other" (as "channel_limit" once was).
func TestEveryErrorClassIsItsOwnLabel(t *testing.T) {
	for _, c := range core.ErrorClasses() {
		if !classes[c] {
			t.Errorf("core's class %q is counted as \"other\"", c)
		}
	}
	if got := class(core.ErrChannelLimit); got != "channel_limit" {
		t.Errorf("class(ErrChannelLimit) = %q, want channel_limit", got)
	}
}
