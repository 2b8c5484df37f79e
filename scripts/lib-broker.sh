# Sourced by scripts/test.sh and scripts/demo.sh: ensure_broker finds the
# RabbitMQ at $AMQP_URI (default amqp://guest:guest@localhost:5672/) or starts
# one: with docker compose where a Docker engine runs, otherwise the machine's
# rabbitmq-server, installed from Debian's packages when missing. It exports
# RABBITMQCTL, the command the fault tests use to restart and alarm the broker.

ensure_broker() {
  local root uri hostport host port
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  uri=${AMQP_URI:-amqp://guest:guest@localhost:5672/}
  hostport=$(printf '%s' "$uri" | sed -E 's#^amqps?://([^@/]*@)?([^/?]*).*#\2#')
  host=${hostport%:*}
  port=${hostport##*:}
  [ "$host" = "$hostport" ] && port=5672
  [ "$host" = "localhost" ] && host=127.0.0.1

  local compose=(docker compose -f "$root/docker-compose.yml") ctl=""
  if broker_answers "$host" "$port"; then
    echo "RabbitMQ answers at $host:$port"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "Starting RabbitMQ with docker compose"
    "${compose[@]}" up -d --wait rabbitmq
    ctl="${compose[*]} exec -T rabbitmq rabbitmqctl"
  else
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      echo "Installing rabbitmq-server from Debian's packages"
      local sudo=""
      [ "$(id -u)" = 0 ] || sudo=sudo
      $sudo apt-get update -q
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    fi
    if ! broker_answers "$host" "$port"; then # the package may have started it
      echo "Starting the machine's rabbitmq-server"
      rabbitmq-server -detached
    fi
    ctl=rabbitmqctl
  fi

  # How the fault tests control the broker: $RABBITMQCTL if set, else the
  # one that started it, else the machine's rabbitmqctl, else docker's.
  if [ -z "${RABBITMQCTL:-}" ]; then
    if [ -n "$ctl" ]; then
      RABBITMQCTL=$ctl
    elif command -v rabbitmqctl >/dev/null 2>&1; then
      RABBITMQCTL=rabbitmqctl
    elif command -v docker >/dev/null 2>&1 && "${compose[@]}" ps -q rabbitmq 2>/dev/null | grep -q .; then
      RABBITMQCTL="${compose[*]} exec -T rabbitmq rabbitmqctl"
    fi
  fi
  export RABBITMQCTL
  if [ -n "${RABBITMQCTL:-}" ]; then
    # await_startup fails at once while the node is still booting: retry.
    local t
    for t in $(seq 1 60); do
      $RABBITMQCTL -q await_startup >/dev/null 2>&1 && break
      sleep 1
    done
  fi

  local i
  for i in $(seq 1 120); do
    broker_answers "$host" "$port" && return 0
    sleep 0.5
  done
  echo "RabbitMQ does not answer at $host:$port" >&2
  return 1
}

broker_answers() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}
