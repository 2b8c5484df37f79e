package core

import (
	"errors"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A lane's confirms, against a scripted peer: Publish returns nil once every
// message is acked; a nacked message is sent again and then confirmed; with
// MaxNackRetries -1 it fails alone, named, with ErrNacked, and the others of
// the call are confirmed. A nack mid-call replaces the channel at once: the
// later messages still owed on it are sent again on the fresh one.
func TestConfirmsThroughAScriptedPeer(t *testing.T) {
	for name, tc := range map[string]struct {
		nack           map[uint64]bool // the n-th message sent is nacked
		maxNackRetries int
		failed         []int // indexes of the messages that must fail
		nacked, resent int
		// moreResent: the lane replaces a nacked channel at once, so the
		// messages sent after the nacked one may be sent again too (up to
		// this many more), whether or not their answers were read first.
		moreResent int
	}{
		"all acked":            {},
		"one nacked, re-sent":  {nack: map[uint64]bool{5: true}, nacked: 1, resent: 1},
		"one nacked, no retry": {nack: map[uint64]bool{5: true}, maxNackRetries: -1, failed: []int{4}, nacked: 1},
		"nacked mid-call, the channel replaced at once": {nack: map[uint64]bool{3: true}, nacked: 1, resent: 1, moreResent: 2},
		"nacked mid-call, no retry":                     {nack: map[uint64]bool{3: true}, maxNackRetries: -1, failed: []int{2}, nacked: 1, moreResent: 2},
	} {
		t.Run(name, func(t *testing.T) {
			peer := newScriptedPeer(t)
			peer.confirm = func(n uint64) bool { return !tc.nack[n] }
			peer.holdAnswers = 5 // the whole call is written before any answer
			var mu sync.Mutex
			counts := map[EventKind]int{}
			w := peerWiring(peer)
			w.BuildTopology = func(*amqp091.Channel, string, string, string, watermill.LoggerAdapter) error { return nil }
			pub, err := NewPublisher(Config[Wiring]{
				Channels:       1,
				MaxNackRetries: tc.maxNackRetries,
				OnEvent: func(e Event) {
					mu.Lock()
					counts[e.Kind] += e.Messages
					mu.Unlock()
				},
			}, w, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()

			msgs := make([]*message.Message, 5)
			for i := range msgs {
				msgs[i] = message.NewMessage(watermill.NewUUID(), []byte("payload"))
			}
			err = pub.Publish("orders", msgs...)
			if len(tc.failed) == 0 {
				if err != nil {
					t.Fatalf("Publish: %v", err)
				}
			} else {
				var pe *PublishError
				if !errors.As(err, &pe) || !errors.Is(err, ErrNacked) || len(pe.Unconfirmed) != len(tc.failed) || pe.Unconfirmed[0] != msgs[tc.failed[0]].UUID {
					t.Fatalf("Publish: %v, want ErrNacked naming message %v only", err, tc.failed)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if counts[MessagesConfirmed] != len(msgs)-len(tc.failed) || counts[MessagesNacked] != tc.nacked ||
				counts[MessagesResent] < tc.resent || counts[MessagesResent] > tc.resent+tc.moreResent {
				t.Fatalf("events: confirmed %d, nacked %d, re-sent %d; want %d, %d, %d (to %d)", counts[MessagesConfirmed],
					counts[MessagesNacked], counts[MessagesResent], len(msgs)-len(tc.failed), tc.nacked, tc.resent, tc.resent+tc.moreResent)
			}
		})
	}
}
