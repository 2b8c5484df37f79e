package brokertest

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

// Prefix starts the name of every queue and exchange the tests create
// (Name adds it, and the test binary's pid after it), so that Sweep can find
// what a crashed run left behind.
const Prefix = "wrtest-"

// RunPrefix starts the names this test binary creates: Prefix and its pid,
// so that a sweep tells the queues of a run still going (another package's
// binary, at the same time) from those of a run that is over.
func RunPrefix() string { return fmt.Sprintf("%s%d-", Prefix, os.Getpid()) }

// Sweep deletes the queues and exchanges the tests named (Prefix) whose run
// is over: this binary's, those of binaries no longer running, those of
// runs that put no pid in their names; and every one starting with one of
// extra. A test binary calls it when it starts (a run killed by a timeout
// runs no cleanup) and when it ends: durable queues left behind pile up,
// and a broker recovering a thousand of them at start-up runs out of file
// handles and never finishes starting.
func Sweep(extra ...string) error {
	prefixes := append([]string{Prefix}, extra...)
	queues, err := list("list_queues", prefixes)
	if err != nil {
		return err
	}
	exchanges, err := list("list_exchanges", prefixes)
	if err != nil {
		return err
	}
	if len(queues)+len(exchanges) == 0 {
		return nil
	}
	conn, err := amqp091.Dial(URI())
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	var errs []error
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			errs = append(errs, fmt.Errorf("queue %s: %w", q, err))
			if ch, err = conn.Channel(); err != nil {
				return errors.Join(errs...)
			}
		}
	}
	for _, x := range exchanges {
		if err := ch.ExchangeDelete(x, false, false); err != nil {
			errs = append(errs, fmt.Errorf("exchange %s: %w", x, err))
			if ch, err = conn.Channel(); err != nil {
				return errors.Join(errs...)
			}
		}
	}
	return errors.Join(errs...)
}

func list(what string, prefixes []string) ([]string, error) {
	out, err := CtlErr(what, "-q", "--no-table-headers", "name")
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl %s: %v: %s", what, err, out)
	}
	var names []string
	for _, name := range strings.Split(out, "\n") {
		name = strings.TrimSpace(name)
		for _, p := range prefixes {
			if name != "" && strings.HasPrefix(name, p) && !ofAnotherLiveRun(name) {
				names = append(names, name)
				break
			}
		}
	}
	return names, nil
}

// ofAnotherLiveRun reports whether name was made by another test binary
// that still runs (its pid, after Prefix, names a live process).
func ofAnotherLiveRun(name string) bool {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return false
	}
	digits, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(digits)
	if !ok || err != nil || pid == os.Getpid() {
		return false
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Main runs a test binary's tests between two sweeps (of what Sweep
// deletes, and of the names starting with one of prefixes), then checks for
// leaked goroutines with goleak, and exits. Under -short (the unit tier,
// which needs no broker) it sweeps nothing.
func Main(m *testing.M, prefixes []string, leakOptions ...goleak.Option) {
	flag.Parse() // for testing.Short
	sweep := func(when string) {
		if testing.Short() {
			return
		}
		if err := Sweep(prefixes...); err != nil {
			fmt.Fprintf(os.Stderr, "brokertest: sweep %s the tests: %v\n", when, err)
		}
	}
	sweep("before")
	code := m.Run()
	sweep("after")
	if code == 0 {
		if err := goleak.Find(leakOptions...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Need marks a test that talks to RabbitMQ: under -short, the unit tier
// that runs where no broker does, it is skipped, saying so.
func Need(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs RabbitMQ: not run under -short")
	}
}
