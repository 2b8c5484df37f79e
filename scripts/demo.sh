#!/usr/bin/env bash
# The long-lived publisher demo, against a real RabbitMQ (found at $AMQP_URI
# or started). Extra arguments go to the demo, e.g. -restart-every 10s -duration 45s.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-broker.sh
ensure_broker
exec go run ./examples/long-lived-publisher "$@"
