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
// queue four times in a row: that must never happen while the leader
// answers. Checked here the way the probe asks, and end to end: no
// reconnect over the first probes (at about 0.5, 1.5, 3.5 and 7.5 s of idleness).
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
	// A leader slow to answer (250 ms) makes the node count none now and
	// then on a loaded machine: the probe leaves only after
	// unseenInARow (4) such answers in a row, half a second apart.
	const unseenInARow = 4
	deadline := time.Now().Add(12 * time.Second)
	tries, unseen, inARow := 0, 0, 0
	for ; time.Now().Before(deadline); tries++ {
		q, err := ch1.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if q.Consumers == 0 {
			unseen++
			if inARow++; inARow == unseenInARow {
				t.Fatalf("try %d: node 1 counted no consumer of %s (leader on node 2) %d times in a row: the probe would leave a healthy node", tries, queue, inARow)
			}
		} else {
			inARow = 0
		}
		select {
		case m := <-msgs:
			t.Fatalf("a delivery from an empty queue: %v", m)
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("node 1 counted no consumer in %d of %d tries, never %d in a row", unseen, tries, unseenInARow)
	mu.Lock()
	defer mu.Unlock()
	if later := changes[connected:]; len(later) > 0 {
		t.Fatalf("the idle consumer's connection changed %v: it left a node that counts it", later)
	}
}
