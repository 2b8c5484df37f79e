#!/usr/bin/env bash
# The long-lived publisher demo, against a real RabbitMQ (found at $AMQP_URI
# or started). Extra arguments go to the demo, e.g. -restart-every 10s -duration 45s.
# Built first, then run (not `go run`, which turns a Ctrl-C into its own exit
# status 1): on Ctrl-C the demo stops, reads the queue back, and exits 0 when
# nothing was lost, 1 on a loss or a failure; this script exits with its status.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-broker.sh
ensure_broker
bin_dir=$(mktemp -d)
trap 'rm -rf "$bin_dir"' EXIT
go build -o "$bin_dir/long-lived-publisher" ./examples/long-lived-publisher
status=0
"$bin_dir/long-lived-publisher" "$@" || status=$?
exit "$status"
