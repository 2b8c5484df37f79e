package core

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// A delivery mode other than 1 or 2 (0 meaning the default) is refused
// before sending: RabbitMQ 3.10 would close the channel over it, naming no
// message, and 4.x would store the message as transient.
func TestDeliveryModeCheckedBeforeSending(t *testing.T) {
	for mode := range 256 {
		_, err := validProperties(amqp091.Publishing{DeliveryMode: uint8(mode)})
		if ok := mode <= 2; ok != (err == nil) {
			t.Errorf("delivery mode %d: %v", mode, err)
		}
	}
}

// The publisher's own queue is published mandatory (the guard against a
// queue deleted under the live connection) unless NoQueueDeletionGuard;
// Publish.Mandatory keeps it on whatever that says, and so does a queue
// that is deleted as a matter of course (exclusive, auto-delete, x-expires). Read off the wire: the
// mandatory bit of each basic.publish the scripted peer receives.
func TestNoQueueDeletionGuardDropsTheMandatoryFlag(t *testing.T) {
	for _, c := range []struct {
		name          string
		noGuard, user bool
		queue         func(*Wiring) // what else the config says of its queue
		want          bool
	}{
		{"by default", false, false, nil, true},
		{"NoQueueDeletionGuard", true, false, nil, false},
		{"NoQueueDeletionGuard with Publish.Mandatory", true, true, nil, true},
		// Queues deleted as a matter of course keep the guard.
		{"NoQueueDeletionGuard, an exclusive queue", true, false, func(w *Wiring) { w.QueueExclusive = true }, true},
		{"NoQueueDeletionGuard, an auto-delete queue", true, false, func(w *Wiring) { w.QueueAutoDelete = true }, true},
		{"NoQueueDeletionGuard, an expiring queue", true, false, func(w *Wiring) { w.QueueArguments = amqp091.Table{"x-expires": int32(60000)} }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			peer := newScriptedPeer(t)
			flags := make(chan bool, 16)
			peer.onPublish = func(args []byte) {
				// reserved (2), exchange and routing key (short strings), bits
				exchangeEnd := 2 + 1 + int(args[2])
				keyEnd := exchangeEnd + 1 + int(args[exchangeEnd])
				flags <- args[keyEnd]&1 != 0
			}
			w := peerPublisherWiring(peer)
			w.Mandatory = c.user
			if c.queue != nil {
				c.queue(&w)
			}
			pub, err := NewPublisher(Config[Wiring]{NoQueueDeletionGuard: c.noGuard}, w, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("x"))); err != nil {
				t.Fatal(err)
			}
			if got := <-flags; got != c.want {
				t.Errorf("mandatory %v, want %v", got, c.want)
			}
		})
	}
}
