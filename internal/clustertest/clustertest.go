// Package clustertest gives tests a RabbitMQ cluster of their own: three
// nodes on this machine, beside the default node, driven by
// scripts/cluster.sh. A TestMain starts it once and stops it at the end;
// tests kill, stop and start its nodes and ask which node leads a quorum
// queue or holds a connection.
//
// The broker line is RABBITMQ_LINE's (see Line): on 3.10, the default, the
// nodes are the machine's RabbitMQ, q1..q3@localhost with AMQP on
// 127.0.0.1:5691..5693; on 4.0 they run RabbitMQ 4 in the chroot at
// $RMQ4_DIR (default /srv/rmq4-trixie, installed by scripts/rabbitmq4.sh),
// r1..r3@localhost on 5686..5688, their directories inside the chroot.
// Both lines can run at once: names, ports, lock files and directories
// differ.
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
// Starting took 18 to 29 s on the 2-core development machine with 3.10,
// depending on its load (a node boots in 6 to 10 s there; the first boots
// alone, the others boot together and join it), 50 s with 4.0 under a
// heavier load; restarting a node 7 to 10 s (4.0: 10 to 15 s), stopping the
// cluster about 4 s (4.0: 12 s). A rabbitmqctl call costs 3 to 6 s with
// 4.0's CLI. Every command is bounded by a timeout.
package clustertest

import (
	"bytes"
	"cmp"
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

// Options are the settings of a cluster; zero fields take the line's
// defaults. A second harness (a TLS node, say) picks another NamePrefix and
// PortBase so that both can run at once.
type Options struct {
	Size       int    // nodes, default 3
	NamePrefix string // node n is <NamePrefix>n@localhost, default "q" (3.10) or "r" (4.0)
	PortBase   int    // node n's AMQP port is PortBase+n, default 5690 (3.10) or 5685 (4.0)
	DistBase   int    // node n's Erlang distribution port is DistBase+n, default 20000+PortBase
	// Chroot is the directory RabbitMQ runs in (chroot(8)), "" for the
	// machine's; default Chroot().
	Chroot string
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

// Timeouts of the script's commands. They only bound a hung broker or
// tool: generous, so that a loaded machine (a rabbitmqctl call took over a
// minute at load average 38 on two cores, a 4.0 cluster 100 s to start) is
// no failure. nodeBoot is the script's own bound on one node's boot
// (CLUSTER_TIMEOUT, unless set).
const (
	startTimeout = 12 * time.Minute
	nodeTimeout  = 6 * time.Minute
	ctlTimeout   = 3 * time.Minute
	nodeBoot     = 5 * time.Minute
)

// Line is the broker line the tests run on: RABBITMQ_LINE, "3.10" when
// unset. Anything but 3.10 and 4.0 is refused by Available.
func Line() string {
	if l := os.Getenv("RABBITMQ_LINE"); l != "" {
		return l
	}
	return "3.10"
}

// Chroot is the directory the line's RabbitMQ runs in: $CLUSTER_CHROOT if
// set (even empty: the machine's), else on 4.0 $RMQ4_DIR or
// /srv/rmq4-trixie, else "" (the machine's RabbitMQ).
func Chroot() string {
	if c, ok := os.LookupEnv("CLUSTER_CHROOT"); ok {
		return c
	}
	if Line() == "4.0" {
		if d := os.Getenv("RMQ4_DIR"); d != "" {
			return d
		}
		return "/srv/rmq4-trixie"
	}
	return ""
}

// Available reports why a cluster cannot be started here (an unknown line,
// no rabbitmq-server, no scripts/cluster.sh, neither root nor the rabbitmq
// user; on 4.0 no chroot, or not root), or nil.
func Available() error {
	if _, err := script(); err != nil {
		return err
	}
	if l := Line(); l != "3.10" && l != "4.0" {
		return fmt.Errorf("RABBITMQ_LINE=%q: 3.10 or 4.0", l)
	}
	if root := Chroot(); root != "" {
		if _, err := os.Stat(filepath.Join(root, "usr/lib/rabbitmq/bin/rabbitmq-server")); err != nil {
			return fmt.Errorf("RabbitMQ %s is not installed in %s (scripts/rabbitmq4.sh install)", Line(), root)
		}
		if os.Geteuid() != 0 {
			return fmt.Errorf("nodes in the chroot %s need root", root)
		}
		return nil
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
// hold one; "" makes a fresh directory with MkdirTemp. The rabbitmq user
// must be able to reach dir (t.TempDir() is private to root: do not use it),
// and with a chroot dir must be inside it.
func Start(dir string) (*Cluster, error) { return StartWith(dir, Options{}) }

// MkdirTemp makes a fresh directory (mode 0755) that the nodes of the
// chroot root ("" for the machine's RabbitMQ) can reach: under
// os.TempDir(), or the chroot's /tmp. Files the nodes read (certificates)
// go in it; NodePath says how the nodes name them.
func MkdirTemp(root, pattern string) (string, error) {
	base := os.TempDir()
	if root != "" {
		base = filepath.Join(root, "tmp")
	}
	dir, err := os.MkdirTemp(base, pattern)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// NodePath is path (a file or directory inside the chroot root, "" for the
// machine's RabbitMQ) as the nodes see it, e.g. in their config files.
func NodePath(root, path string) string {
	if root == "" {
		return path
	}
	rel, err := filepath.Rel(root, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return path // not inside: the script refuses such a directory
	}
	return filepath.Join("/", rel)
}

// StartWith starts a cluster with opts in dir (see Start).
func StartWith(dir string, opts Options) (*Cluster, error) {
	sc, err := script()
	if err != nil {
		return nil, err
	}
	if opts.Size == 0 {
		opts.Size = 3
	}
	if opts.Chroot == "" {
		opts.Chroot = Chroot()
	}
	four := opts.Chroot != ""
	if opts.NamePrefix == "" {
		opts.NamePrefix = "q"
		if four {
			opts.NamePrefix = "r"
		}
	}
	if opts.PortBase == 0 {
		opts.PortBase = 5690
		if four {
			opts.PortBase = 5685
		}
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
		// the rabbitmq user's nodes live in it
		parent, err = MkdirTemp(opts.Chroot, "rabbitmq-cluster-")
		if err != nil {
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
		"CLUSTER_CHROOT="+c.opts.Chroot,
		"CLUSTER_TIMEOUT="+cmp.Or(os.Getenv("CLUSTER_TIMEOUT"), strconv.Itoa(int(nodeBoot.Seconds()))),
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

// Chroot is the directory the nodes run in, "" for the machine's RabbitMQ.
func (c *Cluster) Chroot() string { return c.opts.Chroot }

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
