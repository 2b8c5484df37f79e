package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// What this program needs beside the libraries, here so that it can be
// copied on its own.

// envOr is the environment variable key, or fallback when it is unset.
func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

// restartLoop restarts the broker's application every interval until ctx
// ends, with $RABBITMQCTL (default rabbitmqctl), printing each restart with
// stamp. It waits the full interval after the broker is back, however long
// a restart takes: restarts never run back to back.
func restartLoop(ctx context.Context, every time.Duration, stamp func() string) {
	ctl := strings.Fields(envOr("RABBITMQCTL", "rabbitmqctl"))
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
