#!/usr/bin/env bash
# Restarts the test broker's application (connections drop, durable queues
# and persistent messages stay). Used by watermill's TestReconnect.
# RABBITMQCTL overrides the command, e.g. "docker compose exec -T rabbitmq rabbitmqctl".
set -euo pipefail
# watermill's TestReconnect may start a second restart before the first ends:
# take turns, or rabbitmqctl fails on a node that is mid-start.
# One lock per broker (two broker lines may run at once, each restarting its own).
exec 9>"${TMPDIR:-/tmp}/resilient-restart-broker-$(printf '%s' "${RABBITMQCTL:-rabbitmqctl}" | cksum | cut -d' ' -f1).lock"
flock 9
read -r -a ctl <<<"${RABBITMQCTL:-rabbitmqctl}"
# Bounded: a broker that cannot start again fails the test, never hangs it.
timeout 120 "${ctl[@]}" stop_app >/dev/null
timeout 120 "${ctl[@]}" start_app >/dev/null
timeout 120 "${ctl[@]}" await_startup >/dev/null
