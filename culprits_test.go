package e2e_test

// Another caller's bad message, and an operator's hand: only the culprit
// fails, bystanders lose nothing, a call keeps its order through the
// channel deaths, and a queue deleted under a live connection never turns
// into a nil for a dropped message.

import (
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// spoilingMarshaler spoils the messages whose metadata asks for it, the way
// a buggy marshaler would: "user_id" claims to be another user (the broker
// names it when it refuses), "cc" gives the CC header (sender-selected
// distribution) a string where the broker wants an array of them: RabbitMQ
// 3.10 and 4.x alike refuse it without saying which message ("invalid
// message: {unacceptable_type_in_header,\"CC\",longstr}").
type spoilingMarshaler struct{ amqp.DefaultMarshaler }

func (m spoilingMarshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	pub, err := m.DefaultMarshaler.Marshal(msg)
	switch msg.Metadata.Get("spoil") {
	case "user_id":
		pub.UserId = "mallory"
	case "cc":
		if pub.Headers == nil {
			pub.Headers = amqp091.Table{}
		}
		pub.Headers["CC"] = "nobody"
	}
	return pub, err
}

// opaqueAuth is PLAIN credentials the publisher cannot read the user name
// of, so it cannot check user_id before sending: the broker must.
type opaqueAuth struct{ plain *amqp091.PlainAuth }

func (a opaqueAuth) Mechanism() string { return a.plain.Mechanism() }
func (a opaqueAuth) Response() string  { return a.plain.Response() }

// One channel; a careless caller keeps publishing a message the broker
// refuses (closing the channel); four callers publish good messages. Every
// good message is confirmed, and each bad one fails alone, permanently.
func TestBystandersOfABadMessage(t *testing.T) {
	brokertest.Need(t)
	for _, c := range []struct {
		name, spoil string
		opaque      bool
		want        error
	}{
		{"user_id checked before sending", "user_id", false, resilient.ErrPreconditionFailed},
		{"user_id named by the broker", "user_id", true, resilient.ErrPreconditionFailed},
		{"CC header, culprit not named", "cc", false, resilient.ErrPreconditionFailed},
	} {
		t.Run(c.name, func(t *testing.T) {
			queue := brokertest.Name("bystanders")
			brokertest.DeleteQueues(t, queue)
			pub, _ := faultPublisher(t, brokertest.URI(), func(cfg *resilient.Config) {
				cfg.Channels = 1
				cfg.AMQP.Marshaler = spoilingMarshaler{}
				if c.opaque {
					uri, _ := amqp091.ParseURI(brokertest.URI())
					cfg.AMQP.Connection.AmqpConfig = &amqp091.Config{SASL: []amqp091.Authentication{opaqueAuth{uri.PlainAuth()}}}
				}
			})
			defer closePublisher(t, pub)

			const good, bad = 4 * 500, 50
			var confirmed brokertest.IDs
			var wg sync.WaitGroup
			var mu sync.Mutex
			var goodFailed, badFailed, badWrong int
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < good/4/2; i++ {
						msgs, ids := messages(2)
						if err := pub.Publish(queue, msgs...); err != nil {
							mu.Lock()
							goodFailed++
							if goodFailed == 1 {
								t.Errorf("a good message failed: %v", err)
							}
							mu.Unlock()
							continue
						}
						confirmed.Add(ids...)
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < bad; i++ {
					msgs, ids := messages(1)
					msgs[0].Metadata.Set("spoil", c.spoil)
					err := pub.Publish(queue, msgs...)
					var pe *resilient.PublishError
					mu.Lock()
					if errors.As(err, &pe) && errors.Is(err, c.want) && resilient.IsPermanent(err) && len(pe.Unconfirmed) == 1 && pe.Unconfirmed[0] == ids[0] {
						badFailed++
					} else {
						badWrong++
						t.Errorf("bad message: %v, want a permanent %v naming it", err, c.want)
					}
					mu.Unlock()
				}
			}()
			wg.Wait()
			t.Logf("%d good messages: %d calls failed; %d bad messages: %d failed as they should", good, goodFailed, bad, badFailed)
			brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, confirmed.All()))
		})
	}
}

