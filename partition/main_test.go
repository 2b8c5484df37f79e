// Package partition_test runs the publisher and the subscriber through
// network partitions of a 3-node RabbitMQ cluster whose nodes live in
// network namespaces the tests build and tear down themselves
// (scripts/partition.sh): a link taken down drops packets silently, as a
// partition does, while the node stays up. It needs root and `ip`, and
// skips, saying why, without them and under -short. Test traffic goes only
// to addresses inside those namespaces.
package partition_test

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if why := unavailable(); why == "" {
		// What a run killed before its cleanup left behind goes first.
		if out, err := script("reap"); err != nil {
			fmt.Fprintf(os.Stderr, "partition: reap: %v\n%s", err, out)
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// autoheal runs the autoheal scenarios too (measured for the README, not
// run by CI: under autoheal the side with fewer client connections restarts
// once the links are back, which takes long on RabbitMQ 3.10).
var autoheal = flag.Bool("autoheal", false, "run the autoheal scenarios too")
