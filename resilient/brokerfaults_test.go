package resilient_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// A queue that exists with other arguments: the declare fails with 406, the
// error is permanent, and other topics keep flowing.
func TestPreconditionFailedOnDeclare(t *testing.T) {
	brokertest.Need(t)
	conflicting := brokertest.Name("conflict")
	brokertest.DeleteQueues(t, conflicting)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare(conflicting, false, false, false, false, nil); err != nil { // not durable
		t.Fatal(err)
	}

	pub, _ := pubsubtest.Publisher(t, resilient.Config{})
	healthy := newHealthyTopic(t)
	healthy.publish(pub)
	msgs, ids := newMessages(3)
	err := pub.Publish(conflicting, msgs...)
	requirePublishError(t, err, resilient.ErrPreconditionFailed, ids)
	if !resilient.IsPermanent(err) {
		t.Fatalf("%v should be permanent", err)
	}
	t.Log(err)
	healthy.publish(pub)
	healthy.requireNoneLost()
}

// A user without the permission to configure a queue gets ErrAccessRefused
// for that topic only.
func TestAccessRefused(t *testing.T) {
	brokertest.Need(t)
	const user, password = "resilient-test-limited", "limited-Pa55"
	brokertest.Ctl(t, "add_user", user, password)
	t.Cleanup(func() { _, _ = brokertest.CtlErr("delete_user", user) })
	brokertest.Ctl(t, "set_permissions", "-p", "/", user, "^"+brokertest.RunPrefix()+"allowed-.*", `^(`+brokertest.RunPrefix()+`allowed-.*|amq\.default)$`, ".*")

	u, err := url.Parse(brokertest.URI())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	logs := watermill.NewCaptureLogger()
	pub, err := resilient.NewPublisher(resilient.Config{AMQP: amqp.NewDurableQueueConfig(u.String())}, logs)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	allowed, denied := brokertest.Name("allowed"), brokertest.Name("denied")
	brokertest.DeleteQueues(t, allowed, denied)
	okMsgs, okIDs := newMessages(10)
	if err := pub.Publish(allowed, okMsgs...); err != nil {
		t.Fatalf("allowed topic: %v", err)
	}
	msgs, ids := newMessages(3)
	err = pub.Publish(denied, msgs...)
	requirePublishError(t, err, resilient.ErrAccessRefused, ids)
	if !resilient.IsPermanent(err) {
		t.Fatalf("%v should be permanent", err)
	}
	t.Log(err)
	// A reconnect logs the URI again: never with the password.
	brokertest.CloseAllConnections(t)
	more, moreIDs := newMessages(10)
	if err := pub.Publish(allowed, more...); err != nil {
		t.Fatalf("allowed topic after a refusal and a reconnect: %v", err)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, allowed, append(okIDs, moreIDs...)))
	text := logText(logs)
	if !strings.Contains(text, "Reconnected") {
		t.Fatalf("no reconnect in the logs:\n%s", text)
	}
	if strings.Contains(text, password) || strings.Contains(err.Error(), password) {
		t.Fatalf("the password leaked into logs or errors:\n%s", text)
	}
}

// With Publish.Mandatory, a message no queue takes is an error, not a silent
// confirm; a routable one is confirmed as usual.
func TestMandatoryUnroutable(t *testing.T) {
	brokertest.Need(t)
	exchange := brokertest.Name("fanout")
	bound := brokertest.Name("bound")
	brokertest.DeleteQueues(t, bound)
	cfg := amqp.NewDurablePubSubConfig(brokertest.URI(), nil)
	cfg.Exchange.Type = "direct"
	cfg.Publish.GenerateRoutingKey = func(topic string) string { return topic }
	cfg.Exchange.GenerateName = func(string) string { return exchange }
	cfg.Publish.Mandatory = true
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg})

	// The publisher declares the exchange on first use; then bind one queue.
	first, firstIDs := newMessages(1)
	err := pub.Publish("nobody", first...)
	requirePublishError(t, err, resilient.ErrUnroutable, firstIDs)
	t.Cleanup(func() {
		conn := brokertest.Dial(t)
		defer conn.Close()
		if ch, err := conn.Channel(); err == nil {
			_ = ch.ExchangeDelete(exchange, false, false)
		}
	})
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare(bound, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(bound, "routed", exchange, false, nil); err != nil {
		t.Fatal(err)
	}

	var routedIDs brokertest.IDs
	for i := 0; i < 5; i++ {
		routed, ids := newMessages(10)
		if err := pub.Publish("routed", routed...); err != nil {
			t.Fatalf("routable: %v", err)
		}
		routedIDs.Add(ids...)
		lost, lostIDs := newMessages(3)
		err := pub.Publish("nobody", lost...)
		pe := requirePublishError(t, err, resilient.ErrUnroutable, lostIDs)
		if i == 0 {
			t.Log(pe)
		}
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, bound, routedIDs.All()))
}

