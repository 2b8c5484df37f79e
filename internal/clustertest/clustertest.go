// Package clustertest gives tests a RabbitMQ cluster of their own: three
// nodes on this machine (q1..q3@localhost, AMQP on 127.0.0.1:5691..5693),
// beside the default node, driven by scripts/cluster.sh. A TestMain starts
// it once and stops it at the end; tests kill, stop and start its nodes and
// ask which node leads a quorum queue or holds a connection.
//
//	func TestMain(m *testing.M) {
//		flag.Parse()
//		if testing.Short() || clustertest.Available() != nil {
//			os.Exit(m.Run()) // the cluster tests skip themselves
//		}
//		c, err := clustertest.Start("")
//		...
//		code := m.Run()
//		c.Stop()
//		os.Exit(code)
//	}
//
// Starting took 18 to 29 s on the 2-core development machine, depending on
// its load (a node boots in 6 to 10 s there; the first boots alone, the
// others boot together and join it); restarting a node 7 to 10 s, stopping
// the cluster about 4 s. Every command is bounded by a timeout.
package clustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options are the settings of a cluster; zero fields take the script's
// defaults. A second harness (a TLS node, say) picks another NamePrefix and
// PortBase so that both can run at once.
type Options struct {
	Size       int    // nodes, default 3
	NamePrefix string // node n is <NamePrefix>n@localhost, default "q"
	PortBase   int    // node n's AMQP port is PortBase+n, default 5690
	DistBase   int    // node n's Erlang distribution port is DistBase+n, default 20000+PortBase
	// ExtraConf is appended to every node's rabbitmq.conf.
	ExtraConf string
	// LockWait bounds the wait for another process's cluster of the same
	// ports to stop (a lock file per PortBase). Default 10 minutes.
	LockWait time.Duration
}

// Cluster is a running cluster. Its methods are safe for concurrent use.
type Cluster struct {
	dir    string
	script string
	opts   Options
	uris   []string
	lock   *os.File
	parent string // the directory Start made for dir, removed by Stop

	mu   sync.Mutex
	down map[int]bool // nodes stopped or killed through this Cluster
}

// Timeouts of the script's commands.
const (
	startTimeout = 4 * time.Minute
	nodeTimeout  = 3 * time.Minute
	ctlTimeout   = time.Minute
)

// Available reports why a cluster cannot be started here (no
// rabbitmq-server, no scripts/cluster.sh, neither root nor the rabbitmq
// user), or nil.
func Available() error {
	if _, err := script(); err != nil {
		return err
	}
	if _, err := os.Stat("/usr/sbin/rabbitmq-server"); err != nil {
		if _, err := exec.LookPath("rabbitmq-server"); err != nil {
			return errors.New("rabbitmq-server is not installed")
		}
	}
	if _, err := exec.LookPath("epmd"); err != nil {
		return errors.New("epmd is not on PATH")
	}
	return nil
}

