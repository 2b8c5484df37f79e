#!/usr/bin/env bash
# The test suite, against real RabbitMQ brokers of both lines users run:
#
#   ./scripts/test.sh                     RabbitMQ 3.10 and RabbitMQ 4.0, side by side (the default, and CI's)
#   RABBITMQ_LINE=3.10 ./scripts/test.sh  RabbitMQ 3.10 only: the broker at $AMQP_URI, else docker compose's,
#                                         else the machine's rabbitmq-server (installed when missing)
#   RABBITMQ_LINE=4.0 ./scripts/test.sh   RabbitMQ 4.0 only: scripts/rabbitmq4.sh's node on 127.0.0.1:5680
#                                         (Debian trixie's 4.0.5 in a chroot, installed when missing: root)
#
# Each line runs three phases: the suite against the line's broker (under -race on RabbitMQ 3.10: the race
# detector finds our races whatever the broker, at five to ten times the CPU; the 4.0 line runs at full
# speed beside it), then, without -race (on 3.10; 4.0's suite ran them), the tests that restart the broker
# under watermill-amqp's own code or watermill's TestReconnect harness (see below); beside them, the packages that start nodes of their own
# (cluster/, tls/, and partition/, whose nodes live in network namespaces: root). Every phase runs
# and is reported even when an earlier one failed. Passing tests stay quiet: a line per package as it ends,
# a progress line every minute while one runs, the output of each failed test, and at the very end a
# summary naming each failed test with its line, phase and package. The whole output of each phase is kept
# in $TEST_OUT (default: a fresh directory under /tmp, printed at the start).
#
# The fault tests restart the broker, drop its connections and raise memory alarms: within a line,
# packages run one at a time (-p 1), so no test shares its broker with them; the two lines use brokers,
# clusters and TLS nodes of their own (RabbitMQ 3.10: 5672, cluster 5691..5693, TLS 5701/5702;
# RabbitMQ 4.0: 5680, cluster 5686..5688, TLS 5706/5707), so they run at the same time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${TEST_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/watermill-rabbitmq-test.XXXXXX")}
mkdir -p "$out"
: >"$out/failed.txt"
: >"$out/counts.txt"
echo "test logs: $out"

case "${RABBITMQ_LINE:-all}" in
all) lines=(3.10 4.0) ;;
3.10 | 4.0) lines=("$RABBITMQ_LINE") ;;
*) echo "RABBITMQ_LINE must be 3.10, 4.0 or all, not '$RABBITMQ_LINE'" >&2; exit 2 ;;
esac

go build -o "$out/testreport" ./internal/cmd/testreport || exit 1

# phase LINE NAME GO-TEST-ARGS...: one go test run, reported by testreport.
phase() {
  local line=$1 name=$2
  shift 2
  echo "[$line $name] go test $*"
  go test -json "$@" 2>&1 |
    "$out/testreport" -label "$line $name" -log "$out/$line-$name.log" \
      -summary "$out/failed.txt" -counts "$out/counts.txt"
}

# broker LINE: find or start the line's broker; exports AMQP_URI and RABBITMQCTL.
broker() {
  case "$1" in
  3.10)
    export AMQP_URI=${AMQP_URI:-amqp://guest:guest@localhost:5672/}
    # shellcheck source=scripts/lib-broker.sh
    source scripts/lib-broker.sh
    ensure_broker
    ;;
  4.0)
    [ "$(id -u)" = 0 ] || { echo "RabbitMQ 4.0 runs from a chroot: run as root, or RABBITMQ_LINE=3.10" >&2; return 1; }
    local started
    # A node this run starts, it stops at the end; one that ran already stays.
    bash scripts/rabbitmq4.sh status >/dev/null 2>&1 || stop_rmq4=1
    started=$(bash scripts/rabbitmq4.sh start) || return 1
    export AMQP_URI RABBITMQCTL
    AMQP_URI=$(printf '%s\n' "$started" | sed -n 's/^AMQP_URI=//p')
    RABBITMQCTL=$(printf '%s\n' "$started" | sed -n "s/^RABBITMQCTL='\(.*\)'$/\1/p")
    [ -n "$AMQP_URI" ] && [ -n "$RABBITMQCTL" ] || { echo "scripts/rabbitmq4.sh printed no URI" >&2; return 1; }
    ;;
  esac
  echo "[$1] broker $(printf '%s' "$AMQP_URI" | sed -E 's#//[^@/]*@#//#'), control: $RABBITMQCTL"
}

# suite LINE: every phase against the line's broker. The packages that start
# RabbitMQ nodes of their own (cluster/, tls/, partition/) share no broker
# with the others: they run beside them, as a phase of their own.
suite() {
  local line=$1 status=0 nodes_pid
  export RABBITMQ_LINE=$line
  if ! broker "$line" >"$out/$line-broker.log" 2>&1; then
    cat "$out/$line-broker.log"
    echo "[$line] the broker could not be started" >>"$out/failed.txt"
    return 1
  fi
  cat "$out/$line-broker.log"
  # The race detector on the 3.10 line: it finds our races whatever the
  # broker, and costs the CPU five to ten times over; the 4.0 line proves
  # the broker's behaviour, at full speed, beside it.
  local race=() suite=suite
  if [ "$line" = 3.10 ]; then race=(-race) suite=race; fi
  phase "$line" nodes "${race[@]}" -p 1 -count=1 -timeout 40m ./cluster/ ./tls/ ./partition/ &
  nodes_pid=$!
  # shellcheck disable=SC2046 # one package a word
  phase "$line" "$suite" "${race[@]}" -p 1 -count=1 -timeout 30m $(go list ./... | grep -v -e '/cluster$' -e '/tls$' -e '/partition$') ||
    status=1
  # Without -race, the tests that drive watermill-amqp's own code through a
  # broker restart: its ConnectionWrapper races on its connection flag during
  # reconnects, and so does watermill's own TestReconnect harness (see
  # conformance/conformance_reconnect_test.go). The conformance reconnect
  # tests consume with watermill-amqp's subscriber and with ours, through
  # both front doors (watermill-amqp v2 and v3); the decorators' acceptance
  # test publishes with watermill-amqp's stock publisher.
  # (On the 4.0 line the suite ran without -race: they ran in it.)
  if [ ${#race[@]} -gt 0 ]; then
    phase "$line" reconnect -p 1 -count=1 -timeout 15m \
      -run 'TestConformance(Resilient(V3)?)?Reconnect|TestStockPublisherThroughBrokerRestart' \
      ./conformance/ ./decorate/ || status=1
  fi
  wait "$nodes_pid" || status=1
  if [ -n "${stop_rmq4:-}" ]; then bash scripts/rabbitmq4.sh stop >>"$out/$line-broker.log" 2>&1 || true; fi
  return $status
}

started=$SECONDS
pids=()
for line in "${lines[@]}"; do
  suite "$line" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done

echo
echo "==== summary ($(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s; logs in $out)"
for line in "${lines[@]}"; do
  for name in race suite nodes reconnect; do
    [ -f "$out/$line-$name.log" ] && echo "ran: RabbitMQ $line, phase $name ($out/$line-$name.log)"
  done
done
read -r passed failed skipped < <(awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}' "$out/counts.txt")
extra=$(grep -cv '^$' "$out/failed.txt" || true)
if [ "$extra" -gt "$failed" ]; then failed=$extra; fi # a broker that never started counts too
if [ -s "$out/failed.txt" ]; then
  echo "FAILED:"
  sed 's/^/  /' "$out/failed.txt"
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
