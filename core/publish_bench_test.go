package core

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// BenchmarkPublishOnScriptedPeer is the publisher's own cost per message,
// without a broker: the scripted peer acks each message as it arrives, in
// the same process. Client-side changes are compared on it (benchstat, old
// binary against new), where a broker's noise would hide a few percent;
// how the publisher compares with raw amqp091-go is benchmarks/'s job.
func BenchmarkPublishOnScriptedPeer(b *testing.B) {
	for _, goroutines := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			peer := newScriptedPeer(b)
			pub, err := NewPublisher(Config[Wiring]{PublishTimeout: time.Minute}, peerPublisherWiring(peer), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			peer.next(b)
			body := make([]byte, 1<<10)
			if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), body)); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			for range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if err := pub.Publish("orders", message.NewMessage(watermill.NewUUID(), body)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
