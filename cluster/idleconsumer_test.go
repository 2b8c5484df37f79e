package cluster_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// An idle consumer of a quorum queue whose leader is on another, healthy,
// node stays where it is. It probes its node (a passive declaration,
// core/idleprobe.go) and leaves when the node counts no consumer of the
// queue three times in a row: that must never happen while the leader
// answers. Checked here the way the probe asks, and end to end: no
// reconnect over the first probes (at about 1, 2, 4 and 8 s of idleness).
func TestIdleConsumerOfARemoteLeaderStays(t *testing.T) {
	c := needCluster(t)
	queue := brokertest.Name("idle-remote-leader")
	args := amqp091.Table{"x-queue-type": "quorum", "x-queue-leader-locator": "client-local"}

	// The queue's leader on node 2: declared there.
	conn, err := amqp091.Dial(c.URI(2))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(queue, false, false, false) })

	var mu sync.Mutex
	var changes []string
	cfg := clientConfig(c, config(c, args), queue+"-sub", func(to string) {
		mu.Lock()
		changes = append(changes, to)
		mu.Unlock()
	})
	cfg.Heartbeat = 0 // the default (10 s): no idle re-attach (5 heartbeats) within the test
	sub, err := resilient.NewSubscriber(cfg, watermill.NewStdLogger(false, false))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	connected := len(changes)
	mu.Unlock()

	// The probe's question, asked through node 1 as the consumer's probe does.
	conn1, err := amqp091.Dial(c.URI(1))
	if err != nil {
		t.Fatal(err)
	}
	defer conn1.Close()
	ch1, err := conn1.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(12 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		q, err := ch1.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if q.Consumers != 1 {
			t.Fatalf("try %d: node 1 counts %d consumers of %s (leader on node 2), want 1: the probe would leave a healthy node", i, q.Consumers, queue)
		}
		select {
		case m := <-msgs:
			t.Fatalf("a delivery from an empty queue: %v", m)
		case <-time.After(time.Second):
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if later := changes[connected:]; len(later) > 0 {
		t.Fatalf("the idle consumer's connection changed %v: it left a node that counts it", later)
	}
}
