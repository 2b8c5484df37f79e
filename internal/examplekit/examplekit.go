// Package examplekit is what the example programs share: the default of
// their flags from the environment, a fatal check, and the loop that
// restarts the broker while they run.
package examplekit

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strings"
	"time"
)

// EnvOr is the environment variable key, or fallback when it is unset.
func EnvOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// Check ends the program when err is not nil, saying what failed.
func Check(err error, what string) {
	if err != nil {
		log.Fatalf("%s: %v", what, err)
	}
}

// RestartLoop restarts the broker's application every interval until ctx
// ends, with $RABBITMQCTL (default rabbitmqctl), printing each restart with
// stamp. It waits the full interval after the broker is back, however long
// a restart takes: restarts never run back to back.
func RestartLoop(ctx context.Context, every time.Duration, stamp func() string) {
	ctl := strings.Fields(EnvOr("RABBITMQCTL", "rabbitmqctl"))
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		fmt.Printf("%s  >>> restarting the broker\n", stamp())
		for _, step := range []string{"stop_app", "start_app", "await_startup"} {
			if out, err := exec.Command(ctl[0], append(ctl[1:], step)...).CombinedOutput(); err != nil {
				fmt.Printf("%s  rabbitmqctl %s: %v %s\n", stamp(), step, err, out)
			}
		}
		fmt.Printf("%s  >>> broker is back\n", stamp())
	}
}
