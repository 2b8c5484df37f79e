package benchmarks_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
)

// BenchmarkDuelConsume: raw amqp091-go and the Subscriber consuming in
// turns, as BenchmarkDuel publishes: each turn consumes the same number of
// 1 KiB messages, preloaded (untimed) into a classic durable queue of its
// own right before the turn, and is timed from its first delivery as
// BenchmarkConsume times; raw first in one pair, the Subscriber first in
// the next. One op is one pair; -benchtime Nx runs N. It reports what
// BenchmarkDuel reports but latencies, against:
//
//   - raw: amqp091-go acking each delivery on its own (at prefetch 1,
//     nothing else can be);
//   - raw-batched: amqp091-go acking with multiple set as the Subscriber's
//     default AckBatch does (consumeRaw), at prefetch 100 and 500;
//   - raw-handoff: amqp091-go handing each delivery to a handler goroutine
//     and acking it once the handler's Ack came back, as any watermill
//     subscriber must (consumeRawHandoff), at prefetch 1: where nothing is
//     batched, what the Subscriber costs apart from the model's two
//     goroutine switches per message;
//   - raw-handoff-batched: the same, acking in batches as raw-batched does,
//     at prefetch 100 and 500: raw batching the same way within
//     watermill's model (raw-batched pays no handover), so that the
//     Subscriber's own cost shows apart from the model's.
//
// The Subscriber has its default settings and the prefetch of the case;
// each side connects anew for each turn, untimed.
//
// Each queue is preloaded right before its turn so that every turn starts
// from the same state of the broker: with both queues preloaded before the
// pair, one turn's rate ranged from 17,000 to 58,000 msgs/s at prefetch 100
// (RabbitMQ 3.10.8), whichever side it was.
func BenchmarkDuelConsume(b *testing.B) {
	for _, prefetch := range []int{1, 100, 500} {
		against := []string{"raw", "raw-batched", "raw-handoff-batched"}
		if prefetch == 1 {
			against = []string{"raw", "raw-handoff"}
		}
		for _, rawKind := range against {
			ackEvery := 1
			if strings.HasSuffix(rawKind, "batched") {
				ackEvery = min(32, prefetch/2) // as BenchmarkConsume's raw-batched
			}
			raw := func(b *testing.B, q string, m *meter) {
				consumeRaw(b, q, prefetch, ackEvery, m.messages, timing{m.begin, m.end})
			}
			if strings.HasPrefix(rawKind, "raw-handoff") {
				raw = func(b *testing.B, q string, m *meter) {
					consumeRawHandoff(b, q, prefetch, ackEvery, m.messages, timing{m.begin, m.end})
				}
			}
			b.Run(fmt.Sprintf("classic/prefetch=%d/against=%s", prefetch, rawKind), func(b *testing.B) {
				duelConsume(b, prefetch, raw)
			})
		}
	}
}

// duelConsume runs b.N pairs of turns of consuming, raw's way and the
// Subscriber's, at prefetch.
func duelConsume(b *testing.B, prefetch int, raw func(b *testing.B, q string, m *meter)) {
	consume := [2]func(q string, m *meter){
		func(q string, m *meter) { raw(b, q, m) },
		func(q string, m *meter) {
			consumeSubscribed(b, nil, q, prefetch, 0, m.messages, timing{m.begin, m.end})
		},
	}
	pair := func(messages int, order [2]int) (played [2]turn) {
		var queues [2]string
		for _, side := range order {
			queues[side] = preloaded(b, nil, messages)
			m := meter{messages: messages}
			labelled(side, func() { consume[side](queues[side], &m) })
			played[side] = m.measured
		}
		brokertest.DeleteNow(b, queues[:]...)
		return played
	}
	// A warm-up pair, not counted; raw's rate sets the turns' length.
	warmUp := max(1000, 4*prefetch)
	first := pair(warmUp, turnOrder(0))
	messages := max(warmUp, int(first[0].rate*duelSlice.Seconds()))

	turns := [2][]turn{}
	b.ResetTimer()
	for i := range b.N {
		played := pair(messages, turnOrder(i))
		turns[0], turns[1] = append(turns[0], played[0]), append(turns[1], played[1])
	}
	b.StopTimer()
	reportDuel(b, turns)
}
