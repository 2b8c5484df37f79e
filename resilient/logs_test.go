package resilient_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/pubsubtest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// A fault the library absorbs logs no ERROR (alerts watch ERROR): one INFO
// line when it starts and one when it ends, with how long the connection
// was down and how many messages were sent again; on both sides, through a
// forced close and a broker restart, with nothing lost.
func TestAbsorbedFaultsLogNoError(t *testing.T) {
	brokertest.Need(t)
	for _, fault := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"forced close", func(t *testing.T) { brokertest.CloseAllConnections(t) }},
		{"broker restart", func(t *testing.T) { brokertest.StopApp(t); brokertest.StartApp(t) }},
	} {
		t.Run(fault.name, func(t *testing.T) {
			queue := brokertest.Name("logs")
			brokertest.DeleteQueues(t, queue)
			pubLogs, subLogs := watermill.NewCaptureLogger(), watermill.NewCaptureLogger()
			pubEvents, onPub := newEventQueue(resilient.Reconnected)
			subEvents, onSub := newEventQueue(resilient.Reconnected, resilient.ConsumerReattached)

			cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI()), OnEvent: onPub}
			pub, err := resilient.NewPublisher(cfg, pubLogs)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := pub.Close(); err != nil {
					t.Errorf("publisher Close: %v", err)
				}
			}()
			cfg.OnEvent = onSub
			cfg.AMQP.Consume.Qos.PrefetchCount = 64
			sub, err := resilient.NewSubscriber(cfg, subLogs)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := sub.Close(); err != nil {
					t.Errorf("subscriber Close: %v", err)
				}
			}()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			msgs, err := sub.Subscribe(ctx, queue)
			if err != nil {
				t.Fatal(err)
			}
			r := newReceived()
			done := consumeAll(msgs, r, nil)

			load := brokertest.StartLoad(t, pub, 4, queue)
			load.WaitProgress(200)
			fault.run(t)
			pubEvents.await(t, resilient.Reconnected)
			subEvents.await(t, resilient.Reconnected)
			subEvents.await(t, resilient.ConsumerReattached)
			load.WaitProgress(200)
			load.Stop()
			ids := load.Confirmed.All()
			r.AwaitAll(t, ids)
			cancel()
			<-done
			r.tally(t, ids)

			for side, logs := range map[string]*watermill.CaptureLoggerAdapter{"publisher": pubLogs, "subscriber": subLogs} {
				if errs := logs.Captured()[watermill.ErrorLogLevel]; len(errs) > 0 {
					t.Errorf("%s logged %d ERROR line(s) for a fault it absorbed, e.g. %q: %v", side, len(errs), errs[0].Msg, errs[0].Err)
				}
				requireOneInfo(t, side, logs, "AMQP connection lost, reconnecting", "uri", "reason")
				requireOneInfo(t, side, logs, "Reconnected to AMQP", "uri", "attempts", "down_for", "resent")
				// The rest of an absorbed fault is a detail: a few lines,
				// however many channels and messages were in flight.
				if n := len(logs.Captured()[watermill.InfoLogLevel]); n > 8 {
					t.Errorf("%s logged %d INFO lines for one fault, want a few: %v", side, n, infoCounts(logs))
				}
			}
			t.Logf("publisher's end line: %v", lastInfo(pubLogs, "Reconnected to AMQP"))
			for side, logs := range map[string]*watermill.CaptureLoggerAdapter{"publisher": pubLogs, "subscriber": subLogs} {
				t.Logf("%s's INFO lines: %v", side, infoCounts(logs))
			}
		})
	}
}

