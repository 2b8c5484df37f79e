#!/usr/bin/env bash
# The test suite, against a real RabbitMQ (found at $AMQP_URI or started).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-broker.sh
ensure_broker
echo "broker control: ${RABBITMQCTL:-none}"

# The fault tests restart the broker, drop its connections and raise memory
# alarms: packages run one at a time (-p 1) so no test shares the broker
# with them. cluster/ and tls/ start RabbitMQ nodes of their own
# (scripts/cluster.sh: a 3-node cluster on 5691..5693, a TLS node on 5702)
# and stop them at the end; they skip, saying why, where the machine has no
# rabbitmq-server to start them with.
go test -race -p 1 -count=1 -timeout 20m ./...
# Without -race, the tests that drive watermill-amqp's own code through a
# broker restart: its ConnectionWrapper races on its connection flag during
# reconnects, and so does watermill's own TestReconnect harness (see
# conformance/conformance_reconnect_test.go). The conformance reconnect
# tests consume with watermill-amqp's subscriber and with ours, through
# both front doors (watermill-amqp v2 and v3); the middleware's acceptance
# test publishes with watermill-amqp's stock publisher.
go test -p 1 -count=1 -timeout 10m \
  -run 'TestConformance(Resilient(V3)?)?Reconnect|TestStockPublisherThroughBrokerRestart' \
  ./conformance/ ./middleware/
