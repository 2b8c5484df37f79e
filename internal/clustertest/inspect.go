package clustertest

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// What the cluster reports: its running nodes, a queue's leader and
// members, the connections and their nodes.

// Ctl runs rabbitmqctl against node n (-q) and returns its output.
func (c *Cluster) Ctl(n int, args ...string) (string, error) {
	if err := c.check(n); err != nil {
		return "", err
	}
	return c.run(ctlTimeout, append([]string{"ctl", c.dir, strconv.Itoa(n), "-q"}, args...)...)
}

// CtlAny runs rabbitmqctl against the first node not stopped through this
// Cluster that answers, for cluster-wide questions.
func (c *Cluster) CtlAny(args ...string) (string, error) {
	c.mu.Lock()
	var order, last []int
	for n := 1; n <= c.opts.Size; n++ {
		if c.down[n] {
			last = append(last, n) // stopped by us: ask them last
		} else {
			order = append(order, n)
		}
	}
	c.mu.Unlock()
	var errs []error
	for _, n := range append(order, last...) {
		out, err := c.Ctl(n, args...)
		if err == nil {
			return out, nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// ctlJSON runs a list command with the JSON formatter into v.
func (c *Cluster) ctlJSON(v any, args ...string) error {
	out, err := c.CtlAny(append(args, "--formatter", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Running returns the nodes (from 1) that run the RabbitMQ application, as
// the cluster sees them.
func (c *Cluster) Running() ([]int, error) {
	out, err := c.CtlAny("eval", "rabbit_nodes:all_running().")
	if err != nil {
		return nil, err
	}
	var nodes []int
	for n := 1; n <= c.opts.Size; n++ {
		if strings.Contains(out, c.Node(n)+",") || strings.Contains(out, c.Node(n)+"]") {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// WaitRunning waits until exactly want nodes run, or timeout.
func (c *Cluster) WaitRunning(want int, timeout time.Duration) ([]int, error) {
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := c.Running()
		if err == nil && len(nodes) == want {
			return nodes, nil
		}
		if time.Now().After(deadline) {
			return nodes, fmt.Errorf("want %d nodes running, have %v (err %v)", want, nodes, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Queue is what the broker says of a queue (list_queues).
type Queue struct {
	Name       string   `json:"name"`
	Type       string   `json:"type"`
	Messages   int      `json:"messages"`
	Ready      int      `json:"messages_ready"`
	Unacked    int      `json:"messages_unacknowledged"`
	Consumers  int      `json:"consumers"`
	Leader     string   `json:"leader"`  // quorum queues: the leader's node name
	Members    []string `json:"members"` // quorum queues
	Online     []string `json:"online"`  // quorum queues: members reachable
	State      string   `json:"state"`
	LeaderNode int      `json:"-"` // Leader as a node number, 0 if none
}

// QueueInfo returns the broker's view of queue in the default vhost.
func (c *Cluster) QueueInfo(queue string) (Queue, error) {
	qs, err := c.QueueInfos(queue)
	if err != nil {
		return Queue{}, err
	}
	return qs[queue], nil
}

// QueueInfos returns the broker's view of each of queues in the default
// vhost, from one rabbitmqctl call (each costs seconds); an error if one is
// missing.
func (c *Cluster) QueueInfos(queues ...string) (map[string]Queue, error) {
	var qs []map[string]any
	if err := c.ctlJSON(&qs, "list_queues", "name", "type", "messages", "messages_ready",
		"messages_unacknowledged", "consumers", "leader", "members", "online", "state"); err != nil {
		return nil, err
	}
	found := make(map[string]Queue, len(queues))
	for _, raw := range qs {
		queue, _ := raw["name"].(string)
		if !slices.Contains(queues, queue) {
			continue
		}
		// Fields are "" or a list depending on the queue type: decode
		// leniently.
		var q Queue
		q.Name = queue
		q.Type, _ = raw["type"].(string)
		q.State, _ = raw["state"].(string)
		q.Leader, _ = raw["leader"].(string)
		q.Messages = toInt(raw["messages"])
		q.Ready = toInt(raw["messages_ready"])
		q.Unacked = toInt(raw["messages_unacknowledged"])
		q.Consumers = toInt(raw["consumers"])
		q.Members = toStrings(raw["members"])
		q.Online = toStrings(raw["online"])
		q.LeaderNode = c.nodeOfName(q.Leader)
		found[queue] = q
	}
	for _, queue := range queues {
		if _, ok := found[queue]; !ok {
			return nil, fmt.Errorf("queue %q not found", queue)
		}
	}
	return found, nil
}

// QueueLeader returns the node (from 1) that leads quorum queue queue.
func (c *Cluster) QueueLeader(queue string) (int, error) {
	q, err := c.QueueInfo(queue)
	if err != nil {
		return 0, err
	}
	if q.LeaderNode == 0 {
		return 0, fmt.Errorf("queue %q has no leader on the cluster (leader %q)", queue, q.Leader)
	}
	return q.LeaderNode, nil
}

// Connection is a client connection as the broker lists it.
type Connection struct {
	Name     string // the broker's name, "127.0.0.1:PEERPORT -> 127.0.0.1:PORT"
	UserName string // the client's connection_name property, if any
	PeerPort int    // the client's local port
	Node     int    // the node it is on (from 1)
	Channels int
}

// Connections lists the client connections of every running node.
func (c *Cluster) Connections() ([]Connection, error) {
	var rows []map[string]any
	if err := c.ctlJSON(&rows, "list_connections", "name", "port", "peer_port", "channels", "client_properties"); err != nil {
		return nil, err
	}
	conns := make([]Connection, 0, len(rows))
	for _, r := range rows {
		conn := Connection{
			PeerPort: toInt(r["peer_port"]),
			Node:     c.nodeOfPort(toInt(r["port"])),
			Channels: toInt(r["channels"]),
		}
		conn.Name, _ = r["name"].(string)
		conn.UserName = connectionName(r["client_properties"])
		conns = append(conns, conn)
	}
	return conns, nil
}

// NodesOfConnection returns the nodes that hold connections named name (the
// client's connection_name, e.g. resilient.Config.ConnectionName).
func (c *Cluster) NodesOfConnection(name string) ([]int, error) {
	nodes, err := c.NodesOfConnections(name)
	return nodes[name], err
}

// NodesOfConnections returns, for each of names, the nodes that hold
// connections of that name, from one rabbitmqctl call.
func (c *Cluster) NodesOfConnections(names ...string) (map[string][]int, error) {
	conns, err := c.Connections()
	if err != nil {
		return nil, err
	}
	nodes := make(map[string][]int, len(names))
	for _, conn := range conns {
		if slices.Contains(names, conn.UserName) {
			nodes[conn.UserName] = append(nodes[conn.UserName], conn.Node)
		}
	}
	return nodes, nil
}

// connectionName digs connection_name out of client_properties, which the
// JSON formatter renders as a list of [key, type, value] triples (or, on
// some versions, an object).
func connectionName(props any) string {
	switch p := props.(type) {
	case map[string]any:
		s, _ := p["connection_name"].(string)
		return s
	case []any:
		for _, e := range p {
			if t, ok := e.([]any); ok && len(t) >= 3 && t[0] == "connection_name" {
				s, _ := t[2].(string)
				return s
			}
		}
	}
	return ""
}

func toInt(v any) int {
	switch x := v.(type) {
	case float64:
		return int(x)
	case string:
		n, _ := strconv.Atoi(x)
		return n
	}
	return 0
}

func toStrings(v any) []string {
	l, ok := v.([]any)
	if !ok {
		return nil
	}
	var out []string
	for _, e := range l {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
