#!/usr/bin/env bash
# A RabbitMQ cluster of its own for the tests, beside the machine's default
# node (rabbit@localhost on 5672, which this script never touches).
#
#   cluster.sh start DIR             start nodes q1..q3@localhost as one cluster, wait
#                                    until all run; print their AMQP URIs, one a line
#   cluster.sh stop DIR              stop every node (SIGTERM, then SIGKILL what is
#                                    left after 20 s) and remove DIR
#   cluster.sh uris DIR              print the AMQP URIs
#   cluster.sh kill DIR N            SIGKILL node N's Erlang VM (beam.smp)
#   cluster.sh start-node DIR N      start node N again (it rejoins by itself), wait for it
#   cluster.sh stop-node DIR N       stop node N gracefully (rabbitmqctl stop: the whole VM)
#   cluster.sh stop-app DIR N        rabbitmqctl stop_app (the VM stays up)
#   cluster.sh start-app DIR N       rabbitmqctl start_app, and wait for it
#   cluster.sh pid DIR N             node N's OS pid (fails when it is not running)
#   cluster.sh ctl DIR N ARGS...     rabbitmqctl -n <node N> ARGS...
#   cluster.sh queues DIR N ARGS...  rabbitmq-queues -n <node N> ARGS...
#   cluster.sh status DIR            cluster_status, from the first node that answers
#
# Settings, read by start and kept in DIR/cluster.env for the other commands:
#   RABBITMQ_LINE        3.10 (default): the machine's RabbitMQ (/usr/sbin/rabbitmq-server);
#                        4.0: RabbitMQ 4 in the chroot at $RMQ4_DIR (default /srv/rmq4-trixie,
#                        installed by scripts/rabbitmq4.sh), unless CLUSTER_CHROOT says otherwise
#   CLUSTER_CHROOT       a chroot holding RabbitMQ (/usr/lib/rabbitmq/bin there): the nodes run in
#                        it as its rabbitmq user; DIR must then be inside it (e.g. <chroot>/tmp/x).
#                        Set and empty: the machine's RabbitMQ, whatever RABBITMQ_LINE says
#   CLUSTER_EPMD_PORT    in a chroot, the port of the epmd the nodes and tools use (default
#                        $RMQ4_EPMD_PORT, else 4700: the one scripts/rabbitmq4.sh's node uses;
#                        the first node starts it, stop ends it when no node is left in it)
#   CLUSTER_SIZE         number of nodes (default 3)
#   CLUSTER_NAME_PREFIX  node N is <prefix>N@localhost (default q; r in a chroot)
#   CLUSTER_PORT_BASE    node N listens for AMQP on 127.0.0.1:<base+N> (default 5690; 5685 in
#                        a chroot: q1..q3 on 5691..5693, r1..r3 on 5686..5688, so that both
#                        lines can run at once)
#   CLUSTER_DIST_BASE    node N's Erlang distribution port is <base+N>
#                        (default 20000+CLUSTER_PORT_BASE)
#   CLUSTER_CONF         extra lines for every node's rabbitmq.conf (e.g. a TLS listener)
#   CLUSTER_USER, CLUSTER_PASS  credentials in the printed URIs (default guest/guest)
#   CLUSTER_TIMEOUT      seconds to wait for a node to start (default 120)
#   CLUSTER_OWNER_PID    the process the cluster belongs to (e.g. a test binary). When
#                        start finds nodes of the same names left by an owner that is
#                        gone (a test run killed before its cleanup), it stops them first.
#   CLUSTER_TRACE        set: trace every command with a timestamp
#
# The first node boots alone; the others boot together and join it through
# classic peer discovery (no stop_app/join_cluster/start_app round trips).
# Each node has its own config file (RABBITMQ_CONFIG_FILE): the machine's
# /etc/rabbitmq/rabbitmq.conf may pin a listener to 5672, which would win
# over RABBITMQ_NODE_PORT. Run as root (the Debian wrappers then run nodes
# and rabbitmqctl as the rabbitmq user: DIR's parents must be traversable by
# it, DIR's node directories are chowned to it) or as the rabbitmq user. Any
# other user runs the scripts of /usr/lib/rabbitmq/bin directly, with
# HOME=DIR (an Erlang cookie of its own).
# In a chroot (run as root), every node and tool runs there through
# `chroot --userspec` as the chroot's rabbitmq user, with `env -i` and only
# the RABBITMQ_* variables of its node, HOME=DIR (a cookie of its own) and
# an epmd of the chroot's (CLUSTER_EPMD_PORT); DIR's node directories are
# chowned to that user. start mounts /proc, /sys and /dev in the chroot if
# they are not; stop unmounts them when no process is left in the chroot.
set -euo pipefail
# shellcheck source=scripts/lib-chroot.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib-chroot.sh"
[ -n "${CLUSTER_TRACE:-}" ] && { PS4='+ ${EPOCHREALTIME} '; set -x; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2
case "$dir" in /*) ;; *) dir=$(pwd)/$dir ;; esac
dir=${dir%/}
[ -n "$dir" ] || die "refusing DIR '/'"

# How to run RabbitMQ's tools (set_tools, once the settings are known). The
# machine's: the Debian wrappers switch root to the rabbitmq user; anyone
# else runs the real scripts with a HOME of its own. A chroot's: chroot(8)
# as its rabbitmq user, with a clean environment (tool_env adds to it).
uid=$(id -u)
tool_env=()
set_tools() {
  if [ -n "$chroot" ]; then
    [ "$uid" = 0 ] || die "nodes in a chroot ($chroot) need root"
    bin=/usr/lib/rabbitmq/bin home=$(inner "$dir")
    [ -x "$chroot$bin/rabbitmq-server" ] || die "no RabbitMQ in $chroot (install it with scripts/rabbitmq4.sh install)"
    ruid=$(awk -F: '$1=="rabbitmq"{print $3}' "$chroot/etc/passwd")
    rgid=$(awk -F: '$1=="rabbitmq"{print $4}' "$chroot/etc/passwd")
    [ -n "$ruid" ] && [ -n "$rgid" ] || die "no rabbitmq user in $chroot/etc/passwd"
  elif [ "$uid" = 0 ] || [ "$uid" = "$(id -u rabbitmq 2>/dev/null || echo none)" ]; then
    bin=/usr/sbin home=""
  else
    bin=/usr/lib/rabbitmq/bin home=$dir
  fi
  [ -n "$chroot" ] || [ -x "$bin/rabbitmq-server" ] || die "rabbitmq-server not found in $bin"
}
# inner PATH: PATH (on the machine, inside the chroot) as the chroot sees it.
inner() { if [ -n "$chroot" ]; then echo "${1#"$chroot"}"; else echo "$1"; fi; }
tool() { # tool NAME ARGS...: run one of RabbitMQ's scripts
  local name=$1
  shift
  if [ -n "$chroot" ]; then
    chroot --userspec="$ruid:$rgid" --groups="$rgid" "$chroot" /usr/bin/env -i \
      HOME="$home" PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 LANG=C.UTF-8 \
      ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1 ${tool_env[@]+"${tool_env[@]}"} "$bin/$name" "$@"
  elif [ -n "$home" ]; then
    HOME=$home env ${tool_env[@]+"${tool_env[@]}"} "$bin/$name" "$@"
  else
    env ${tool_env[@]+"${tool_env[@]}"} "$bin/$name" "$@"
  fi
}
epmd_names() { # the names registered with the nodes' epmd
  if [ -n "$chroot" ]; then
    chroot "$chroot" /usr/bin/env -i ERL_EPMD_PORT="$epmd_port" /usr/bin/epmd -names 2>/dev/null
  else
    epmd -names 2>/dev/null
  fi
}
# leave_chroot: end the chroot's epmd on our port when no name is left in
# it, and unmount what chroot_mount mounted when no process runs in the chroot
# any more (other nodes of the chroot, scripts/rabbitmq4.sh's, keep both).
leave_chroot() {
  local real ep
  real=$(readlink -f "$chroot")
  for ep in $(ss -Hltnp "sport = :$epmd_port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    if [ "$(readlink "/proc/$ep/root")" = "$real" ] && [ "$(cat "/proc/$ep/comm" 2>/dev/null)" = epmd ] &&
      ! epmd_names | grep -q '^name '; then
      kill -TERM "$ep" 2>/dev/null || true
      for _ in $(seq 1 50); do [ -d "/proc/$ep" ] || break; sleep 0.1; done
    fi
  done
  chroot_user "$chroot" >/dev/null && return 0
  chroot_unmount "$chroot" || true
}

load_settings() {
  [ -f "$dir/cluster.env" ] || die "$dir is not a cluster directory (no cluster.env)"
  # shellcheck disable=SC1091
  source "$dir/cluster.env"
  chroot=${chroot:-} epmd_port=${epmd_port:-}
  if [ -n "$chroot" ]; then dir=$(readlink -f "$dir"); fi # as start recorded it
  set_tools
}

node() { echo "${prefix}$1@localhost"; }
nodedir() { echo "$dir/${prefix}$1"; }
port() { echo $((port_base + $1)); }
check_n() {
  [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$size" ] || die "no node '$1' (1..$size)"
}
ctl() { # ctl N ARGS...: rabbitmqctl against node N
  local n=$1
  shift
  cli_env "$n"
  tool rabbitmqctl -n "$(node "$n")" "$@"
}
# cli_env N: in a chroot, the CLI's own distribution ports follow node N's
# (RABBITMQ_DIST_PORT+10000..+10010), not 35672.. which every other CLI
# of the chroot uses.
cli_env() {
  tool_env=()
  if [ -n "$chroot" ]; then tool_env=(RABBITMQ_DIST_PORT=$((dist_base + $1))); fi
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
registered() { epmd_names | grep -q "^name ${prefix}$1 at port "; }

# pid_of N: the OS pid of node N's beam.smp. A candidate (the pid file, then
# every beam.smp) counts only if its environment names node N and its
# directory (and, in a chroot, its root is the chroot), so a stale pid file
# or another node never matches.
pid_of() {
  local n=$1 p
  for p in $(cat "$(nodedir "$n")/pid" 2>/dev/null || true) $(pgrep -x beam.smp || true); do
    [[ "$p" =~ ^[0-9]+$ ]] || continue
    if grep -qzxF "RABBITMQ_NODENAME=$(node "$n")" "/proc/$p/environ" 2>/dev/null &&
      grep -qzxF "RABBITMQ_MNESIA_BASE=$(inner "$(nodedir "$n")")/mnesia" "/proc/$p/environ" 2>/dev/null &&
      { [ -z "$chroot" ] || [ "$(readlink "/proc/$p/root" 2>/dev/null)" = "$chroot" ]; }; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# launch N: start node N's VM, detached; returns at once.
launch() {
  local n=$1 base in
  base=$(nodedir "$n")
  in=$(inner "$base")
  registered "$n" && die "a node $(node "$n") runs already"
  rm -f "$base/pid" # a killed node leaves it behind
  if [ -n "$chroot" ]; then chroot_mount "$chroot"; fi
  tool_env=(
    RABBITMQ_NODENAME="$(node "$n")" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_NODE_PORT="$(port "$n")" RABBITMQ_DIST_PORT=$((dist_base + n))
    RABBITMQ_CONFIG_FILE="$in/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$in/advanced.config"
    RABBITMQ_MNESIA_BASE="$in/mnesia" RABBITMQ_LOG_BASE="$in/log" RABBITMQ_PID_FILE="$in/pid"
    RABBITMQ_FEATURE_FLAGS_FILE="$in/feature_flags" RABBITMQ_ENABLED_PLUGINS_FILE="$in/enabled_plugins"
  )
  if [ -n "$chroot" ]; then # distribution on the loopback only, as rabbitmq4.sh's node
    tool_env+=(RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
  fi
  (
    cd "$base"
    tool rabbitmq-server -detached
  ) >>"$base/log/startup.log" 2>&1 || die "cannot start $(node "$n"): see $base/log"
}

# await N: wait until node N accepts AMQP connections (the listeners open
# last in a boot), failing early if its VM is gone.
await() {
  local n=$1 deadline=$((SECONDS + timeout)) since=$SECONDS
  until port_open "$(port "$n")"; do
    [ $SECONDS -lt $deadline ] || die "node $(node "$n") did not start within ${timeout}s: see $(nodedir "$n")/log"
    if [ $((SECONDS - since)) -ge 5 ] && ! pid_of "$n" >/dev/null; then
      tail -n 20 "$(nodedir "$n")/log/"*.log >&2 || true
      die "node $(node "$n") died while starting: see $(nodedir "$n")/log"
    fi
    sleep 0.2
  done
}

# reap_stale: stop a cluster of the same node names whose recorded owner
# process is gone. Only nodes of a cluster directory holding owner=PID are
# touched.
reap_stale() {
  local n p base stale root owner
  for n in $(seq 1 "$size"); do
    registered "$n" || continue
    for p in $(pgrep -x beam.smp || true); do
      grep -qzxF "RABBITMQ_NODENAME=$(node "$n")" "/proc/$p/environ" 2>/dev/null || continue
      base=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^RABBITMQ_MNESIA_BASE=//p')
      root=$(readlink "/proc/$p/root" 2>/dev/null) || root=/
      [ "$root" = / ] || base=$root$base # as the machine sees it
      stale=${base%/"${prefix}$n"/mnesia}
      [ "$stale" != "$base" ] && [ -f "$stale/cluster.env" ] || continue
      owner=$(sed -n 's/^owner=//p' "$stale/cluster.env")
      if [[ "$owner" =~ ^[0-9]+$ ]] && ! kill -0 "$owner" 2>/dev/null; then
        echo "cluster.sh: stopping the cluster left in $stale by process $owner, which is gone" >&2
        "$0" stop "$stale" || true
      fi
    done
  done
}

uris() {
  local n
  for n in $(seq 1 "$size"); do echo "amqp://$user:$pass@127.0.0.1:$(port "$n")/"; done
}

# running: how many nodes node 1 sees running in its cluster.
running() { ctl 1 -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0; }

stop_all() {
  local n pid pids=()
  for n in $(seq 1 "$size"); do
    pid=$(pid_of "$n") || continue
    kill -TERM "$pid" 2>/dev/null || true # the VM stops RabbitMQ gracefully
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for n in $(seq 1 "$size"); do # started meanwhile, or missed
    if pid=$(pid_of "$n"); then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

case "$cmd" in
start)
  if [ -n "${CLUSTER_CHROOT+set}" ]; then
    chroot=$CLUSTER_CHROOT
  else
    case "${RABBITMQ_LINE:-3.10}" in
    3.10 | 3) chroot="" ;;
    4.0 | 4) chroot=${RMQ4_DIR:-/srv/rmq4-trixie} ;;
    *) die "RABBITMQ_LINE '$RABBITMQ_LINE': 3.10 or 4.0" ;;
    esac
  fi
  epmd_port=""
  if [ -n "$chroot" ]; then
    [ -d "$chroot" ] || die "no chroot at $chroot (install RabbitMQ 4 with scripts/rabbitmq4.sh install)"
    chroot=$(readlink -f "$chroot")
    [ "$chroot" != / ] || die "CLUSTER_CHROOT=/: leave it empty for the machine's RabbitMQ"
    epmd_port=${CLUSTER_EPMD_PORT:-${RMQ4_EPMD_PORT:-4700}}
    [[ "$epmd_port" =~ ^[0-9]+$ ]] || die "bad CLUSTER_EPMD_PORT '$epmd_port'"
    mkdir -p "$(dirname "$dir")"
    real=$(readlink -f "$(dirname "$dir")")/$(basename "$dir")
    [ "${real#"$chroot"/}" != "$real" ] || die "$dir is not inside the chroot $chroot: its nodes could not reach it"
    dir=$real
  fi
  set_tools
  size=${CLUSTER_SIZE:-3}
  prefix=${CLUSTER_NAME_PREFIX:-$([ -n "$chroot" ] && echo r || echo q)}
  port_base=${CLUSTER_PORT_BASE:-$([ -n "$chroot" ] && echo 5685 || echo 5690)}
  dist_base=${CLUSTER_DIST_BASE:-$((20000 + port_base))}
  user=${CLUSTER_USER:-guest} pass=${CLUSTER_PASS:-guest}
  timeout=${CLUSTER_TIMEOUT:-120}
  [[ "$prefix" =~ ^[A-Za-z][A-Za-z0-9_-]*$ ]] || die "bad CLUSTER_NAME_PREFIX '$prefix'"
  [[ "$size" =~ ^[1-9][0-9]*$ ]] || die "bad CLUSTER_SIZE '$size'"
  [ -e "$dir/cluster.env" ] && die "$dir holds a cluster already: stop it first"
  reap_stale
  for n in $(seq 1 "$size"); do
    registered "$n" && die "a node $(node "$n") runs already"
    port_open "$(port "$n")" && die "port $(port "$n") is taken"
    port_open $((dist_base + n)) && die "port $((dist_base + n)) is taken"
  done
  started=$SECONDS
  mkdir -p "$dir"
  chmod 755 "$dir"
  cat >"$dir/cluster.env" <<EOF
size=$size
prefix=$prefix
port_base=$port_base
dist_base=$dist_base
user='$user'
pass='$pass'
timeout=$timeout
owner=${CLUSTER_OWNER_PID:-}
chroot='$chroot'
epmd_port=$epmd_port
EOF
  if [ -n "$chroot" ]; then # HOME of the nodes and tools: a cookie of the cluster's own
    printf '%s' "$(head -c 15 /dev/urandom | base32)" >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
    chown "$ruid:$rgid" "$dir" "$dir/.erlang.cookie"
  fi
  for n in $(seq 1 "$size"); do
    base=$(nodedir "$n")
    mkdir -p "$base/mnesia" "$base/log"
    {
      echo "listeners.tcp.default = 127.0.0.1:$(port "$n")"
      echo "log.console = false"
      if [ "$n" -gt 1 ]; then
        echo "cluster_formation.peer_discovery_backend = classic_config"
        echo "cluster_formation.classic_config.nodes.1 = $(node 1)"
        echo "cluster_formation.discovery_retry_limit = 480"
        echo "cluster_formation.discovery_retry_interval = 250"
      fi
      if [ -n "${CLUSTER_CONF:-}" ]; then printf '%s\n' "$CLUSTER_CONF"; fi
    } >"$base/rabbitmq.conf"
    echo '[].' >"$base/enabled_plugins"
    if [ -n "$chroot" ]; then
      chown -R "$ruid:$rgid" "$base"
    elif [ "$uid" = 0 ]; then chown -R rabbitmq:rabbitmq "$base"; fi
  done
  if [ -n "$chroot" ]; then
    if ! chroot --userspec="$ruid:$rgid" "$chroot" /usr/bin/test -w "$(inner "$(nodedir 1)")/mnesia"; then
      rm -rf "$dir"
      die "the chroot's rabbitmq user cannot write under $(inner "$dir"): make its parents traversable (chmod o+x)"
    fi
  elif [ "$uid" = 0 ] && ! su rabbitmq -s /bin/sh -c "test -w '$(nodedir 1)/mnesia'"; then
    rm -rf "$dir"
    die "the rabbitmq user cannot write under $dir: make its parents traversable (chmod o+x)"
  fi
  trap 'stop_all; rm -rf "$dir"; if [ -n "$chroot" ]; then leave_chroot; fi' EXIT
  # The first node boots alone, so that the others find it running and join
  # it at their first boot (two blank nodes booting together could each
  # form a cluster of their own).
  launch 1
  await 1
  for n in $(seq 2 "$size"); do launch "$n"; done
  for n in $(seq 2 "$size"); do await "$n"; done
  # Asked until all run, within the start's bound: once, on a loaded
  # machine, the one call counted none though the node answered AMQP (the
  # 4.0 TLS node, 2026-12-06; running prints 0 when rabbitmqctl fails).
  deadline=$((SECONDS + timeout))
  until got=$(running); [ "$got" = "$size" ] || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
  [ "$got" = "$size" ] || die "only $got of $size nodes run in the cluster: see $dir/*/log"
  trap - EXIT
  echo "cluster of $size started in $((SECONDS - started))s: $(node 1) .. $(node "$size")" >&2
  uris
  ;;
stop)
  if [ ! -f "$dir/cluster.env" ]; then
    [ -e "$dir" ] && die "$dir is not a cluster directory (no cluster.env): not removing it"
    exit 0
  fi
  load_settings
  stop_all
  rm -rf "$dir"
  if [ -n "$chroot" ]; then leave_chroot; fi
  ;;
