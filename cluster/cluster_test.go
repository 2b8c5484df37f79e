package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/resilientmq/watermill-rabbitmq/internal/brokertest"
	"github.com/resilientmq/watermill-rabbitmq/internal/clustertest"
	"github.com/resilientmq/watermill-rabbitmq/resilient"
)

// publishBound is the bound within which no Publish may fail, whatever
// node is lost: each call's PublishTimeout.
const publishBound = 60 * time.Second

// run is one queue's publisher, subscriber and load on the cluster, given
// the three URIs.
type run struct {
	t       *testing.T
	c       *clustertest.Cluster
	queue   string
	cfg     amqp.Config
	pub     *resilient.Publisher
	sub     *resilient.Subscriber
	pubName string
	subName string
	pubSt   *brokertest.States
	load    *brokertest.Load
	arrived *brokertest.Arrivals
	stop    context.CancelFunc
	done    chan struct{}
	events  eventLog
}

// eventLog keeps the publisher's events with their times, to tell what
// happened after a fault.
type eventLog struct {
	mu     sync.Mutex
	events []timedEvent
}

type timedEvent struct {
	at time.Time
	resilient.Event
}

func (l *eventLog) add(e resilient.Event) {
	switch e.Kind {
	case resilient.MessagesConfirmed, resilient.PublishStarted, resilient.PublishDone:
		return // too many to keep
	}
	l.mu.Lock()
	l.events = append(l.events, timedEvent{time.Now(), e})
	l.mu.Unlock()
}

// since sums the events of each kind after t.
func (l *eventLog) since(t time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := map[resilient.EventKind]int{}
	var last time.Time
	for _, e := range l.events {
		if e.at.After(t) {
			counts[e.Kind] += max(e.Messages, 1)
			last = e.at
		}
	}
	settled := "no event"
	if !last.IsZero() {
		settled = "the last " + last.Sub(t).Round(time.Millisecond).String() + " after"
	}
	return fmt.Sprintf("nacked %d, re-sent %d, returned %d, failed %d, connections lost %d (%s)",
		counts[resilient.MessagesNacked], counts[resilient.MessagesResent], counts[resilient.MessagesReturned],
		counts[resilient.MessagesFailed], counts[resilient.ConnectionLost], settled)
}

// config is a durable queue config on the cluster's three URIs, with the
// queue's arguments (quorum or classic).
func config(c *clustertest.Cluster, args amqp091.Table) amqp.Config {
	cfg := amqp.NewDurableQueueConfig(c.URI(1))
	cfg.Queue.Arguments = args
	cfg.Consume.Qos.PrefetchCount = 64
	return cfg
}

func clientConfig(c *clustertest.Cluster, cfg amqp.Config, name string, record func(string)) resilient.Config {
	return resilient.Config{
		AMQP:           cfg,
		FailoverURIs:   c.URIs()[1:],
		ConnectionName: name,
		Heartbeat:      2 * time.Second,
		PublishTimeout: publishBound,
		OnStateChange: func(s resilient.StateChange) {
			if record != nil {
				record(s.To.String())
			}
		},
	}
}

func startRun(t *testing.T, c *clustertest.Cluster, name string, args amqp091.Table) *run {
	t.Helper()
	r := &run{t: t, c: c, queue: brokertest.Name(name), arrived: brokertest.NewArrivals(), done: make(chan struct{})}
	r.pubName, r.subName = r.queue+"-pub", r.queue+"-sub"
	r.cfg = config(c, args)
	logger := watermill.NewStdLogger(false, false)

	var record func(string)
	r.pubSt, record = brokertest.NewStates(t)
	pubCfg := clientConfig(c, r.cfg, r.pubName, record)
	pubCfg.OnEvent = r.events.add
	pub, err := resilient.NewPublisher(pubCfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	r.pub = pub
	sub, err := resilient.NewSubscriber(clientConfig(c, r.cfg, r.subName, nil), logger)
	if err != nil {
		t.Fatal(err)
	}
	r.sub = sub
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	msgs, err := sub.Subscribe(ctx, r.queue)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		for msg := range msgs {
			r.arrived.Add(msg.UUID)
			msg.Ack()
		}
	}()
	// 16 goroutines of 1 KiB messages, each at most a call every 10 ms
	// (about 3,000 messages a second): the nodes, on the same two cores,
	// must still boot in time.
	r.load = brokertest.StartLoadWith(t, pub, brokertest.LoadConfig{Goroutines: 16, Size: 1024, Pace: 10 * time.Millisecond}, r.queue)
	t.Logf("publisher on node %d, subscriber on node %d, queue %s", r.nodeOf(r.pubName), r.nodeOf(r.subName), r.describeQueue())
	return r
}