// One call of 5,000 messages on one channel while another caller's bad
// messages kill that channel again and again: the call's messages reach the
// queue in call order (a re-sent message may repeat; its first copy is in
// place).
func TestOrderWithinACallThroughChannelDeaths(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("order")
	brokertest.DeleteQueues(t, queue)
	pub, _ := faultPublisher(t, brokertest.URI(), func(cfg *resilient.Config) {
		cfg.Channels = 1
		cfg.AMQP.Marshaler = spoilingMarshaler{}
	})
	defer closePublisher(t, pub)

	msgs, ids := messages(5000)
	for i, m := range msgs {
		m.Payload = []byte(strconv.Itoa(i))
	}
	stop := make(chan struct{})
	spoilerDone := make(chan int)
	go func() {
		kills := 0
		for i := 0; i < 30; i++ {
			select {
			case <-stop:
				spoilerDone <- kills
				return
			default:
			}
			bad, _ := messages(1)
			bad[0].Metadata.Set("spoil", "cc")
			if err := pub.Publish(queue, bad...); errors.Is(err, resilient.ErrPreconditionFailed) {
				kills++
			}
		}
		<-stop
		spoilerDone <- kills
	}()
	err := pub.Publish(queue, msgs...)
	close(stop)
	kills := <-spoilerDone
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	t.Logf("one call of %d messages; %d bad messages failed meanwhile", len(msgs), kills)
	if kills == 0 {
		t.Fatal("no bad message killed the channel during the call: nothing was proven")
	}

	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	seen := make(map[string]bool, len(ids))
	last, repeats := -1, 0
	for len(seen) < len(ids) {
		d := <-deliveries
		if !want[d.MessageId] {
			continue
		}
		if seen[d.MessageId] {
			repeats++
			continue
		}
		seen[d.MessageId] = true
		n, _ := strconv.Atoi(string(d.Body))
		if n < last {
			t.Fatalf("message %d arrived after message %d: call order broken", n, last)
		}
		last = n
	}
	t.Logf("all %d in call order (%d re-sent copies after their first)", len(ids), repeats)
}

// An operator deletes the publisher's queue while its connection stays up
// (the cached topology says it exists): every later Publish that returns nil
// has its message in the queue, declared again.
func TestQueueDeletedUnderLiveConnection(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("deleted")
	brokertest.DeleteQueues(t, queue)
	pub, _ := faultPublisher(t, brokertest.URI(), nil)
	defer closePublisher(t, pub)
	warm, _ := messages(10)
	if err := pub.Publish(queue, warm...); err != nil {
		t.Fatal(err)
	}
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	for round := 0; round < 3; round++ {
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			t.Fatal(err)
		}
		var sent brokertest.IDs
		for i := 0; i < 100; i++ {
			msgs, ids := messages(1)
			if err := pub.Publish(queue, msgs...); err != nil {
				t.Fatalf("Publish after the queue was deleted: %v", err)
			}
			sent.Add(ids...)
		}
		brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, sent.All()))
	}
}

// What NoQueueDeletionGuard trades away, as documented: without the
// mandatory flag, messages published to a queue deleted under the live
// connection are confirmed, Publish returns nil, and the broker drops them;
// once something declares the queue again (here, as a subscriber would),
// the next ones arrive.
func TestNoQueueDeletionGuardLosesWhatADeletedQueueMisses(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("unguarded")
	brokertest.DeleteQueues(t, queue)
	pub, _ := faultPublisher(t, brokertest.URI(), func(cfg *resilient.Config) { cfg.NoQueueDeletionGuard = true })
	defer closePublisher(t, pub)
	warm, warmIDs := messages(10)
	if err := pub.Publish(queue, warm...); err != nil {
		t.Fatal(err)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, warmIDs))
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	dropped, _ := messages(20)
	if err := pub.Publish(queue, dropped...); err != nil {
		t.Fatalf("Publish to the deleted queue: %v, want nil (confirmed and dropped)", err)
	}
	check, _ := conn.Channel()
	if _, err := check.QueueDeclarePassive(queue, true, false, false, false, nil); err == nil {
		t.Fatal("the queue exists again: the publisher declared it, so the guard was on")
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	after, afterIDs := messages(20)
	if err := pub.Publish(queue, after...); err != nil {
		t.Fatal(err)
	}
	tally := brokertest.Drain(t, queue, afterIDs)
	brokertest.RequireNoneLost(t, tally)
	if tally.Unexpected > 0 {
		t.Errorf("%d message(s) published while the queue was gone arrived after all", tally.Unexpected)
	}
}

