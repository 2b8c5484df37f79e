package partition_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/resilientmq/watermill-rabbitmq/internal/clustertest"
)

// scriptPath is scripts/partition.sh, found from this file.
func scriptPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "scripts", "partition.sh")
}

// unavailable says why the partition tests cannot run here, or "".
func unavailable() string {
	switch {
	case testing.Short():
		return "-short: no cluster in network namespaces"
	case os.Geteuid() != 0:
		return "needs root (network namespaces, bridges, veth pairs)"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Sprintf("needs ip: %v", err)
	}
	switch line := clustertest.Line(); line {
	case "3.10":
		for _, tool := range []string{"rabbitmq-server", "rabbitmqctl"} {
			if _, err := exec.LookPath(tool); err != nil {
				return fmt.Sprintf("needs %s: %v", tool, err)
			}
		}
	case "4.0":
		if _, err := os.Stat(filepath.Join(clustertest.Chroot(), "usr/lib/rabbitmq/bin/rabbitmq-server")); err != nil {
			return fmt.Sprintf("no RabbitMQ 4 in %q (scripts/rabbitmq4.sh install): %v", clustertest.Chroot(), err)
		}
	default:
		return fmt.Sprintf("RABBITMQ_LINE %q: 3.10 or 4.0", line)
	}
	return ""
}

// scriptEnv is the script's environment for the line under test. Each line
// has namespaces, links and subnets of its own, so that CI can run both at
// once; 4.0's nodes run in its chroot.
func scriptEnv() []string {
	env := os.Environ()
	if clustertest.Line() == "4.0" {
		env = append(env, "PARTITION_PREFIX=rq4p", "PARTITION_NETS=10.221 10.222", "PARTITION_CHROOT="+clustertest.Chroot())
	}
	return env
}

// script runs scripts/partition.sh with args, bounded.
func script(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{scriptPath()}, args...)...)
	cmd.Env = scriptEnv()
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// netns is a cluster of three nodes in network namespaces, for one test.
type netns struct {
	t    *testing.T
	mode string
	uris []string
}

// startNetns builds a fresh cluster with the given
// cluster_partition_handling, and tears it down when the test ends
// (whatever happens; a run killed first leaves it to the next one's reap:
// the script records this process as its owner).
func startNetns(t *testing.T, mode string) *netns {
	t.Helper()
	if why := unavailable(); why != "" {
		t.Skip(why)
	}
	began := time.Now()
	t.Cleanup(func() {
		if out, err := script("down"); err != nil {
			t.Errorf("partition.sh down: %v\n%s", err, out)
		}
	})
	if out, err := script("up", mode, strconv.Itoa(os.Getpid())); err != nil {
		t.Fatalf("partition.sh up %s: %v\n%s", mode, err, out)
	}
	out, err := script("uris")
	if err != nil {
		t.Fatalf("partition.sh uris: %v", err)
	}
	t.Logf("cluster (%s) up in %s", mode, time.Since(began).Round(time.Second))
	return &netns{t: t, mode: mode, uris: strings.Fields(out)}
}

// do runs a script command on the cluster (isolate, cut, heal, status).
func (n *netns) do(args ...string) string {
	n.t.Helper()
	out, err := script(args...)
	if err != nil {
		n.t.Fatalf("partition.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
