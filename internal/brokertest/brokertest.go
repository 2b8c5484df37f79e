// Package brokertest holds what the tests of this module share: the broker's
// URI, control of the real broker (rabbitmqctl), unique names, and the check
// that every published message arrived, by UUID.
package brokertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// URI is the broker the tests use: $AMQP_URI, by default the local one.
func URI() string {
	if uri := os.Getenv("AMQP_URI"); uri != "" {
		return uri
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// Name returns a name unique to this run, for queues and exchanges; it
// starts with RunPrefix.
func Name(prefix string) string {
	return fmt.Sprintf("%s%s-%s", RunPrefix(), prefix, uuid.NewString()[:8])
}

// ctlCommand is how to run rabbitmqctl: $RABBITMQCTL (e.g.
// "docker compose exec -T rabbitmq rabbitmqctl") or the local one.
func ctlCommand() []string {
	if c := os.Getenv("RABBITMQCTL"); c != "" {
		return strings.Fields(c)
	}
	return []string{"rabbitmqctl"}
}

// Ctl runs rabbitmqctl with args and fails the test if it fails.
func Ctl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := CtlErr(args...)
	if err != nil {
		t.Fatalf("rabbitmqctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// CtlErr runs rabbitmqctl with args.
func CtlErr(args ...string) (string, error) {
	cmd := ctlCommand()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, cmd[0], append(cmd[1:], args...)...).CombinedOutput()
	return string(out), err
}

// CloseAllConnections makes the broker close every client connection, as an
// operator would.
func CloseAllConnections(t testing.TB) {
	t.Helper()
	Ctl(t, "close_all_connections", "test: forced close")
}

// StopApp stops the broker application (connections are refused) and
// registers a cleanup that starts it again should the test fail before
// StartApp.
func StopApp(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		if out, err := CtlErr("start_app"); err != nil {
			t.Logf("cleanup start_app: %v %s", err, out)
		}
		_, _ = CtlErr("await_startup")
	})
	Ctl(t, "stop_app")
}

// StartApp starts the broker application and waits until it accepts work.
func StartApp(t testing.TB) {
	t.Helper()
	Ctl(t, "start_app")
	Ctl(t, "await_startup")
}

// Dial connects to the broker for a test's own setup and checks.
func Dial(t testing.TB) *amqp091.Connection {
	t.Helper()
	var conn *amqp091.Connection
	var err error
	// The broker may still be settling after a restart in a previous test.
	for range 50 {
		if conn, err = amqp091.Dial(URI()); err == nil {
			return conn
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("dial %s: %v", URI(), err)
	return nil
}

// DeleteQueues deletes queues when the test ends.
func DeleteQueues(t testing.TB, queues ...string) {
	t.Cleanup(func() { DeleteNow(t, queues...) })
}

// DeleteNow deletes queues at once, logging (not failing) when it cannot.
func DeleteNow(t testing.TB, queues ...string) {
	conn, err := amqp091.Dial(URI())
	if err != nil {
		t.Logf("deleting queues: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	for _, q := range queues {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
}

// Tally is what a queue held, by message ID (the watermill UUID).
type Tally struct {
	Want       int
	Got        int // deliveries, duplicates included
	Lost       []string
	Duplicates int
	Unexpected int
}

func (r Tally) String() string {
	return fmt.Sprintf("published %d, consumed %d, lost %d, duplicated %d, unexpected %d",
		r.Want, r.Got, len(r.Lost), r.Duplicates, r.Unexpected)
}

// Drain consumes everything in queue (every confirmed message is in it by
// now: it was confirmed) and tallies it against the UUIDs that want lists.
func Drain(t testing.TB, queue string, want []string) Tally {
	t.Helper()
	conn := Dial(t)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("queue %s: %v", queue, err)
	}
	if err := ch.Qos(1000, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]int, len(want))
	// Bounded by progress: a slow broker is not a failure, a stall is.
	stall := time.NewTimer(StallBound)
	defer stall.Stop()
	for i := 0; i < q.Messages; i++ {
		select {
		case d := <-deliveries:
			seen[d.MessageId]++
			stall.Reset(StallBound)
		case <-stall.C:
			t.Fatalf("queue %s: consumed %d of %d ready messages, then none for %s", queue, i, q.Messages, StallBound)
		}
	}
	return tally(want, seen, q.Messages)
}

func tally(want []string, seen map[string]int, got int) Tally {
	r := Tally{Want: len(want), Got: got}
	wanted := make(map[string]bool, len(want))
	for _, id := range want {
		wanted[id] = true
		switch n := seen[id]; {
		case n == 0:
			r.Lost = append(r.Lost, id)
		case n > 1:
			r.Duplicates += n - 1
		}
	}
	for id, n := range seen {
		if !wanted[id] {
			r.Unexpected += n
		}
	}
	slices.Sort(r.Lost)
	return r
}

// RequireNoneLost fails the test when a wanted message is missing, and
// reports the tally (duplicates are allowed: delivery is at-least-once).
func RequireNoneLost(t testing.TB, r Tally) {
	t.Helper()
	t.Logf("tally: %s", r)
	if len(r.Lost) > 0 {
		t.Fatalf("%d message(s) lost, e.g. %v", len(r.Lost), r.Lost[:min(5, len(r.Lost))])
	}
}

// IDs collects UUIDs from many goroutines.
type IDs struct {
	mu  sync.Mutex
	ids []string
}

func (c *IDs) Add(ids ...string) {
	c.mu.Lock()
	c.ids = append(c.ids, ids...)
	c.mu.Unlock()
}

func (c *IDs) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func (c *IDs) All() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}
