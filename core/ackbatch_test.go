package core

import (
	"errors"
	"testing"
	"time"
)

// recordingAcker records the basic.acks sent.
type recordingAcker struct {
	acks []sentAck
	fail error
}

type sentAck struct {
	tag      uint64
	multiple bool
}

func (r *recordingAcker) Ack(tag uint64, multiple bool) error {
	if r.fail != nil {
		return r.fail
	}
	r.acks = append(r.acks, sentAck{tag, multiple})
	return nil
}

// Acks are held up to the batch's size, then sent as one multiple ack of
// the last tag; a flush sends what is held; a single ack held goes alone.
func TestAckBatchSendsOneMultipleAck(t *testing.T) {
	var ch recordingAcker
	b := newAckBatch(4, time.Hour, 100)
	defer b.stop()
	for tag := uint64(1); tag <= 3; tag++ {
		if sent, err := b.add(&ch, tag, "h"); sent != 0 || err != nil {
			t.Fatalf("ack %d: sent %d (%v), want held", tag, sent, err)
		}
	}
	if b.dueC() == nil {
		t.Fatal("acks held, but no bound on how long")
	}
	if sent, err := b.add(&ch, 4, "h"); sent != 4 || err != nil {
		t.Fatalf("the fourth ack: sent %d (%v), want all four", sent, err)
	}
	if b.pending() || b.dueC() != nil {
		t.Fatal("still holding after the batch went")
	}
	b.add(&ch, 5, "h")
	if sent, _ := b.flush(&ch); sent != 1 {
		t.Fatalf("flush sent %d, want 1", sent)
	}
	want := []sentAck{{4, true}, {5, false}}
	if len(ch.acks) != len(want) || ch.acks[0] != want[0] || ch.acks[1] != want[1] {
		t.Fatalf("acks sent %v, want %v", ch.acks, want)
	}
}

// At most half the prefetch count is held, so that the broker keeps
// delivering; with a prefetch of 1 (watermill-amqp's), or AckBatch 1, each
// ack goes at once.
func TestAckBatchSizeFollowsThePrefetch(t *testing.T) {
	for _, c := range []struct{ max, prefetch, want int }{
		{32, 0, 32}, {32, 500, 32}, {32, 40, 20}, {32, 1, 0}, {1, 500, 1},
	} {
		if got := newAckBatch(c.max, time.Hour, c.prefetch).max; got != c.want {
			t.Errorf("AckBatch %d, prefetch %d: holds %d, want %d", c.max, c.prefetch, got, c.want)
		}
	}
	var ch recordingAcker
	b := newAckBatch(32, time.Hour, 1)
	if sent, _ := b.add(&ch, 1, "h"); sent != 1 || len(ch.acks) != 1 || ch.acks[0] != (sentAck{1, false}) {
		t.Fatalf("prefetch 1: sent %d, acks %v, want one single ack at once", sent, ch.acks)
	}
}

// The oldest ack held fires the batch's bound; a failed flush (the channel
// closing) reports none sent and holds nothing more: the broker delivers
// those messages again.
func TestAckBatchBoundAndFailure(t *testing.T) {
	ch := recordingAcker{fail: errors.New("channel closed")}
	b := newAckBatch(32, 5*time.Millisecond, 0)
	defer b.stop()
	b.add(&ch, 1, "h")
	select {
	case <-b.dueC():
	case <-time.After(10 * time.Second):
		t.Fatal("the bound never fired")
	}
	if sent, err := b.flush(&ch); sent != 0 || err == nil {
		t.Fatalf("flush on a closing channel: sent %d, err %v", sent, err)
	}
	if b.pending() {
		t.Fatal("still holding acks after a failed flush")
	}
}
