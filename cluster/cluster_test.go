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

// publishBound is each load Publish call's PublishTimeout, within which no
// Publish may fail, whatever node is lost. A classic queue's publishes wait
// while its node is away, which here lasts as long as the node takes to
// stop and boot again (the script bounds each at 3 minutes; on this loaded
// machine RabbitMQ 4.0's took up to 90 s): so the bound is longer than any
// outage the test drives, and the verdict does not depend on the machine's
// speed. A stall still fails: WaitProgress bounds each wait for progress
// once the cluster is whole again.
const publishBound = 10 * time.Minute

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
// happened after a fault, and the time of the first confirm after the
// latest fault (arm).
type eventLog struct {
	mu           sync.Mutex
	events       []timedEvent
	armed        bool
	firstConfirm time.Time
}

// arm forgets the first confirm: the next one is the first after a fault.
func (l *eventLog) arm() {
	l.mu.Lock()
	l.armed, l.firstConfirm = true, time.Time{}
	l.mu.Unlock()
}

// firstConfirmAfter is the time of the first confirm since arm, if any.
func (l *eventLog) firstConfirmAfter() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstConfirm, !l.firstConfirm.IsZero()
}

type timedEvent struct {
	at time.Time
	resilient.Event
}

func (l *eventLog) add(e resilient.Event) {
	if e.Kind == resilient.MessagesConfirmed {
		l.mu.Lock()
		if l.armed && l.firstConfirm.IsZero() {
			l.firstConfirm = time.Now()
		}
		l.mu.Unlock()
	}
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
	nodes := r.nodesOf(r.pubName, r.subName)
	t.Logf("%s: publisher on node %d, subscriber on node %d, queue %s", kind, nodes[0], nodes[1], r.describeQueue())
	return r
}

// nodesOf is the node holding the connection named by each of names,
// waiting for each to show (a reconnect takes a moment). One rabbitmqctl
// call asks for all: each costs seconds here (over a minute at load
// average 38 on two cores, hence the bound).
func (r *run) nodesOf(names ...string) []int {
	r.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		byName, err := r.c.NodesOfConnections(names...)
		if err == nil && len(byName) == len(names) {
			nodes := make([]int, 0, len(names))
			for _, name := range names {
				if len(byName[name]) == 1 {
					nodes = append(nodes, byName[name][0])
				}
			}
			if len(nodes) == len(names) {
				return nodes
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("connections %v: nodes %v, %v", names, byName, err)
		}
		time.Sleep(100 * time.Millisecond) // polling the broker's list: there is no event
	}
}

// nodeOf is nodesOf for one name.
func (r *run) nodeOf(name string) int { return r.nodesOf(name)[0] }

func (r *run) describeQueue() string {
	q, err := r.c.QueueInfo(r.queue)
	if err != nil {
		return err.Error()
	}
	return describe(q)
}

func describe(q clustertest.Queue) string {
	return fmt.Sprintf("%s (%s, leader node %d, %d/%d members online, %d ready, %d unacked, %d consumers)",
		q.State, q.Type, q.LeaderNode, len(q.Online), len(q.Members), q.Ready, q.Unacked, q.Consumers)
}

// recovery waits for the load's progress and logs how long after a fault at
// since (the run's events armed just before it) the first message was
// confirmed and the first message reached the handler.
func (r *run) recovery(what string, since time.Time) {
	r.t.Helper()
	r.load.WaitProgress(1)
	confirmed := time.Since(since)
	if at, ok := r.events.firstConfirmAfter(); ok {
		confirmed = at.Sub(since)
	}
	handled := r.arrived.FirstAfter(r.t, since).Sub(since)
	r.t.Logf("%s, %s queue: first confirm after %s, first message handled after %s; publisher since: %s", what, r.kind, confirmed.Round(time.Millisecond), handled.Round(time.Millisecond), r.events.since(since))
}

// scenario is the runs that go through the same node faults together.
type scenario struct {
	t    *testing.T
	c    *clustertest.Cluster
	runs []*run // the first one's clients decide which nodes to hit
}

// arm marks the moment of a fault for every run's first confirm.
func (s *scenario) arm() time.Time {
	for _, r := range s.runs {
		r.events.arm()
	}
	return time.Now()
}

// recover logs each run's recovery from a fault at since, while the node
// restarts (wait): the first run's queue (quorum: a majority is up) must
// flow before the node is back; the others' (a classic queue lives on one
// node, maybe n) are required to flow once it is back, so that a slow boot
// is no stall.
func (s *scenario) recover(what string, since time.Time, wait func()) {
	s.t.Helper()
	s.runs[0].recovery(what, since)
	wait()
	for _, r := range s.runs[1:] {
		r.recovery(what, since)
	}
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
	nodes := first.nodesOf(first.pubName, first.subName)
	n, subNode := nodes[0], nodes[1]
	killed := s.arm()
	if err := s.c.Kill(n); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("killed node %d (the %s publisher's; its subscriber's is %d)", n, first.kind, subNode)
	wait := s.restart(n)
	first.pubSt.Await("reconnecting")
	s.recover("SIGKILL of the node in use", killed, wait)
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
	s.arm() // the first confirm once the node is gone (its queues confirm while it stops)
	s.t.Logf("stopped node %d gracefully in %s", n, time.Since(stopped).Round(time.Millisecond))
	wait := s.restart(n)
	s.recover("graceful stop", stopped, wait)
	s.settled(n, stopped)
}

// settled logs each queue once node n is back, and lets the loads go on.
func (s *scenario) settled(n int, since time.Time) {
	s.t.Helper()
	back := time.Since(since)
	names := make([]string, len(s.runs))
	for i, r := range s.runs {
		names[i] = r.queue
	}
	qs, err := s.c.QueueInfos(names...) // one rabbitmqctl call for all
	for _, r := range s.runs {
		what := describe(qs[r.queue])
		if err != nil {
			what = err.Error()
		}
		s.t.Logf("node %d back after %s; %s queue %s", n, back.Round(time.Millisecond), r.kind, what)
	}
	for _, r := range s.runs {
		r.load.WaitProgress(300)
	}
}

// minority stops two of the three nodes. A quorum queue (the first run's)
// cannot confirm then: a publish with a short bound fails with
// ErrNotConfirmed naming its messages, while the loads' publishes (bound:
// publishBound) wait. Once a node returns, they flow.
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
	lostAt := s.arm()
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
	majority := s.arm()
	s.t.Logf("node %d back %s after the majority was lost", down[0], majority.Sub(lostAt).Round(time.Millisecond))
	r.recovery("majority back", majority) // before the third node is back
	wait := s.restart(down[1])
	wait()
	for _, r := range s.runs[1:] {
		r.recovery("majority back", majority)
	}
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
// within its bound (publishBound). Without a majority a short-bound Publish
// to the quorum queue fails with ErrNotConfirmed. The classic queue lives on
// one node: while that node is away its messages wait within their bound
// (its declaration says "down or inaccessible" on 3.10, "process is stopped
// by supervisor" on 4.0 while the node shuts down, and 4.0 nacks publishes
// to it).
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
