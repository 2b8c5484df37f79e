#!/usr/bin/env bash
# The performance suite (issue 4): the publisher, raw amqp091-go and
# watermill-amqp side by side in one run against a real RabbitMQ (found at
# $AMQP_URI or started), then the comparison table (medians, ratios,
# targets). COUNT runs of each case (default 5); BENCHTIME per run (default
# 2s). The raw output is kept in bench.txt for benchstat.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-broker.sh
ensure_broker
go test ./benchmarks -run '^$' -bench "${BENCH:-.}" -benchtime "${BENCHTIME:-2s}" \
  -count "${COUNT:-5}" -timeout 90m | tee bench.txt | go run ./benchmarks/benchtable
