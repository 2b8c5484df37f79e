package resilient

import (
	"context"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// outgoing is one message of a Publish call, marshaled and validated once,
// and owned by that call's goroutine across every attempt to send it.
type outgoing struct {
	index      int // in the Publish call
	uuid       string
	ctx        context.Context
	exchange   string
	routingKey string
	mandatory  bool
	publishing amqp091.Publishing

	nacks   int // broker nacks so far
	strikes int // channel exceptions with a permanent code while in flight
}

// Delivery states. A lane claims a queued delivery before writing it; the
// caller abandons a queued one it no longer waits for. Whoever wins the CAS
// owns it, so a message is never written after its caller gave up on it.
const (
	deliveryQueued int32 = iota
	deliveryTaken
	deliveryAbandoned
)

// delivery is one attempt to send an outgoing message. The lane that claims
// it reports exactly one outcome on results, which is buffered for every
// delivery of the attempt, so a lane never blocks on a caller.
type delivery struct {
	msg     *outgoing
	state   atomic.Int32
	results chan<- outcome

	resolved bool // owned by the caller: outcome settled or given up on

	// Owned by the lane once claimed.
	dc     *amqp091.DeferredConfirmation
	sentAt time.Time
}

func (d *delivery) claim() bool   { return d.state.CompareAndSwap(deliveryQueued, deliveryTaken) }
func (d *delivery) abandon() bool { return d.state.CompareAndSwap(deliveryQueued, deliveryAbandoned) }

type outcomeKind int

const (
	outcomeAcked  outcomeKind = iota
	outcomeNacked             // re-send, a bounded number of times
	outcomeLost               // channel or connection gone before the confirm: re-send
	outcomeFailed             // permanent: do not re-send
)

type outcome struct {
	d    *delivery
	kind outcomeKind
	err  error
}

func (d *delivery) report(kind outcomeKind, err error) {
	d.results <- outcome{d: d, kind: kind, err: err}
}

// fifo holds a lane's unconfirmed deliveries in delivery-tag order: the
// order they were sent in, which a lane settles them in.
type fifo struct {
	items []*delivery
	head  int
}

func (f *fifo) len() int { return len(f.items) - f.head }

func (f *fifo) push(d *delivery) { f.items = append(f.items, d) }

func (f *fifo) peek() *delivery {
	if f.len() == 0 {
		return nil
	}
	return f.items[f.head]
}

func (f *fifo) pop() *delivery {
	d := f.items[f.head]
	f.items[f.head] = nil
	f.head++
	if f.head == len(f.items) {
		f.items, f.head = f.items[:0], 0
	} else if f.head > 1024 && f.head*2 > len(f.items) {
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	return d
}
