package partition_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// The scenarios, each on a fresh cluster under pause_minority (the setting
// the README recommends): the client's node (node 1, first of the URIs,
// FailoverInOrder) is partitioned from the other two while a publisher and
// a subscriber, both on it with the library's default settings, carry a
// steady load to a quorum queue.
//
//   - A: node 1 isolated, both links: the client loses its node.
//   - B: only node 1's inter-node link cut: the client still reaches a node
//     on the minority side, which pauses itself.
//
// Each checks that nothing confirmed was lost (by UUID, reporting
// duplicates), that no Publish failed, and that the longest time without a
// confirm, and without a delivery, is at most slack more than the cluster
// itself needed: a plain amqp091-go probe, a fresh channel per try through
// node 2 (on the majority side), measures when the cluster could first
// confirm again.
func TestPartitionPauseMinorityIsolated(t *testing.T) {
	runScenario(t, scenario{mode: "pause_minority", fault: "isolate"})
}

func TestPartitionPauseMinorityInterNodeLinkCut(t *testing.T) {
	runScenario(t, scenario{mode: "pause_minority", fault: "cut"})
}

// The autoheal scenarios are measured, not run by CI: see the README.
func TestPartitionAutohealIsolated(t *testing.T) {
	needAutoheal(t)
	runScenario(t, scenario{mode: "autoheal", fault: "isolate"})
}

func TestPartitionAutohealInterNodeLinkCut(t *testing.T) {
	needAutoheal(t)
	runScenario(t, scenario{mode: "autoheal", fault: "cut"})
}

// A process that only consumes, on node 1 whose inter-node link is cut:
// node 1 stays up and answers (under autoheal until the heal; under
// pause_minority until it notices, net_ticktime later), the queue's leader
// is on node 2, and no publisher of the process leaves node 1 to follow
// (the publisher here is on nodes 2 and 3 only). The subscriber must find
// out by itself (core/idleprobe.go) and move within the same bound as in
// every scenario, which under pause_minority is shorter than node 1 takes
// to pause.
func TestPartitionPauseMinoritySubscriberAlone(t *testing.T) {
	runScenario(t, scenario{mode: "pause_minority", fault: "cut", subscriberAlone: true})
}

func TestPartitionAutohealSubscriberAlone(t *testing.T) {
	needAutoheal(t)
	runScenario(t, scenario{mode: "autoheal", fault: "cut", subscriberAlone: true})
}

func needAutoheal(t *testing.T) {
	if !*autoheal {
		t.Skip("autoheal scenarios: measured on demand (-autoheal), not by CI")
	}
}

const (
	// slack is how much longer than the cluster the library may go without
	// a confirm (the goal).
	slack = 5 * time.Second
	// goroutines publish one 1 KiB message a call, each at most a call
	// every pace.
	goroutines = 16
	pace       = 20 * time.Millisecond
	// warmUp confirmed messages before the partition.
	warmUp = 500
	// settled: after the partition, once both the probe and the publisher
	// confirmed, the load goes on this long before the heal, and as long
	// after it, so that a stall right after either shows.
	settled = 5 * time.Second
	// holdMax bounds the partition: a cluster that cannot confirm by then
	// fails the test.
	holdMax = 90 * time.Second
)

type scenario struct {
	mode  string // cluster_partition_handling
	fault string // isolate or cut (node 1)
	// subscriberAlone puts the publisher on nodes 2 and 3 only, and the
	// queue's leader on node 2 (the publisher declares it first): the
	// subscriber on node 1 has no publisher to follow off it.
	subscriberAlone bool
}

