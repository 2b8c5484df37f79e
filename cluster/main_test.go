// Package cluster_test runs the publisher and the subscriber on a RabbitMQ
// cluster of the suite's own (three nodes on this machine, beside the
// default one: internal/clustertest), through the loss of nodes: SIGKILL of
// the node in use, a graceful stop, a restart, and the loss of the majority.
// It starts the cluster once (20 s to 2 min, by the machine's load) and
// stops it at the end. RABBITMQ_LINE picks the broker line: 3.10 (default,
// q1..q3 on 5691..5693) or 4.0 (r1..r3 on 5686..5688, in RabbitMQ 4's
// chroot); see internal/clustertest.
package cluster_test

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/resilientmq/watermill-rabbitmq/internal/clustertest"
)

// cluster is the suite's cluster; nil when it could not start (the tests
// then skip, saying why).
var (
	cluster     *clustertest.Cluster
	unavailable error
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		unavailable = fmt.Errorf("-short: no cluster")
		os.Exit(m.Run())
	}
	if unavailable = clustertest.Available(); unavailable != nil {
		os.Exit(m.Run())
	}
	began := time.Now()
	c, err := clustertest.Start("")
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: cannot start: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("cluster: %d nodes started in %s\n", c.Size(), time.Since(began).Round(time.Millisecond))
	cluster = c
	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: stop: %v\n", err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// needCluster skips a test that needs the cluster when there is none.
func needCluster(t *testing.T) *clustertest.Cluster {
	t.Helper()
	if cluster == nil {
		t.Skipf("no cluster: %v", unavailable)
	}
	return cluster
}