uris)
  load_settings
  uris
  ;;
kill)
  load_settings
  [ $# -eq 1 ] || usage
  check_n "$1"
  pid=$(pid_of "$1") || die "node $(node "$1") is not running"
  kill -KILL "$pid"
  for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.05; done
  echo "killed $(node "$1") (pid $pid)" >&2
  ;;
start-node)
  load_settings
  [ $# -eq 1 ] || usage
  check_n "$1"
  launch "$1"
  await "$1"
  ;;
stop-node)
  load_settings
  [ $# -eq 1 ] || usage
  check_n "$1"
  pid=$(pid_of "$1") || die "node $(node "$1") is not running"
  ctl "$1" -q stop >/dev/null
  for _ in $(seq 1 200); do [ -d "/proc/$pid" ] || break; sleep 0.05; done
  ;;
stop-app)
  load_settings
  [ $# -eq 1 ] || usage
  check_n "$1"
  ctl "$1" -q stop_app >/dev/null
  ;;
start-app)
  load_settings
  [ $# -eq 1 ] || usage
  check_n "$1"
  ctl "$1" -q start_app >/dev/null
  await "$1"
  ;;
pid)
  load_settings
  [ $# -eq 1 ] || usage
  check_n "$1"
  pid_of "$1" || die "node $(node "$1") is not running"
  ;;
ctl)
  load_settings
  [ $# -ge 2 ] || usage
  check_n "$1"
  ctl "$@"
  ;;
queues)
  load_settings
  [ $# -ge 2 ] || usage
  check_n "$1"
  n=$1
  shift
  cli_env "$n"
  tool rabbitmq-queues -n "$(node "$n")" "$@"
  ;;
status)
  load_settings
  for n in $(seq 1 "$size"); do
    if registered "$n" && ctl "$n" cluster_status 2>/dev/null; then exit 0; fi
  done
  die "no node answers"
  ;;
*)
  usage
  ;;
esac