func runScenario(t *testing.T, sc scenario) {
	n := startNetns(t, sc.mode)
	queue := fmt.Sprintf("partition-%d", time.Now().UnixNano())
	cfg := amqp.NewDurableQueueConfig(n.uris[0])
	cfg.Queue.Arguments = amqp091.Table{"x-queue-type": "quorum"}
	cfg.Consume.Qos.PrefetchCount = 256
	logger := watermill.NewStdLogger(false, false)
	client := func(name string) resilient.Config {
		// The library's defaults but for the cluster's URIs.
		return resilient.Config{AMQP: cfg, FailoverURIs: n.uris[1:], FailoverInOrder: true, ConnectionName: name}
	}

	pubCfg := client(queue + "-pub")
	if sc.subscriberAlone {
		pubCfg.AMQP.Connection.AmqpURI, pubCfg.FailoverURIs = n.uris[1], n.uris[2:]
	}
	pub, err := resilient.NewPublisher(pubCfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	if sc.subscriberAlone {
		// Declared through node 2 first: its leader is there (client-local).
		if err := pub.Publish(queue, message.NewMessage(watermill.NewUUID(), []byte("declare"))); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := resilient.NewSubscriber(client(queue+"-sub"), logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	deliveries, err := sub.Subscribe(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	arrived := newTimeline()
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for m := range deliveries {
			arrived.add(m.UUID)
			m.Ack()
		}
	}()
	load := startLoad(pub, queue)
	defer func() { // whatever happened, in order: load, clients, consumer
		load.stop()
		_ = pub.Close()
		cancel()
		_ = sub.Close()
		<-consumed
	}()

	load.confirmed.await(t, warmUp, time.Minute, "warm-up")
	t0 := time.Now()
	n.do(sc.fault, "1")
	t.Logf("%s node 1 at t0", sc.fault)
	attachedAt := make(chan time.Time, 1)
	go func() { attachedAt <- probeConsume(t, n.uris[1], queue, t0.Add(holdMax)) }()
	probed := probe(t, n.uris[1], queue, t0.Add(holdMax))
	clusterNeeds := probed.Sub(t0)
	t.Logf("the cluster could confirm from t0+%s (plain client, fresh channel, node 2)", clusterNeeds.Round(100*time.Millisecond))
	// A delivery needs both a message confirmed and a consumer attached.
	deliveryNeeds := max(clusterNeeds, (<-attachedAt).Sub(t0))
	t.Logf("the cluster could deliver from t0+%s (plain client's consumer, fresh channel, node 2)", deliveryNeeds.Round(100*time.Millisecond))
	// Confirms after the probe's: the publisher got through too.
	load.confirmed.firstAfter(t, probed, t0.Add(holdMax))
	load.confirmed.await(t, load.confirmed.len()+goroutines, holdMax, "after the partition")
	time.Sleep(settled) // a load to watch, not a synchronisation
	healAt := time.Now()
	n.do("heal")
	t.Logf("healed at t0+%s", healAt.Sub(t0).Round(100*time.Millisecond))
	time.Sleep(settled)
	load.stop()
	t.Logf("cluster after the heal:\n%s", n.do("status"))

	// Drain: every confirmed message must arrive.
	want := load.confirmed.ids()
	arrived.awaitAll(t, want, 2*time.Minute)
	lost, dups := arrived.tally(want)

	gap, gapFrom := load.confirmed.longestGap(t0.Add(-time.Second), healAt.Add(settled))
	subGap, subGapFrom := arrived.longestGap(t0.Add(-time.Second), healAt.Add(settled))
	report := fmt.Sprintf("%s %s: confirmed %d, failed %d, lost %d, duplicates %d; confirms resumed at t0+%s; cluster could confirm from t0+%s; "+
		"longest without a confirm %s (from t0%+.1fs); longest Publish %s; subscriber's longest without a delivery %s (from t0%+.1fs; the cluster could deliver from t0+%s)",
		sc.mode, sc.fault, len(want), load.failedCount(), len(lost), dups, gapFrom.Add(gap).Sub(t0).Round(100*time.Millisecond),
		clusterNeeds.Round(100*time.Millisecond), gap.Round(100*time.Millisecond), gapFrom.Sub(t0).Seconds(),
		load.longest().Round(100*time.Millisecond), subGap.Round(100*time.Millisecond), subGapFrom.Sub(t0).Seconds(),
		deliveryNeeds.Round(100*time.Millisecond))
	t.Log(report)
	if len(lost) > 0 {
		t.Errorf("%d confirmed messages lost, e.g. %v", len(lost), lost[:min(5, len(lost))])
	}
	if f := load.failedCount(); f > 0 {
		t.Errorf("%d Publish calls failed, e.g. %v", f, load.firstFailure())
	}
	if gap > clusterNeeds+slack {
		t.Errorf("%s without a confirm, more than the cluster's %s + %s", gap.Round(100*time.Millisecond), clusterNeeds.Round(100*time.Millisecond), slack)
	}
	if subGap > deliveryNeeds+slack {
		t.Errorf("the subscriber went %s without a delivery, more than the cluster's %s + %s", subGap.Round(100*time.Millisecond), deliveryNeeds.Round(100*time.Millisecond), slack)
	}
}

// probe publishes, as a plain amqp091-go client through uri, one message a
// try on a fresh confirm-mode channel, until one is confirmed; it returns
// when that try was sent. A try unconfirmed within a second is abandoned
// (its channel closed in the background: it may answer only after the
// heal). The probe's messages go to the queue too: the subscriber takes
// them, and the tally ignores them.
func probe(t *testing.T, uri, queue string, deadline time.Time) time.Time {
	t.Helper()
	conn, err := amqp091.DialConfig(uri, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	var closing sync.WaitGroup
	defer func() {
		_ = conn.Close()
		closing.Wait()
	}()
	for time.Now().Before(deadline) {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatalf("probe: %v", err)
		}
		sent := time.Now()
		dc, err := ch.PublishWithDeferredConfirm("", queue, false, false, amqp091.Publishing{MessageId: "probe", DeliveryMode: 2, Body: []byte("probe")})
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		select {
		case <-dc.Done():
			if dc.Acked() {
				_ = ch.Close()
				return sent
			}
		case <-time.After(time.Second):
		}
		closing.Add(1)
		go func() {
			defer closing.Done()
			_ = ch.Close() // answered after the heal, or ended with the connection
		}()
	}
	t.Fatalf("probe: the cluster confirmed nothing within %s", holdMax)
	return time.Time{}
}

// probeConsume attaches, as a plain amqp091-go client through uri, a
// consumer to queue on a fresh channel a try, until one is attached; it
// returns when that try began. A try unanswered within a second is
// abandoned (its channel closed in the background), a refused one tried
// again a second after it began. An attached consumer's
// channel is closed at once: what it was sent goes back to the queue, for
// the subscriber. It reports failures with t.Error: it runs beside the
// test's goroutine.
func probeConsume(t *testing.T, uri, queue string, deadline time.Time) time.Time {
	conn, err := amqp091.DialConfig(uri, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Errorf("consumer probe: %v", err)
		return time.Time{}
	}
	var closing sync.WaitGroup
	defer func() {
		_ = conn.Close()
		closing.Wait()
	}()
	for time.Now().Before(deadline) {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("consumer probe: %v", err)
			return time.Time{}
		}
		began := time.Now()
		attached := make(chan error, 1)
		closing.Add(1)
		go func() {
			defer closing.Done()
			err := ch.Qos(1, 0, false)
			if err == nil {
				_, err = ch.Consume(queue, "", false, false, false, false, nil)
			}
			attached <- err
			_ = ch.Close() // answered after the heal, or ended with the connection
		}()
		select {
		case err := <-attached:
			if err == nil {
				return began
			}
			// Refused while the cluster recovers: the next try a second
			// after this one began.
			t.Logf("consumer probe: a try refused: %v", err)
			<-time.After(time.Until(began.Add(time.Second)))
		case <-time.After(time.Second):
		}
	}
	t.Errorf("consumer probe: no consumer attached within %s", holdMax)
	return time.Time{}
}

// load publishes from goroutines until stopped, recording when each
// message was confirmed, each failure, and the longest Publish.
type load struct {
	pub       message.Publisher
	confirmed *timeline
	halt      chan struct{}
	once      sync.Once
	wg        sync.WaitGroup

	mu       sync.Mutex
	failures []error
	longestP time.Duration
}

func startLoad(pub message.Publisher, topic string) *load {
	l := &load{pub: pub, confirmed: newTimeline(), halt: make(chan struct{})}
	payload := []byte(strings.Repeat("x", 1024))
	for range goroutines {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(pace)
			defer tick.Stop()
			for {
				select {
				case <-l.halt:
					return
				case <-tick.C:
				}
				msg := message.NewMessage(watermill.NewUUID(), payload)
				began := time.Now()
				err := l.pub.Publish(topic, msg)
				took := time.Since(began)
				l.mu.Lock()
				l.longestP = max(l.longestP, took)
				if err != nil {
					l.failures = append(l.failures, err)
				}
				l.mu.Unlock()
				if err == nil {
					l.confirmed.add(msg.UUID)
				}
			}
		}()
	}
	return l
}

func (l *load) stop() {
	l.once.Do(func() { close(l.halt) })
	l.wg.Wait()
}

func (l *load) failedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.failures)
}