// nodeOf is the node holding the connection named name, waiting for it to
// show (a reconnect takes a moment).
func (r *run) nodeOf(name string) int {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		nodes, err := r.c.NodesOfConnection(name)
		if err == nil && len(nodes) == 1 {
			return nodes[0]
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("connection %s: nodes %v, %v", name, nodes, err)
		}
		time.Sleep(100 * time.Millisecond) // polling the broker's list: there is no event
	}
}

func (r *run) describeQueue() string {
	q, err := r.c.QueueInfo(r.queue)
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%s (%s, leader node %d, %d/%d members online, %d ready, %d unacked, %d consumers)",
		q.State, q.Type, q.LeaderNode, len(q.Online), len(q.Members), q.Ready, q.Unacked, q.Consumers)
}

// recovery logs how long after a fault at since the first Publish call
// returned confirmed and the first message reached the handler.
func (r *run) recovery(what string, since time.Time) {
	r.t.Helper()
	r.load.WaitProgress(1)
	confirmed := time.Since(since)
	handled := r.arrived.FirstAfter(r.t, since).Sub(since)
	r.t.Logf("%s: first confirm after %s, first message handled after %s; publisher since: %s", what, confirmed.Round(time.Millisecond), handled.Round(time.Millisecond), r.events.since(since))
}

// killNodeInUse SIGKILLs the publisher's node, and starts it again at once
// (it takes several seconds to boot): the publisher must fail over.
func (r *run) killNodeInUse() int {
	r.t.Helper()
	r.load.WaitProgress(500)
	n, subNode := r.nodeOf(r.pubName), r.nodeOf(r.subName)
	killed := time.Now()
	if err := r.c.Kill(n); err != nil {
		r.t.Fatal(err)
	}
	r.t.Logf("killed node %d (the publisher's; the subscriber's is %d)", n, subNode)
	restarted := make(chan error, 1)
	go func() { restarted <- r.c.StartNode(n) }()
	r.pubSt.Await("reconnecting")
	r.recovery("SIGKILL of the node in use", killed)
	if err := <-restarted; err != nil {
		r.t.Fatal(err)
	}
	r.t.Logf("node %d back after %s; queue %s", n, time.Since(killed).Round(time.Millisecond), r.describeQueue())
	r.load.WaitProgress(500)
	return n
}

// stopAnotherNode stops a node other than not gracefully (the subscriber's
// if it can), and starts it again.
func (r *run) stopAnotherNode(not int) {
	r.t.Helper()
	n := r.nodeOf(r.subName)
	if n == not {
		n = not%r.c.Size() + 1
	}
	stopped := time.Now()
	if err := r.c.StopNode(n); err != nil {
		r.t.Fatal(err)
	}
	r.t.Logf("stopped node %d gracefully", n)
	r.recovery("graceful stop", stopped)
	if err := r.c.StartNode(n); err != nil {
		r.t.Fatal(err)
	}
	r.t.Logf("node %d back after %s; queue %s", n, time.Since(stopped).Round(time.Millisecond), r.describeQueue())
	r.load.WaitProgress(500)
}

