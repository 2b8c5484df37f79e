package health_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/health"
	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// A memory alarm on the broker makes the components not ready, yet live,
// until it clears.
func TestReadinessDuringMemoryAlarm(t *testing.T) {
	brokertest.Need(t)
	queue := brokertest.Name("health-alarm")
	brokertest.DeleteQueues(t, queue)
	cfg := resilient.Config{AMQP: amqp.NewDurableQueueConfig(brokertest.URI())}
	pub, err := resilient.NewPublisher(cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	sub, err := resilient.NewSubscriber(cfg, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	arrivals := brokertest.NewArrivals()
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m := range msgs {
			arrivals.Add(m.UUID)
			m.Ack()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = sub.Close()
		wg.Wait()
	})

	checker := health.NewChecker(0).Add("publisher", pub).Add("subscriber", sub)
	mux := http.NewServeMux()
	mux.Handle("/readyz", checker.ReadyHandler())
	mux.Handle("/livez", checker.LiveHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	probe := func(path string) (int, string) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	// awaitReady polls /readyz until it answers want, for up to a minute.
	awaitReady := func(want int) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			code, body := probe("/readyz")
			if code == want {
				return body, time.Since(start)
			}
			if time.Since(start) > time.Minute {
				t.Fatalf("/readyz still %d after a minute, want %d:\n%s", code, want, body)
			}
			<-tick.C
		}
	}

	warm, warmIDs := brokertest.Messages(3)
	if err := pub.Publish(queue, warm...); err != nil {
		t.Fatal(err)
	}
	arrivals.AwaitAll(t, warmIDs)
	body, _ := awaitReady(http.StatusOK)
	t.Logf("before the alarm, /readyz 200:\n%s", body)

	restore := memoryAlarm(t)
	// The broker blocks a connection once it publishes: a publish,
	// bounded, that the alarm keeps unconfirmed.
	published := make(chan error, 1)
	go func() {
		blocked, _ := brokertest.Messages(1)
		c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		blocked[0].SetContext(c)
		published <- pub.Publish(queue, blocked...)
	}()
	body, took := awaitReady(http.StatusServiceUnavailable)
	t.Logf("alarm raised: /readyz 503 after %s:\n%s", took.Round(time.Millisecond), body)
	if !strings.Contains(body, "publisher: blocked") || !strings.Contains(strings.ToLower(body), "memory") {
		t.Errorf("/readyz body names no blocked publisher and no memory alarm:\n%s", body)
	}
	if err := checker.Ready(context.Background()); err == nil {
		t.Error("Ready: nil during the alarm")
	}
	if code, body := probe("/livez"); code != http.StatusOK {
		t.Errorf("/livez during the alarm: %d, want 200 (blocked is alive):\n%s", code, body)
	}
	t.Logf("the publish during the alarm: %v", <-published)

	restore()
	body, took = awaitReady(http.StatusOK)
	t.Logf("alarm cleared: /readyz 200 after %s:\n%s", took.Round(time.Millisecond), body)
	if err := checker.Ready(context.Background()); err != nil {
		t.Errorf("Ready after the alarm: %v", err)
	}
	after, afterIDs := brokertest.Messages(3)
	if err := pub.Publish(queue, after...); err != nil {
		t.Fatalf("Publish after the alarm: %v", err)
	}
	arrivals.AwaitAll(t, afterIDs)
}

// memoryAlarm sets the broker's memory watermark to 0, which raises a memory
// alarm, until restore (also a cleanup) sets it back to what it was.
func memoryAlarm(t *testing.T) (restore func()) {
	t.Helper()
	old := strings.TrimSpace(brokertest.Ctl(t, "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."))
	args := []string{"set_vm_memory_high_watermark", old}
	if rest, ok := strings.CutPrefix(old, "{absolute,"); ok { // {absolute,1073741824}
		args = []string{"set_vm_memory_high_watermark", "absolute", strings.TrimSpace(strings.TrimSuffix(rest, "}"))}
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if out, err := brokertest.CtlErr(args...); err != nil {
				t.Errorf("restoring the memory watermark (%s): %v %s", old, err, out)
			}
		})
	}
	t.Cleanup(restore)
	brokertest.Ctl(t, "set_vm_memory_high_watermark", "0")
	return restore
}