func (l *load) firstFailure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) == 0 {
		return nil
	}
	return l.failures[0]
}

func (l *load) longest() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.longestP
}

// timeline records IDs with when each was seen.
type timeline struct {
	mu      sync.Mutex
	seen    map[string]int
	order   []string
	times   []time.Time
	changed chan struct{}
}

func newTimeline() *timeline {
	return &timeline{seen: map[string]int{}, changed: make(chan struct{})}
}

func (tl *timeline) add(id string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.seen[id]++
	tl.order = append(tl.order, id)
	tl.times = append(tl.times, time.Now())
	close(tl.changed)
	tl.changed = make(chan struct{})
}

func (tl *timeline) len() int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return len(tl.order)
}

func (tl *timeline) ids() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return slices.Clone(tl.order)
}

// until waits until ok (checked under the lock) or the bound passes.
func (tl *timeline) until(ok func() bool, bound time.Duration) bool {
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for {
		tl.mu.Lock()
		done, changed := ok(), tl.changed
		tl.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		}
	}
}

func (tl *timeline) await(t *testing.T, n int, bound time.Duration, what string) {
	t.Helper()
	if !tl.until(func() bool { return len(tl.order) >= n }, bound) {
		t.Fatalf("%s: %d of %d within %s", what, tl.len(), n, bound)
	}
}