// A queue that rejects publishes past its length makes the broker nack: the
// publisher re-sends a bounded number of times, then fails with ErrNacked,
// a transient error, and names exactly the nacked messages.
func TestNackedMessagesAreRetriedThenReported(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("reject-publish")
	brokertest.DeleteQueues(t, queue)
	cfg := amqp.NewDurableQueueConfig(brokertest.URI())
	cfg.Queue.Arguments = amqp091.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"}
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, MaxNackRetries: 2})

	msgs, ids := newMessages(5)
	err := pub.Publish(queue, msgs...)
	pe := requirePublishError(t, err, resilient.ErrNacked, ids[2:])
	if resilient.IsPermanent(pe) {
		t.Fatalf("%v should be temporary", err)
	}
	t.Log(err)
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, ids[:2]))
}

// The broker's own max_message_size, whatever it is (4 KiB here, on either
// line): the oversized message fails alone with ErrMessageTooLarge, and no
// other message is sent again, neither of its call nor of the callers
// sharing its channel. Once the broker refused one, a larger message fails
// before it is sent (no channel closed again); one at the limit goes.
func TestBrokerMaxMessageSize(t *testing.T) {
	brokertest.Need(t)
	const limit = 4096
	setBrokerMaxMessageSize(t, limit)

	var resent atomic.Int64
	pub, _ := pubsubtest.Publisher(t, resilient.Config{Channels: 1, OnEvent: func(e resilient.Event) {
		if e.Kind == resilient.MessagesResent {
			resent.Add(int64(e.Messages))
		}
	}}) // channels opened after the change see it
	healthy := newHealthyTopic(t)
	big := brokertest.Name("big")
	brokertest.DeleteQueues(t, big)

	// Bystanders on the same channel, all along.
	stop := make(chan struct{})
	var bystanders, warm sync.WaitGroup
	stopBystanders := sync.OnceFunc(func() { close(stop); bystanders.Wait() })
	defer stopBystanders() // before the publisher closes
	for range 4 {
		bystanders.Add(1)
		warm.Add(1)
		go func() {
			defer bystanders.Done()
			for first := true; ; first = false {
				select {
				case <-stop:
					return
				default:
				}
				msgs, ids := newMessages(10)
				err := pub.Publish(healthy.queue, msgs...)
				if first {
					warm.Done()
				}
				if err != nil {
					t.Errorf("a bystander failed: %v", err)
					return
				}
				healthy.ids.Add(ids...)
			}
		}()
	}
	warm.Wait() // each is publishing

	msgs, ids := newMessages(5)
	msgs[2].Payload = make([]byte, 2*limit)
	err := pub.Publish(big, msgs...)
	requirePublishError(t, err, resilient.ErrMessageTooLarge, ids[2:3])
	var refusal *amqp091.Error
	if !errors.As(err, &refusal) {
		t.Fatalf("%v: want the broker's refusal", err)
	}
	t.Log(err)

	// The limit is known now: refused before it is sent.
	over, overIDs := newMessages(1)
	over[0].Payload = make([]byte, limit+1)
	err = pub.Publish(big, over...)
	requirePublishError(t, err, resilient.ErrMessageTooLarge, overIDs)
	if errors.As(err, &refusal) {
		t.Errorf("%v: sent, though the broker's limit was known", err)
	}
	t.Log(err)
	at, atIDs := newMessages(1)
	at[0].Payload = make([]byte, limit)
	if err := pub.Publish(big, at...); err != nil {
		t.Fatalf("a message of the broker's limit: %v", err)
	}

	stopBystanders()
	if n := resent.Load(); n != 0 {
		t.Errorf("%d message(s) sent again for another's size", n)
	}
	t.Logf("%d bystander messages confirmed", healthy.ids.Len())
	healthy.requireNoneLost()
	want := append(append(append([]string{}, ids[:2]...), ids[3:]...), atIDs...)
	brokertest.RequireNoneLost(t, brokertest.Drain(t, big, want))
}

// setBrokerMaxMessageSize sets the broker's max_message_size for the
// channels opened from now on, and restores what it found when the test
// ends. RabbitMQ 3.x reads the application environment as each channel
// opens; 4.x reads a persistent term written at boot from it (set_env alone
// no longer takes), so both are set, the term only where the broker has one.
func setBrokerMaxMessageSize(t *testing.T, n int) {
	found := strings.TrimSpace(brokertest.Ctl(t, "eval",
		"{application:get_env(rabbit, max_message_size), persistent_term:get(max_message_size, none)}."))
	if !strings.HasPrefix(found, "{") {
		t.Fatalf("the broker's max_message_size: %q", found)
	}
	t.Logf("the broker's max_message_size (environment, persistent term): %s", found)
	t.Cleanup(func() {
		brokertest.Ctl(t, "eval", "{Env, Term} = "+found+`,
			case Env of {ok, V} -> application:set_env(rabbit, max_message_size, V); undefined -> application:unset_env(rabbit, max_message_size) end,
			case Term of none -> persistent_term:erase(max_message_size); _ -> persistent_term:put(max_message_size, Term) end.`)
	})
	brokertest.Ctl(t, "eval", fmt.Sprintf(`application:set_env(rabbit, max_message_size, %d),
		case persistent_term:get(max_message_size, none) of none -> ok; _ -> persistent_term:put(max_message_size, %d) end.`, n, n))
}

