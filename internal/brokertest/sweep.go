package brokertest

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
)

// Prefix starts the name of every queue and exchange the tests create
// (Name adds it), so that Sweep can find what a crashed run left behind.
const Prefix = "wrtest-"

// Sweep deletes every queue and exchange whose name starts with one of
// prefixes. A test binary calls it when it starts (a run killed by a
// timeout runs no cleanup) and when it ends: durable queues left behind pile
// up, and a broker recovering a thousand of them at start-up runs out of
// file handles and never finishes starting.
func Sweep(prefixes ...string) error {
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
			if name != "" && strings.HasPrefix(name, p) {
				names = append(names, name)
				break
			}
		}
	}
	return names, nil
}

// Main runs a test binary's tests between two sweeps of prefixes (Prefix is
// always swept), then checks for leaked goroutines with goleak, and exits.
func Main(m *testing.M, prefixes []string, leakOptions ...goleak.Option) {
	prefixes = append(prefixes, Prefix)
	sweep := func(when string) {
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
