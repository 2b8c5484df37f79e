package clustertest

import (
	"strconv"
	"strings"
)

// Faults of one node: killed, stopped, restarted, its application stopped
// and started.

// Kill SIGKILLs node n's Erlang VM, and returns once it is gone.
func (c *Cluster) Kill(n int) error {
	if err := c.check(n); err != nil {
		return err
	}
	c.setDown(n, true)
	_, err := c.run(ctlTimeout, "kill", c.dir, strconv.Itoa(n))
	return err
}

// StartNode starts node n (after Kill or StopNode) and waits until it
// accepts connections; it rejoins the cluster by itself.
func (c *Cluster) StartNode(n int) error {
	if err := c.check(n); err != nil {
		return err
	}
	_, err := c.run(nodeTimeout, "start-node", c.dir, strconv.Itoa(n))
	if err == nil {
		c.setDown(n, false)
	}
	return err
}

// StopNode stops node n gracefully (rabbitmqctl stop: its whole VM).
func (c *Cluster) StopNode(n int) error {
	if err := c.check(n); err != nil {
		return err
	}
	c.setDown(n, true)
	_, err := c.run(nodeTimeout, "stop-node", c.dir, strconv.Itoa(n))
	return err
}

// StopApp stops the RabbitMQ application of node n (its VM stays up).
func (c *Cluster) StopApp(n int) error {
	if err := c.check(n); err != nil {
		return err
	}
	c.setDown(n, true)
	_, err := c.run(nodeTimeout, "stop-app", c.dir, strconv.Itoa(n))
	return err
}

// StartApp starts node n's application again and waits for it.
func (c *Cluster) StartApp(n int) error {
	if err := c.check(n); err != nil {
		return err
	}
	_, err := c.run(nodeTimeout, "start-app", c.dir, strconv.Itoa(n))
	if err == nil {
		c.setDown(n, false)
	}
	return err
}

// Pid is the OS pid of node n's Erlang VM.
func (c *Cluster) Pid(n int) (int, error) {
	if err := c.check(n); err != nil {
		return 0, err
	}
	out, err := c.run(ctlTimeout, "pid", c.dir, strconv.Itoa(n))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}
