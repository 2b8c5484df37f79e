#!/usr/bin/env bash
# The test suite, against a real RabbitMQ (found at $AMQP_URI or started).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-broker.sh
ensure_broker
echo "broker control: ${RABBITMQCTL:-none}"

# The fault tests restart the broker, drop its connections and raise memory
# alarms: packages run one at a time (-p 1) so no test shares the broker
# with them.
go test -race -p 1 -count=1 -timeout 20m ./...
# watermill's TestReconnect, without -race: watermill-amqp's subscriber,
# which it consumes with, races on its own connection flag during reconnects
# (see conformance/conformance_reconnect_test.go).
go test -p 1 -count=1 -timeout 10m -run TestConformanceReconnect ./conformance/
