package clustertest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func TestNodeOfAndParsing(t *testing.T) {
	c := &Cluster{opts: Options{Size: 3, NamePrefix: "q", PortBase: 5690}}
	for in, want := range map[string]int{
		"amqp://guest:guest@127.0.0.1:5691/": 1,
		"amqps://u:p@localhost:5693/vhost":   3,
		"127.0.0.1:5692":                     2,
		"amqp://guest:guest@127.0.0.1:5672/": 0,
		"amqp://guest:guest@127.0.0.1:5694/": 0,
		"not a uri":                          0,
	} {
		if got := c.NodeOf(in); got != want {
			t.Errorf("NodeOf(%q) = %d, want %d", in, got, want)
		}
	}
	if got := c.nodeOfName("q2@localhost"); got != 2 {
		t.Errorf("nodeOfName(q2@localhost) = %d", got)
	}
	// client_properties as rabbitmqctl's JSON formatter renders it (3.10).
	props := []any{[]any{"connection_name", "longstr", "probe"}, []any{"capabilities", "table", []any{}}}
	if got := connectionName(props); got != "probe" {
		t.Errorf("connectionName = %q", got)
	}
}

// TestClusterKillRestart starts the cluster, kills the node that leads a
// quorum queue, checks that the others carry on and elect a new leader,
// starts the node again and checks that it rejoins.
func TestClusterKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a RabbitMQ cluster")
	}
	if err := Available(); err != nil {
		t.Skip(err)
	}
	began := time.Now()
	c, err := Start("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("cluster of %d started in %s: %v", c.Size(), time.Since(began).Round(time.Millisecond), c.URIs())

	if got := c.NodeOf(c.URI(2)); got != 2 {
		t.Errorf("NodeOf(%s) = %d, want 2", c.URI(2), got)
	}
	if got := c.NodeOf("127.0.0.1:5672"); got != 0 {
		t.Errorf("NodeOf(the default node) = %d, want 0", got)
	}
	if nodes, err := c.Running(); err != nil || len(nodes) != 3 {
		t.Fatalf("Running() = %v, %v; want 3 nodes", nodes, err)
	}

	// A client on node 2 declares a quorum queue.
	name := fmt.Sprintf("clustertest-%d", time.Now().UnixNano())
	conn, err := amqp091.DialConfig(c.URI(2), amqp091.Config{
		Properties: amqp091.Table{"connection_name": name},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, amqp091.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	if nodes, err := c.NodesOfConnection(name); err != nil || !slices.Equal(nodes, []int{2}) {
		t.Errorf("NodesOfConnection = %v, %v; want [2]", nodes, err)
	}
	q, err := c.QueueInfo(name)
	if err != nil {
		t.Fatal(err)
	}
	if q.Type != "quorum" || len(q.Members) != 3 || q.LeaderNode == 0 {
		t.Fatalf("QueueInfo = %+v; want a quorum queue on 3 members with a leader", q)
	}
	leader := q.LeaderNode
	t.Logf("queue leader: node %d (%s)", leader, q.Leader)

	// Kill the leader: the two others elect a new one.
	killed := time.Now()
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if nodes, err := c.WaitRunning(2, 30*time.Second); err != nil || slices.Contains(nodes, leader) {
		t.Fatalf("after the kill: running %v, %v", nodes, err)
	}
	var newLeader int
	for deadline := time.Now().Add(30 * time.Second); ; {
		if n, err := c.QueueLeader(name); err == nil && n != leader {
			newLeader = n
			break
		}
		if time.Now().After(deadline) {
			q, err := c.QueueInfo(name)
			t.Fatalf("no new leader 30 s after the kill: %+v, %v", q, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("new leader: node %d, %s after the kill", newLeader, time.Since(killed).Round(time.Millisecond))

	// Start it again: it rejoins by itself, and cluster_status says so.
	restarted := time.Now()
	if err := c.StartNode(leader); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitRunning(3, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d restarted and rejoined in %s", leader, time.Since(restarted).Round(time.Millisecond))
	status, err := c.Ctl(leader, "cluster_status")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(status, "Running Nodes")
	if i < 0 {
		t.Fatalf("cluster_status without Running Nodes:\n%s", status)
	}
	running := status[i:]
	for n := 1; n <= c.Size(); n++ {
		if !strings.Contains(running, c.Node(n)) {
			t.Errorf("cluster_status of node %d does not list %s as running:\n%s", leader, c.Node(n), status)
		}
	}
	q, err = c.QueueInfo(name)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); len(q.Online) != 3 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		q, _ = c.QueueInfo(name)
	}
	if len(q.Online) != 3 {
		t.Errorf("queue members online after the restart: %v, want all 3", q.Online)
	}
}