// script finds scripts/cluster.sh: $CLUSTER_SCRIPT, else upwards from the
// working directory (a test runs in its package's directory), else beside
// this source file.
func script() (string, error) {
	if s := os.Getenv("CLUSTER_SCRIPT"); s != "" {
		return s, nil
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, d := range starts {
		for ; ; d = filepath.Dir(d) {
			s := filepath.Join(d, "scripts", "cluster.sh")
			if _, err := os.Stat(s); err == nil {
				return s, nil
			}
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil || filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("scripts/cluster.sh not found (set CLUSTER_SCRIPT)")
}

// Start starts a cluster with the default Options in dir, which must not
// hold one; "" makes a fresh directory under os.TempDir(). The rabbitmq user
// must be able to reach dir (t.TempDir() is private to root: do not use it).
func Start(dir string) (*Cluster, error) { return StartWith(dir, Options{}) }

// StartWith starts a cluster with opts in dir (see Start).
func StartWith(dir string, opts Options) (*Cluster, error) {
	sc, err := script()
	if err != nil {
		return nil, err
	}
	if opts.Size == 0 {
		opts.Size = 3
	}
	if opts.NamePrefix == "" {
		opts.NamePrefix = "q"
	}
	if opts.PortBase == 0 {
		opts.PortBase = 5690
	}
	if opts.DistBase == 0 {
		opts.DistBase = 20000 + opts.PortBase
	}
	if opts.LockWait == 0 {
		opts.LockWait = 10 * time.Minute
	}
	lock, err := lockPorts(opts.PortBase, opts.LockWait)
	if err != nil {
		return nil, err
	}
	var parent string
	if dir == "" {
		parent, err = os.MkdirTemp("", "rabbitmq-cluster-")
		if err != nil {
			lock.Close()
			return nil, err
		}
		if err := os.Chmod(parent, 0o755); err != nil { // the rabbitmq user's nodes live in it
			lock.Close()
			return nil, err
		}
		dir = filepath.Join(parent, "nodes") // the script removes it at stop
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	c := &Cluster{dir: dir, script: sc, opts: opts, lock: lock, parent: parent, down: map[int]bool{}}
	out, err := c.run(startTimeout, "start", dir)
	if err != nil {
		lock.Close()
		if parent != "" {
			_ = os.RemoveAll(parent)
		}
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "amqp://") {
			c.uris = append(c.uris, line)
		}
	}
	if len(c.uris) != opts.Size {
		_ = c.Stop()
		return nil, fmt.Errorf("cluster.sh start printed %d URIs, want %d:\n%s", len(c.uris), opts.Size, out)
	}
	return c, nil
}

// lockPorts takes a lock file per port base, so that two test binaries
// (go test runs packages in parallel) take turns with the same ports.
func lockPorts(portBase int, wait time.Duration) (*os.File, error) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("rabbitmq-cluster-%d.lock", portBase))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil // released when f is closed, or the process ends
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s (another cluster on these ports?): %w", path, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// run runs the script with args, bounded by timeout, and returns its
// standard output; an error carries its standard error too.
func (c *Cluster) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.script, args...)
	cmd.Env = append(os.Environ(),
		"CLUSTER_SIZE="+strconv.Itoa(c.opts.Size),
		"CLUSTER_NAME_PREFIX="+c.opts.NamePrefix,
		"CLUSTER_PORT_BASE="+strconv.Itoa(c.opts.PortBase),
		"CLUSTER_DIST_BASE="+strconv.Itoa(c.opts.DistBase),
		"CLUSTER_CONF="+c.opts.ExtraConf,
		"CLUSTER_OWNER_PID="+strconv.Itoa(os.Getpid()),
	)
	// The script's children (rabbitmqctl's VM) must die with it on a timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("cluster.sh %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Dir is the cluster's directory: node n's logs are in Dir()/<prefix>n/log.
func (c *Cluster) Dir() string { return c.dir }

// URIs are the nodes' AMQP URIs (guest/guest), node 1 first.
func (c *Cluster) URIs() []string { return append([]string(nil), c.uris...) }

// URI is node n's AMQP URI (n from 1).
func (c *Cluster) URI(n int) string { return c.uris[n-1] }

// Size is the number of nodes.
func (c *Cluster) Size() int { return c.opts.Size }

// Node is node n's Erlang name, e.g. "q1@localhost".
func (c *Cluster) Node(n int) string { return fmt.Sprintf("%s%d@localhost", c.opts.NamePrefix, n) }

// NodeOf returns the node (from 1) a URI or "host:port" points at, by its
// port; 0 when it is none of the cluster's.
func (c *Cluster) NodeOf(uriOrAddr string) int {
	hostport := uriOrAddr
	if u, err := url.Parse(uriOrAddr); err == nil && u.Host != "" {
		hostport = u.Host
	}
	i := strings.LastIndexByte(hostport, ':')
	if i < 0 {
		return 0
	}
	port, err := strconv.Atoi(hostport[i+1:])
	if err != nil {
		return 0
	}
	return c.nodeOfPort(port)
}

func (c *Cluster) nodeOfPort(port int) int {
	if n := port - c.opts.PortBase; n >= 1 && n <= c.opts.Size {
		return n
	}
	return 0
}

// nodeOfName returns n for "<prefix>n@localhost", else 0.
func (c *Cluster) nodeOfName(name string) int {
	for n := 1; n <= c.opts.Size; n++ {
		if name == c.Node(n) {
			return n
		}
	}
	return 0
}

func (c *Cluster) setDown(n int, down bool) {
	c.mu.Lock()
	c.down[n] = down
	c.mu.Unlock()
}

func (c *Cluster) check(n int) error {
	if n < 1 || n > c.opts.Size {
		return fmt.Errorf("no node %d (1..%d)", n, c.opts.Size)
	}
	return nil
}

// Stop stops every node, removes the cluster's directory and releases the
// ports. It is safe to call more than once.
func (c *Cluster) Stop() error {
	_, err := c.run(nodeTimeout, "stop", c.dir)
	if err == nil && c.parent != "" {
		_ = os.Remove(c.parent)
	}
	c.mu.Lock()
	if c.lock != nil {
		c.lock.Close()
		c.lock = nil
	}
	c.mu.Unlock()
	return err
}
