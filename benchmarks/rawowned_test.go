package benchmarks_test

import (
	"context"
	"errors"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// ownedRequest is one message handed to a channel's owner, and where its
// confirm is told.
type ownedRequest struct {
	pub   amqp091.Publishing
	reply chan bool
}

// ownedSent is a message the owner wrote, waiting for its confirm.
type ownedSent struct {
	dc    *amqp091.DeferredConfirmation
	reply chan bool
}

// benchRawOwned is raw amqp091-go in the publisher's shape, and nothing
// else: each confirm-mode channel is owned by one goroutine (as each of
// the publisher's lanes owns one), callers hand it their message and wait
// for it to tell them of the confirm. That costs two goroutine hops per
// message (caller to owner, owner to caller) that raw's callers, writing
// and waiting on a shared channel themselves, do not make; and it saves
// them contending for the channel's lock. Against it, the publisher's
// ratio is what its own work costs (deadline, trust, returns, ordering,
// recovery), apart from its shape.
func benchRawOwned(b *testing.B, size, goroutines int) {
	conn := brokertest.Dial(b)
	defer conn.Close()
	chans := confirmChannels(b, conn)
	q := queue(b)
	// The bound of raw's waits (rawDeadline), and the owners' end.
	ctx, cancel := rawDeadline()
	queues := make([]chan ownedRequest, len(chans))
	done := make(chan struct{})
	for i, ch := range chans {
		queues[i] = make(chan ownedRequest, window)
		go func() {
			defer func() { done <- struct{}{} }()
			ownChannel(ctx, ch, q, queues[i])
		}()
	}
	defer func() {
		cancel()
		for range chans {
			<-done
		}
	}()
	concurrently(b, goroutines, func(w int) error {
		pub, err := marshal(newMessage(size))
		if err != nil {
			return err
		}
		reply := make(chan bool, 1)
		select {
		case queues[w%len(queues)] <- ownedRequest{pub, reply}:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case acked := <-reply:
			if !acked {
				return errors.New("not confirmed")
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
}

// ownChannel is the owner's loop: write what is handed over, tell each
// caller of its confirm, oldest first.
func ownChannel(ctx context.Context, ch *amqp091.Channel, q string, queue <-chan ownedRequest) {
	var pending []ownedSent
	for {
		var oldest <-chan struct{}
		if len(pending) > 0 {
			oldest = pending[0].dc.Done()
		}
		select {
		case <-ctx.Done():
			return
		case r := <-queue:
			dc, err := ch.PublishWithDeferredConfirm("", q, *rawMandatory, false, r.pub)
			if err != nil {
				r.reply <- false
				continue
			}
			pending = append(pending, ownedSent{dc, r.reply})
		case <-oldest:
			for len(pending) > 0 && isClosed(pending[0].dc.Done()) {
				pending[0].reply <- pending[0].dc.Acked()
				pending = pending[1:]
			}
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
