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
	kind    string // quorum or classic
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

func startRun(t *testing.T, c *clustertest.Cluster, kind string, args amqp091.Table, goroutines int) *run {
	t.Helper()
	r := &run{t: t, c: c, kind: kind, queue: brokertest.Name(kind), arrived: brokertest.NewArrivals(), done: make(chan struct{})}
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
	// Goroutines of 1 KiB messages, each at most a call every 10 ms: the
	// nodes, on the same two cores, must still boot in time.
	r.load = brokertest.StartLoadWith(t, pub, brokertest.LoadConfig{Goroutines: goroutines, Size: 1024, Pace: 10 * time.Millisecond}, r.queue)
	t.Logf("%s: publisher on node %d, subscriber on node %d, queue %s", kind, r.nodeOf(r.pubName), r.nodeOf(r.subName), r.describeQueue())
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
	r.t.Logf("%s, %s queue: first confirm after %s, first message handled after %s; publisher since: %s", what, r.kind, confirmed.Round(time.Millisecond), handled.Round(time.Millisecond), r.events.since(since))
}

// scenario is the runs that go through the same node faults together.
type scenario struct {
	t    *testing.T
	c    *clustertest.Cluster
	runs []*run // the first one's clients decide which nodes to hit
}

// restart starts node n again at once; wait waits until it runs. In
// between, the runs recover (or, for a queue on that node, wait for it).
func (s *scenario) restart(n int) (wait func()) {
	done := make(chan error, 1)
	go func() { done <- s.c.StartNode(n) }()
	return func() {
		if err := <-done; err != nil {
			s.t.Fatal(err)
		}
	}
}

// killNodeInUse SIGKILLs the first run's publisher's node, and starts it
// again at once (it takes several seconds to boot): the clients fail over.
func (s *scenario) killNodeInUse() int {
	s.t.Helper()
	first := s.runs[0]
	for _, r := range s.runs {
		r.load.WaitProgress(300)
	}
	n, subNode := first.nodeOf(first.pubName), first.nodeOf(first.subName)
	killed := time.Now()
	if err := s.c.Kill(n); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("killed node %d (the %s publisher's; its subscriber's is %d)", n, first.kind, subNode)
	wait := s.restart(n)
	first.pubSt.Await("reconnecting")
	for _, r := range s.runs {
		r.recovery("SIGKILL of the node in use", killed)
	}
	wait()
	s.settled(n, killed)
	return n
}

// stopAnotherNode stops a node other than not gracefully (the first run's
// subscriber's if it can), and starts it again at once.
func (s *scenario) stopAnotherNode(not int) {
	s.t.Helper()
	first := s.runs[0]
	n := first.nodeOf(first.subName)
	if n == not {
		n = not%s.c.Size() + 1
	}
	stopped := time.Now()
	if err := s.c.StopNode(n); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("stopped node %d gracefully in %s", n, time.Since(stopped).Round(time.Millisecond))
	wait := s.restart(n)
	for _, r := range s.runs {
		r.recovery("graceful stop", stopped)
	}
	wait()
	s.settled(n, stopped)
}

// settled logs each queue once node n is back, and lets the loads go on.
func (s *scenario) settled(n int, since time.Time) {
	s.t.Helper()
	for _, r := range s.runs {
		s.t.Logf("node %d back after %s; %s queue %s", n, time.Since(since).Round(time.Millisecond), r.kind, r.describeQueue())
	}
	for _, r := range s.runs {
		r.load.WaitProgress(300)
	}
}

// minority stops two of the three nodes. A quorum queue (the first run's)
// cannot confirm then: a publish with a short bound fails with
// ErrNotConfirmed naming its messages, while the loads' publishes (bound: a
// minute) wait. Once a node returns, they flow.
func (s *scenario) minority() {
	s.t.Helper()
	r := s.runs[0]
	left := r.nodeOf(r.subName)
	var down []int
	for n := 1; n <= s.c.Size(); n++ {
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
			if err := s.c.StopNode(n); err != nil {
				s.t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s.t.Failed() {
		s.t.FailNow()
	}
	s.t.Logf("nodes %v stopped in %s: node %d alone, %s queue %s", down, time.Since(lostAt).Round(time.Millisecond), left, r.kind, r.describeQueue())

	cfg := clientConfig(s.c, r.cfg, r.queue+"-probe", nil)
	cfg.PublishTimeout = 3 * time.Second
	probe, err := resilient.NewPublisher(cfg, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	msgs, ids := brokertest.Messages(10)
	start := time.Now()
	err = probe.Publish(r.queue, msgs...)
	var pe *resilient.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, resilient.ErrNotConfirmed) || resilient.IsPermanent(err) || !slices.Equal(pe.Unconfirmed, ids) {
		s.t.Fatalf("Publish without a majority: %v, want a transient ErrNotConfirmed naming its 10 messages", err)
	}
	s.t.Logf("without a majority, Publish failed after %s: %.160s", time.Since(start).Round(time.Millisecond), err)
	if err := probe.Close(); err != nil {
		s.t.Logf("probe Close: %v", err)
	}

	if err := s.c.StartNode(down[0]); err != nil {
		s.t.Fatal(err)
	}
	majority := time.Now()
	s.t.Logf("node %d back %s after the majority was lost", down[0], majority.Sub(lostAt).Round(time.Millisecond))
	r.recovery("majority back", majority)
	wait := s.restart(down[1])
	for _, r := range s.runs[1:] {
		r.recovery("majority back", majority)
	}
	wait()
	s.settled(down[1], lostAt)
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
	r.t.Logf("%s queue, handled: %s", r.kind, tally)
	brokertest.RequireNoneLost(r.t, tally)
	r.t.Logf("%s queue at the end: %s", r.kind, r.describeQueue())
}

var quorum = amqp091.Table{"x-queue-type": "quorum"}

// A quorum queue and a classic durable queue, side by side, each with its
// publisher (16 and 8 goroutines of 1 KiB messages) and its subscriber,
// through SIGKILL of the node in use, a graceful stop of another, and the
// loss of the majority. Nothing confirmed is lost and no Publish fails
// within its minute. Without a majority a short-bound Publish to the quorum
// queue fails with ErrNotConfirmed. The classic queue lives on one node:
// while that node is away its messages wait (its declaration says "down or
// inaccessible"), within their bound.
func TestQueuesThroughNodeLosses(t *testing.T) {
	c := needCluster(t)
	s := &scenario{t: t, c: c, runs: []*run{
		startRun(t, c, "quorum", quorum, 16),
		startRun(t, c, "classic", nil, 8),
	}}
	killed := s.killNodeInUse()
	s.stopAnotherNode(killed)
	s.minority()
	for _, r := range s.runs {
		r.finish()
	}
}