// requireOneInfo fails unless logs has exactly one INFO line msg, with the
// fields named.
func requireOneInfo(t *testing.T, side string, logs *watermill.CaptureLoggerAdapter, msg string, fields ...string) {
	t.Helper()
	var found []watermill.CapturedMessage
	for _, m := range logs.Captured()[watermill.InfoLogLevel] {
		if m.Msg == msg {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Errorf("%s: %d INFO line(s) %q, want 1", side, len(found), msg)
		return
	}
	for _, f := range fields {
		if _, ok := found[0].Fields[f]; !ok {
			t.Errorf("%s: %q has no field %s: %v", side, msg, f, found[0].Fields)
		}
	}
}

// lastInfo returns the fields of the last INFO line msg.
func lastInfo(logs *watermill.CaptureLoggerAdapter, msg string) watermill.LogFields {
	var fields watermill.LogFields
	for _, m := range logs.Captured()[watermill.InfoLogLevel] {
		if m.Msg == msg {
			fields = m.Fields
		}
	}
	return fields
}

// infoCounts counts the INFO lines by message, to show what a fault costs
// an operator's log.
func infoCounts(logs *watermill.CaptureLoggerAdapter) map[string]int {
	counts := map[string]int{}
	for _, m := range logs.Captured()[watermill.InfoLogLevel] {
		counts[m.Msg]++
	}
	return counts
}

// A refusal that lasts is logged at ERROR once, not at every retry: a
// consume the broker refuses (read permission taken away) once per
// subscription and reason, a connection it refuses (vhost access taken
// away) once by the connection, not again by each subscription waiting
// for it. Once the permissions are back, the subscriptions consume again
// and nothing published is lost.
func TestLastingRefusalsAreLoggedOnce(t *testing.T) {
	brokertest.Need(t)
	uri := limitedUser(t, ".*", ".*", ".*")
	user := "resilient-test-" + strings.ToLower(t.Name())
	queues := []string{brokertest.Name("refused-a"), brokertest.Name("refused-b")}
	brokertest.DeleteQueues(t, queues...)
	logs := watermill.NewCaptureLogger()
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(uri),
		Reconnect: resilient.Backoff{InitialWait: 50 * time.Millisecond, MaxWait: 200 * time.Millisecond}}
	sub, err := resilient.NewSubscriber(cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sub.Close(); err != nil {
			t.Errorf("subscriber Close: %v", err)
		}
	}()
	r := newReceived()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var consumers []<-chan struct{}
	for _, q := range queues {
		msgs, err := sub.Subscribe(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		consumers = append(consumers, consumeAll(msgs, r, nil))
	}
	count := func(level watermill.LogLevel, msg string) int {
		n := 0
		for _, m := range logs.Captured()[level] {
			if m.Msg == msg {
				n++
			}
		}
		return n
	}
	await := func(what string, done func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !done(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never happened; logged: %v", what, levelCounts(logs))
			}
		}
	}

	// Consume refused, the connection accepted: each subscription retries.
	brokertest.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", "^$")
	brokertest.CloseAllConnections(t)
	await("5 refused retries per subscription", func() bool {
		return count(watermill.DebugLogLevel, "Cannot consume, still refused, will retry") >= 5*len(queues)
	})
	if n := count(watermill.ErrorLogLevel, "Cannot consume, will retry"); n != len(queues) {
		t.Errorf("%d ERROR lines for a refused consume, want one per subscription (%d)", n, len(queues))
	}

	// The connection refused: the subscriptions wait for it.
	brokertest.Ctl(t, "clear_permissions", "-p", "/", user)
	brokertest.CloseAllConnections(t)
	await("5 waits per subscription for a refused connection", func() bool {
		return count(watermill.DebugLogLevel, "Cannot consume: not connected") >= 5*len(queues)
	})
	if n := count(watermill.ErrorLogLevel, "AMQP refuses the connection: waiting calls fail until it accepts it again"); n != 1 {
		t.Errorf("%d ERROR lines for a refused connection, want 1", n)
	}

	brokertest.Ctl(t, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
	pub, _ := pubsubtest.Publisher(t, resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())})
	var ids []string
	for _, q := range queues {
		msgs, qids := newMessages(20)
		if err := pub.Publish(q, msgs...); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, qids...)
	}
	r.AwaitAll(t, ids)
	cancel()
	for _, done := range consumers {
		<-done
	}
	r.tally(t, ids)
	// In all, each refusal once: the same again only if its reason changed
	// meanwhile (the permissions cleared while a subscription still
	// retried on its connection: RabbitMQ 4 then names the configure
	// access refused, where before it named the read access).
	said := map[string]int{}
	for _, m := range logs.Captured()[watermill.ErrorLogLevel] {
		said[m.Msg+": "+fmt.Sprint(m.Err)]++
		switch m.Msg {
		case "Cannot consume, will retry", "AMQP refuses the connection: waiting calls fail until it accepts it again":
		default:
			t.Errorf("ERROR %s: %v", m.Msg, m.Err)
		}
	}
	for line, n := range said {
		if n > 1 {
			t.Errorf("logged %d times at ERROR, the reason unchanged: %s", n, line)
		}
	}
}

// levelCounts counts the lines by level and message.
func levelCounts(logs *watermill.CaptureLoggerAdapter) map[string]int {
	counts := map[string]int{}
	for level, lines := range logs.Captured() {
		for _, m := range lines {
			counts[fmt.Sprintf("%v %s", level, m.Msg)]++
		}
	}
	return counts
}