// firstAfter is when the first ID after since was seen.
func (tl *timeline) firstAfter(t *testing.T, since, deadline time.Time) time.Time {
	t.Helper()
	var at time.Time
	ok := tl.until(func() bool {
		if i, found := slices.BinarySearchFunc(tl.times, since, time.Time.Compare); i < len(tl.times) {
			_ = found
			at = tl.times[i]
			return true
		}
		return false
	}, time.Until(deadline))
	if !ok {
		t.Fatalf("nothing seen after the partition within %s", holdMax)
	}
	return at
}

// longestGap is the longest time between two IDs seen (or from, or to)
// within [from, to], and where it began.
func (tl *timeline) longestGap(from, to time.Time) (time.Duration, time.Time) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	prev, gap, began := from, time.Duration(0), from
	for _, at := range tl.times {
		if at.Before(from) {
			continue
		}
		if at.After(to) {
			break
		}
		if d := at.Sub(prev); d > gap {
			gap, began = d, prev
		}
		prev = at
	}
	if d := to.Sub(prev); d > gap {
		gap, began = d, prev
	}
	return gap, began
}

func (tl *timeline) awaitAll(t *testing.T, want []string, bound time.Duration) {
	t.Helper()
	next := 0 // want[:next] all seen
	allSeen := func() bool {
		for next < len(want) && tl.seen[want[next]] > 0 {
			next++
		}
		return next == len(want)
	}
	if !tl.until(allSeen, bound) {
		t.Logf("drain: still missing messages after %s", bound)
	}
}

// tally: the wanted IDs never seen, and the deliveries beyond one of those
// seen.
func (tl *timeline) tally(want []string) (lost []string, duplicates int) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for _, id := range want {
		switch c := tl.seen[id]; {
		case c == 0:
			lost = append(lost, id)
		case c > 1:
			duplicates += c - 1
		}
	}
	return lost, duplicates
}
