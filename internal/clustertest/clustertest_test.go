package clustertest

import (
	"os"
	"testing"
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

func TestLineAndChroot(t *testing.T) {
	t.Setenv("RMQ4_DIR", "")
	for _, c := range []struct {
		line, chroot string
		setChroot    bool
		wantLine     string
		wantChroot   string
	}{
		{line: "", wantLine: "3.10", wantChroot: ""},
		{line: "3.10", wantLine: "3.10", wantChroot: ""},
		{line: "4.0", wantLine: "4.0", wantChroot: "/srv/rmq4-trixie"},
		{line: "4.0", chroot: "/x", setChroot: true, wantLine: "4.0", wantChroot: "/x"},
		{line: "4.0", chroot: "", setChroot: true, wantLine: "4.0", wantChroot: ""}, // the machine's, explicitly
	} {
		t.Setenv("RABBITMQ_LINE", c.line)
		if c.setChroot {
			t.Setenv("CLUSTER_CHROOT", c.chroot)
		} else {
			t.Setenv("CLUSTER_CHROOT", "x")
			os.Unsetenv("CLUSTER_CHROOT") // restored by Setenv's cleanup
		}
		if got := Line(); got != c.wantLine {
			t.Errorf("RABBITMQ_LINE=%q: Line() = %q, want %q", c.line, got, c.wantLine)
		}
		if got := Chroot(); got != c.wantChroot {
			t.Errorf("RABBITMQ_LINE=%q CLUSTER_CHROOT=%q (set %v): Chroot() = %q, want %q", c.line, c.chroot, c.setChroot, got, c.wantChroot)
		}
	}
	t.Setenv("RABBITMQ_LINE", "3.13")
	if err := Available(); err == nil {
		t.Error("Available() accepts RABBITMQ_LINE=3.13")
	}
}

func TestNodePath(t *testing.T) {
	for _, c := range []struct{ root, path, want string }{
		{"", "/tmp/a/ca.pem", "/tmp/a/ca.pem"},
		{"/srv/rmq4", "/srv/rmq4/tmp/a/ca.pem", "/tmp/a/ca.pem"},
		{"/srv/rmq4", "/srv/rmq4", "/"},
		{"/srv/rmq4", "/srv/rmq40/x", "/srv/rmq40/x"}, // not inside: unchanged
		{"/srv/rmq4", "/tmp/x", "/tmp/x"},
	} {
		if got := NodePath(c.root, c.path); got != c.want {
			t.Errorf("NodePath(%q, %q) = %q, want %q", c.root, c.path, got, c.want)
		}
	}
}
