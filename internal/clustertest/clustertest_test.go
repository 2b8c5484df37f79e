package clustertest

import (
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