var _ = errors.Is
var _ = watermill.NewUUID

// Headers larger than the connection's frame_max: the broker would close
// the whole connection (501 FRAME_ERROR), on every reconnect. That message
// fails alone, at once, with ErrMessageTooLarge; the others of the call are
// confirmed, and the connection never drops.
func TestHeadersLargerThanAFrame(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("big-headers")
	brokertest.DeleteQueues(t, queue)
	var lost atomic.Int64
	pub, _ := pubsubtest.Publisher(t, resilient.Config{OnEvent: func(e resilient.Event) {
		if e.Kind == resilient.ConnectionLost {
			lost.Add(1)
		}
	}})
	msgs, ids := newMessages(3)
	msgs[1].Metadata.Set("big", strings.Repeat("x", 200<<10))
	start := time.Now()
	err := pub.Publish(queue, msgs...)
	pe := requirePublishError(t, err, resilient.ErrMessageTooLarge, ids[1:2])
	if !resilient.IsPermanent(err) || time.Since(start) > time.Second {
		t.Fatalf("%v after %s: want a permanent error at once", err, time.Since(start))
	}
	t.Log(pe)
	if n := lost.Load(); n != 0 {
		t.Fatalf("the connection was lost %d time(s)", n)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, queue, []string{ids[0], ids[2]}))
}

// limitedUser adds a user with the given configure, write and read
// permissions for the test, and returns the broker's URI as that user.
func limitedUser(t *testing.T, configure, write, read string) string {
	t.Helper()
	user, password := "resilient-test-"+strings.ToLower(t.Name()), "limited-Pa55"
	brokertest.Ctl(t, "add_user", user, password)
	t.Cleanup(func() { _, _ = brokertest.CtlErr("delete_user", user) })
	brokertest.Ctl(t, "set_permissions", "-p", "/", user, configure, write, read)
	u, err := url.Parse(brokertest.URI())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

// No write permission on the default exchange: the broker names it
// 'amq.default', messages name it "": the messages to it fail at once,
// permanently, rather than the channel being reopened until the bound.
func TestAccessRefusedOnTheDefaultExchange(t *testing.T) {
	brokertest.Need(t)
	uri := limitedUser(t, ".*", "^nothing$", ".*")
	queue := brokertest.Name("no-write")
	brokertest.DeleteQueues(t, queue)
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri), PublishTimeout: 10 * time.Second})
	msgs, ids := newMessages(3)
	start := time.Now()
	err := pub.Publish(queue, msgs...)
	requirePublishError(t, err, resilient.ErrAccessRefused, ids)
	if !resilient.IsPermanent(err) || time.Since(start) > 2*time.Second {
		t.Fatalf("%v after %s: want a permanent ErrAccessRefused at once", err, time.Since(start))
	}
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
}

// Topic permissions: on a topic exchange, the user may publish with routing
// keys allowed.* only. On one channel, calls with allowed keys and one with
// a denied key at the same time: the denied message fails, permanently; the
// allowed ones are confirmed (they were in flight on the channel the broker
// closed, but the broker named the key).
func TestTopicPermissionBlamesTheKeyOnly(t *testing.T) {
	brokertest.Need(t)
	uri := limitedUser(t, ".*", ".*", ".*")
	exchange, bound := brokertest.Name("topics"), brokertest.Name("allowed-q")
	user := "resilient-test-" + strings.ToLower(t.Name())
	brokertest.Ctl(t, "set_topic_permissions", "-p", "/", user, exchange, `^allowed\..*`, `^allowed\..*`)
	brokertest.DeleteQueues(t, bound)
	conn := brokertest.Dial(t)
	defer conn.Close()
	ch, _ := conn.Channel()
	t.Cleanup(func() { _ = ch.ExchangeDelete(exchange, false, false) })
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(bound, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(bound, "allowed.#", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	cfg := amqp.NewDurablePubSubConfig(uri, nil)
	cfg.Exchange.Type = "topic"
	cfg.Exchange.GenerateName = func(string) string { return exchange }
	cfg.Publish.GenerateRoutingKey = func(topic string) string { return topic }
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: cfg, Channels: 1})

	var confirmed brokertest.IDs
	for round := 0; round < 20; round++ {
		allowed, allowedIDs := newMessages(200)
		denied, deniedIDs := newMessages(1)
		errs := make(chan error, 1)
		go func() { errs <- pub.Publish("allowed.x", allowed...) }()
		err := pub.Publish("denied.x", denied...)
		requirePublishError(t, err, resilient.ErrAccessRefused, deniedIDs)
		if err := <-errs; err != nil {
			t.Fatalf("round %d: the allowed call failed: %v", round, err)
		}
		confirmed.Add(allowedIDs...)
	}
	brokertest.RequireNoneLost(t, brokertest.Drain(t, bound, confirmed.All()))
}
