package core

import (
	"context"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A Subscriber whose subscriptions consume a quorum queue with prefetch 1
// says so once, at INFO; with another prefetch, or another queue type, it
// says nothing.
func TestPrefetchOneOnAQuorumQueueIsToldOnce(t *testing.T) {
	for _, c := range []struct {
		name     string
		args     amqp091.Table
		prefetch int
		want     int
	}{
		{"quorum, prefetch 1", amqp091.Table{"x-queue-type": "quorum"}, 1, 1},
		{"quorum, prefetch 64", amqp091.Table{"x-queue-type": "quorum"}, 64, 0},
		{"classic, prefetch 1", nil, 1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			peer, _ := leaderPeer(t, func() uint32 { return 1 })
			w := peerWiring(peer)
			w.QueueArguments = c.args
			w.Consume.PrefetchCount = c.prefetch
			w.BuildTopology = func(ch *amqp091.Channel, _, queue, _ string, _ watermill.LoggerAdapter) error {
				_, err := ch.QueueDeclare(queue, true, false, false, false, c.args)
				return err
			}
			logs := watermill.NewCaptureLogger()
			sub, err := NewSubscriber(Config[Wiring]{}, w, logs)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sub.Close() })
			peer.next(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			for _, topic := range []string{"a", "b"} {
				if _, err := sub.Subscribe(ctx, topic); err != nil {
					t.Fatal(err)
				}
			}
			told := 0
			for _, m := range logs.Captured()[watermill.InfoLogLevel] {
				if strings.HasPrefix(m.Msg, "Prefetch 1 on a quorum queue") {
					told++
				}
			}
			if told != c.want {
				t.Fatalf("told %d times, want %d", told, c.want)
			}
		})
	}
}