// The same message (one UUID, so one message_id) published at once to two
// topics on one channel, one of whose queues an operator deleted: a return
// names no delivery tag, only the message, so it must be pinned on the one
// that was returned. Each call returns nil only with its message in its
// queue.
func TestSameMessageTwiceAtOnceWithAReturn(t *testing.T) {
	brokertest.Need(t)
	pub, _ := faultPublisher(t, brokertest.URI(), func(cfg *resilient.Config) { cfg.Channels = 1 })
	defer closePublisher(t, pub)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	const rounds = 40
	for round := 0; round < rounds; round++ {
		kept, deleted := brokertest.Name("kept"), brokertest.Name("deleted")
		brokertest.DeleteQueues(t, kept, deleted)
		for _, q := range []string{kept, deleted} { // both declared and cached
			warm, warmIDs := messages(1)
			if err := pub.Publish(q, warm...); err != nil {
				t.Fatal(err)
			}
			brokertest.Drain(t, q, warmIDs)
		}
		if _, err := ch.QueueDelete(deleted, false, false, false); err != nil {
			t.Fatal(err)
		}
		msgs, ids := messages(1)
		twin := msgs[0].Copy()
		errs := make(chan error, 2)
		go func() { errs <- pub.Publish(kept, msgs...) }()
		go func() { errs <- pub.Publish(deleted, twin) }()
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		for _, q := range []string{kept, deleted} {
			if r := brokertest.Drain(t, q, ids); len(r.Lost) > 0 {
				t.Fatalf("round %d: Publish returned nil, but queue %s does not hold the message: %s", round, q, r)
			}
		}
	}
	t.Logf("%d rounds: both copies confirmed and in their queues each time", rounds)
}

// With Publish.Mandatory, the same message published at once to a routable
// and an unroutable topic: the unroutable call fails with ErrUnroutable,
// the routable one is confirmed.
func TestSameMandatoryMessageRoutableAndNot(t *testing.T) {
	brokertest.Need(t)
	exchange, bound := brokertest.Name("direct"), brokertest.Name("bound")
	brokertest.DeleteQueues(t, bound)
	cfg := amqp.NewDurablePubSubConfig(brokertest.URI(), nil)
	cfg.Exchange.Type = "direct"
	cfg.Exchange.GenerateName = func(string) string { return exchange }
	cfg.Publish.GenerateRoutingKey = func(topic string) string { return topic }
	cfg.Publish.Mandatory = true
	pub, _ := faultPublisher(t, brokertest.URI(), func(c *resilient.Config) { c.AMQP = cfg; c.Channels = 1 })
	defer closePublisher(t, pub)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	t.Cleanup(func() { _ = ch.ExchangeDelete(exchange, false, false) })
	if err := ch.ExchangeDeclare(exchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(bound, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(bound, "routed", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	var confirmed brokertest.IDs
	for round := 0; round < 100; round++ {
		msgs, ids := messages(1)
		twin := msgs[0].Copy()
		routed, unrouted := make(chan error, 1), make(chan error, 1)
		go func() { routed <- pub.Publish("routed", msgs...) }()
		go func() { unrouted <- pub.Publish("nowhere", twin) }()
		if err := <-routed; err != nil {
			t.Fatalf("round %d: the routable call: %v", round, err)
		}
		confirmed.Add(ids...)
		if err := <-unrouted; !errors.Is(err, resilient.ErrUnroutable) {
			t.Fatalf("round %d: the unroutable call: %v, want ErrUnroutable", round, err)
		}
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, bound, confirmed.All()))
}
