package core

import (
	"testing"
	"time"
)

// A node left by a Publisher counts for a Subscriber that heard nothing
// since, not for one that heard a delivery after, nor for another node.
func TestNodeLeftSince(t *testing.T) {
	const uri, other = "amqp://guest:xxxxx@10.0.0.1:5672/nodesleft-test", "amqp://guest:xxxxx@10.0.0.2:5672/nodesleft-test"
	before := time.Now()
	noteNodeLeft(uri)
	t.Cleanup(func() { nodesLeft.Delete(uri) })
	if !nodeLeftSince(uri, before) {
		t.Error("left after the last delivery: not reported")
	}
	if nodeLeftSince(uri, time.Now().Add(time.Millisecond)) {
		t.Error("a delivery came after it was left: reported anyway")
	}
	if nodeLeftSince(other, before) {
		t.Error("another node reported as left")
	}
}
