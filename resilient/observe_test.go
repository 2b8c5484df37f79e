package resilient_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// logText is everything logs captured, one line each, to check what was
// logged (never a password).
func logText(logs *watermill.CaptureLoggerAdapter) string {
	var b strings.Builder
	for level, msgs := range logs.Captured() {
		for _, m := range msgs {
			fmt.Fprintf(&b, "%d %s err=%v %v\n", level, m.Msg, m.Err, m.Fields)
		}
	}
	return b.String()
}

// eventQueue holds the events of the kinds it was made for, in order, for
// a test to await what the subscriber does: tests synchronise on events,
// never on log text.
type eventQueue chan resilient.Event

// newEventQueue returns a queue and the OnEvent that fills it with the
// events of kinds (none dropped while it has room for 64).
func newEventQueue(kinds ...resilient.EventKind) (eventQueue, func(resilient.Event)) {
	q := make(eventQueue, 64)
	return q, func(e resilient.Event) {
		for _, k := range kinds {
			if e.Kind == k {
				select {
				case q <- e:
				default:
				}
			}
		}
	}
}

// await returns the next event of kind, skipping others; a minute without
// one fails the test.
func (q eventQueue) await(t *testing.T, kind resilient.EventKind) resilient.Event {
	t.Helper()
	deadline := time.NewTimer(time.Minute)
	defer deadline.Stop()
	for {
		select {
		case e := <-q:
			if e.Kind == kind {
				return e
			}
		case <-deadline.C:
			t.Fatalf("no %s event in a minute", kind)
		}
	}
}
