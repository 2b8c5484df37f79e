#!/usr/bin/env bash
# The performance suite (issue 4): the publisher, raw amqp091-go and
# watermill-amqp side by side in one run against a real RabbitMQ (found at
# $AMQP_URI or started), then the comparison table (medians, ratios,
# targets). COUNT runs of each case (default 5); BENCHTIME per run (default
# 2s); BENCH selects cases. Then BenchmarkDuel and BenchmarkDuelConsume,
# raw and ours in turns: PAIRS pairs of turns per case (default 40; 0 skips
# them), DUEL selects their cases. The raw output is kept in bench.txt
# (benchstat reads it too).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-broker.sh
ensure_broker
# Rounds of -count 1 rather than one -count N: go test repeats each case N
# times in a row, so a drift of the machine (the broker compacting, another
# process) would fall on one side of a comparison; in rounds it falls on
# both.
go test -c -o "${TMPDIR:-/tmp}/benchmarks.test" ./benchmarks
: >bench.txt
for round in $(seq "${COUNT:-5}"); do
  echo "round $round of ${COUNT:-5}" >&2
  "${TMPDIR:-/tmp}/benchmarks.test" -test.run '^$' \
    -test.bench "${BENCH:-^Benchmark(Publish|Batch|Consume|ConsumeQuorum|EndToEnd)$}" \
    -test.benchtime "${BENCHTIME:-2s}" -test.count 1 -test.timeout 60m | tee -a bench.txt >&2
done
# The duel pairs its turns itself: one run, -benchtime in pairs.
if [ "${PAIRS:-40}" -gt 0 ]; then
  echo "duel: ${PAIRS:-40} pairs of turns per case" >&2
  "${TMPDIR:-/tmp}/benchmarks.test" -test.run '^$' -test.bench "${DUEL:-^BenchmarkDuel(Consume)?$}" \
    -test.benchtime "${PAIRS:-40}x" -test.timeout 60m | tee -a bench.txt >&2
fi
go run ./benchmarks/benchtable <bench.txt 2>/dev/null