// minority stops two of the three nodes. A quorum queue cannot confirm
// then: a publish with a short bound fails with ErrNotConfirmed naming its
// messages, while the load's publishes (bound: a minute) wait. Once a node
// returns, they flow.
func (r *run) minority() {
	r.t.Helper()
	r.load.WaitProgress(200)
	left := r.nodeOf(r.subName)
	var down []int
	for n := 1; n <= r.c.Size(); n++ {
		if n != left {
			down = append(down, n)
		}
	}
	lostAt := time.Now()
	var wg sync.WaitGroup
	for _, n := range down {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.c.StopNode(n); err != nil {
				r.t.Error(err)
			}
		}()
	}
	wg.Wait()
	if r.t.Failed() {
		r.t.FailNow()
	}
	r.t.Logf("nodes %v stopped: node %d alone, queue %s", down, left, r.describeQueue())

	cfg := clientConfig(r.c, r.cfg, r.queue+"-probe", nil)
	cfg.PublishTimeout = 3 * time.Second
	probe, err := resilient.NewPublisher(cfg, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	msgs, ids := brokertest.Messages(10)
	start := time.Now()
	err = probe.Publish(r.queue, msgs...)
	var pe *resilient.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, resilient.ErrNotConfirmed) || resilient.IsPermanent(err) || !slices.Equal(pe.Unconfirmed, ids) {
		r.t.Fatalf("Publish without a majority: %v, want a transient ErrNotConfirmed naming its 10 messages", err)
	}
	r.t.Logf("without a majority, Publish failed after %s: %.160s", time.Since(start).Round(time.Millisecond), err)
	if err := probe.Close(); err != nil {
		r.t.Logf("probe Close: %v", err)
	}

	back := down[0]
	if err := r.c.StartNode(back); err != nil {
		r.t.Fatal(err)
	}
	majority := time.Now()
	r.t.Logf("node %d back %s after the majority was lost", back, majority.Sub(lostAt).Round(time.Millisecond))
	r.recovery("majority back", majority)
	if err := r.c.StartNode(down[1]); err != nil {
		r.t.Fatal(err)
	}
	r.load.WaitProgress(500)
}

// finish stops publishing, waits until the handler got every confirmed
// message, closes both, and checks what is left in the queue.
func (r *run) finish() {
	r.t.Helper()
	r.load.Stop() // fails the test if any Publish failed
	ids := r.load.Confirmed.All()
	r.arrived.AwaitAll(r.t, ids)
	r.stop()
	<-r.done
	if err := r.sub.Close(); err != nil {
		r.t.Errorf("subscriber Close: %v", err)
	}
	if err := r.pub.Close(); err != nil {
		r.t.Errorf("publisher Close: %v", err)
	}
	tally := r.arrived.Tally(ids)
	r.t.Logf("handled: %s", tally)
	brokertest.RequireNoneLost(r.t, tally)
	left := r.describeQueue()
	r.t.Logf("queue at the end: %s", left)
}

var quorum = amqp091.Table{"x-queue-type": "quorum"}

// A quorum queue through SIGKILL of the node in use, a graceful stop of
// another, and the loss of the majority: nothing confirmed is lost, no
// Publish fails within its minute, and without a majority a short-bound
// Publish fails with ErrNotConfirmed.
func TestQuorumQueueThroughNodeLosses(t *testing.T) {
	c := needCluster(t)
	r := startRun(t, c, "quorum", quorum)
	killed := r.killNodeInUse()
	r.stopAnotherNode(killed)
	r.minority()
	r.finish()
}

// A classic durable queue through SIGKILL of the node in use and a graceful
// stop of another. The queue lives on one node: while that node is away
// its messages wait (the declaration says "down or inaccessible"), within
// their bound.
func TestClassicQueueThroughNodeLosses(t *testing.T) {
	c := needCluster(t)
	r := startRun(t, c, "classic", nil)
	killed := r.killNodeInUse()
	r.stopAnotherNode(killed)
	r.finish()
}

var _ message.Publisher = (*resilient.Publisher)(nil)
