#!/usr/bin/env bash
# A 3-node RabbitMQ cluster whose nodes live in network namespaces of their
# own, for the partition tests (partition/): a node's link taken down drops
# its packets silently (no reset, no refusal), as a network partition does.
# Needs root and `ip` (bridges, veth pairs; no iptables, no tc).
#
#   root namespace (the tests)      <P>ns1           <P>ns2           <P>ns3
#   <P>bc  10.219.0.254/24   ---    10.219.0.1  ---  10.219.0.2  ---  10.219.0.3   client links (AMQP 5672)
#   <P>bn  (no address)      ---    10.220.0.1  ---  10.220.0.2  ---  10.220.0.3   node links (Erlang distribution)
#
# Nodes rabbit1@10.220.0.1 .. rabbit3@10.220.0.3 (long names: inter-node
# traffic takes the node links only); clients connect from the root
# namespace to amqp://guest:guest@10.219.0.N:5672/ (the defaults' subnets;
# see PARTITION_NETS).
#
#   partition.sh up MODE [OWNER_PID]  a fresh cluster, cluster_partition_handling=MODE
#                                   (pause_minority, autoheal, ignore). Leftovers of a run
#                                   whose owner is gone (killed before its cleanup) are
#                                   removed first; those of a live owner make it fail.
#   partition.sh isolate N          node N's two links down (cut off from nodes and clients)
#   partition.sh cut N              node N's node link only (clients still reach it)
#   partition.sh heal               every link up again
#   partition.sh status             each node's view {running, connected, running nodes, partitions}
#   partition.sh uris               the client URIs, one a line, in node order
#   partition.sh ctl N ARGS...      rabbitmqctl ARGS against node N, inside its namespace
#   partition.sh down               stop the nodes, end what still runs in the namespaces,
#                                   remove namespaces, links and data
#   partition.sh reap               down, if the owner of what exists is gone
#
# Environment: PARTITION_PREFIX (default rqpt: namespaces rqptns1..3, links rqptc1..3,
# rqptn1..3, bridges rqptbc, rqptbn; never the recipe's partdev*), PARTITION_NETS (the first
# two octets of the client and of the node subnet, default "10.219 10.220": clients on
# 10.219.0.0/24, nodes on 10.220.0.0/24; a second cluster at once needs a prefix and subnets
# of its own),
# PARTITION_CHROOT (a chroot holding RabbitMQ, e.g. RabbitMQ 4 from scripts/rabbitmq4.sh:
# the nodes run there as its rabbitmq user; default none: the machine's RabbitMQ),
# PARTITION_DIR (node data and logs, default /tmp/<prefix>-netns, inside the chroot if any),
# PARTITION_TICKTIME (net_ticktime, default 10 s: a partition is noticed in 7.5 to 12.5 s;
# RabbitMQ's default, 60 s, misses any shorter than about 45 s). Every command is bounded by
# a timeout.
set -u
P=${PARTITION_PREFIX:-rqpt}
CHROOT=${PARTITION_CHROOT:-}
INNER=${PARTITION_DIR:-/tmp/$P-netns} # as the nodes see it
DIR=$CHROOT$INNER                     # as this script sees it
tick=${PARTITION_TICKTIME:-10}
read -r CNET NNET <<<"${PARTITION_NETS:-10.219 10.220}"
N="1 2 3"
case $P in [a-z][a-z0-9]|[a-z][a-z0-9][a-z0-9]|[a-z][a-z0-9][a-z0-9][a-z0-9]) ;; *) echo "PARTITION_PREFIX: 2 to 4 lower-case letters or digits"; exit 2 ;; esac
for net in "$CNET" "$NNET"; do
  case $net in 10.2[0-4][0-9]) ;; *) echo "PARTITION_NETS: two of 10.200 .. 10.249"; exit 2 ;; esac
done
if [ -n "$CHROOT" ]; then
  [ -x "$CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server" ] || { echo "no RabbitMQ in $CHROOT (scripts/rabbitmq4.sh install)"; exit 2; }
  RUID=$(awk -F: '$1=="rabbitmq"{print $3}' "$CHROOT/etc/passwd")
  RGID=$(awk -F: '$1=="rabbitmq"{print $4}' "$CHROOT/etc/passwd")
  [ -n "$RUID" ] && [ -n "$RGID" ] || { echo "no rabbitmq user in $CHROOT/etc/passwd"; exit 2; }
fi

nodename() { echo "rabbit$1@$NNET.0.$1"; }
node_env() {
  local b=$INNER/n$1
  echo RABBITMQ_CONF_ENV_FILE=$b/rabbitmq-env.conf RABBITMQ_USE_LONGNAME=true RABBITMQ_NODENAME=$(nodename $1) \
    RABBITMQ_CONFIG_FILE=$b/rabbitmq.conf RABBITMQ_NODE_PORT=5672 RABBITMQ_DIST_PORT=25672 \
    RABBITMQ_MNESIA_BASE=$b/mnesia RABBITMQ_LOG_BASE=$b/log RABBITMQ_PID_FILE=$b/pid \
    RABBITMQ_FEATURE_FLAGS_FILE=$b/feature_flags RABBITMQ_ENABLED_PLUGINS_FILE=$b/enabled_plugins
}
# in_ns N CMD...: CMD in node N's namespace with its environment; in the
# chroot, as its rabbitmq user with nothing else in the environment.
in_ns() {
  local i=$1; shift
  if [ -n "$CHROOT" ]; then
    ip netns exec ${P}ns$i chroot --userspec="$RUID:$RGID" --groups="$RGID" "$CHROOT" /usr/bin/env -i \
      HOME=/var/lib/rabbitmq PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 LANG=C.UTF-8 \
      $(node_env $i) "$@"
  else
    ip netns exec ${P}ns$i env $(node_env $i) "$@"
  fi
}
rctl() { local i=$1; shift; in_ns $i timeout ${T:-60} rabbitmqctl --longnames -n $(nodename $i) "$@"; }
has_ns() { ip netns list 2>/dev/null | grep -qE "^${P}ns$1( |$)"; }

# shellcheck source=scripts/lib-chroot.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib-chroot.sh"
# unmount: undo chroot_mount once no process has its root in the chroot
# (another node of it, scripts/rabbitmq4.sh's or scripts/cluster.sh's,
# keeps the mounts).
unmount() {
  chroot_user "$CHROOT" >/dev/null && return 0
  chroot_unmount "$CHROOT" || true
}

exists() {
  for i in $N; do has_ns $i && return 0; done
  ip link show ${P}bc >/dev/null 2>&1 || ip link show ${P}bn >/dev/null 2>&1 || [ -d "$DIR" ]
}

# owner_alive: the pid recorded by up still runs (a pid reused since is
# taken as alive: refusing is the safe side).
owner_alive() {
  local pid
  pid=$(cat "$DIR/owner" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

net_up() {
  set -e
  ip link add ${P}bc type bridge forward_delay 0 stp_state 0
  ip addr add $CNET.0.254/24 dev ${P}bc
  ip link set ${P}bc up
  ip link add ${P}bn type bridge forward_delay 0 stp_state 0
  ip link set ${P}bn up
  for i in $N; do
    ip netns add ${P}ns$i
    ip -n ${P}ns$i link set lo up
    ip link add ${P}c$i type veth peer name ${P}c$i-i netns ${P}ns$i
    ip link add ${P}n$i type veth peer name ${P}n$i-i netns ${P}ns$i
    ip link set ${P}c$i master ${P}bc up
    ip link set ${P}n$i master ${P}bn up
    ip -n ${P}ns$i addr add $CNET.0.$i/24 dev ${P}c$i-i
    ip -n ${P}ns$i addr add $NNET.0.$i/24 dev ${P}n$i-i
    ip -n ${P}ns$i link set ${P}c$i-i up
    ip -n ${P}ns$i link set ${P}n$i-i up
  done
  set +e
}

launch() { in_ns $1 rabbitmq-server -detached; }
# await N: until node N runs (await_startup fails at once while the node is not reachable yet), 180 s at most.
await() {
  local until=$(( $(date +%s) + 180 ))
  while [ "$(date +%s)" -lt $until ]; do T=60 rctl $1 -q await_startup >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "node $(nodename $1) did not start; see $DIR/n$1/log"; return 1
}

up() {
  local mode=${1:-pause_minority} owner=${2:-$PPID}
  if exists; then
    if owner_alive; then echo "$P: a run of pid $(cat "$DIR/owner") owns the namespaces: not touching them"; exit 1; fi
    echo "$P: removing the leftovers of a run that is gone"; down
  fi
  mkdir -p "$DIR"; chmod 755 "$DIR"; echo "$owner" >"$DIR/owner"
  net_up || { echo "network set-up failed"; down; exit 1; }
  if [ -n "$CHROOT" ]; then chroot_mount "$CHROOT"; fi
  for i in $N; do
    local b=$DIR/n$i; mkdir -p $b/mnesia $b/log
    printf 'listeners.tcp.default = 5672\nloopback_users = none\ncluster_partition_handling = %s\nnet_ticktime = %s\n' \
      "$mode" "$tick" >$b/rabbitmq.conf
    if [ $i != 1 ]; then  # joins node 1 at its first boot: no stop_app/join_cluster/start_app
      printf 'cluster_formation.peer_discovery_backend = classic_config\ncluster_formation.classic_config.nodes.1 = %s\n' "$(nodename 1)" >>$b/rabbitmq.conf
      printf 'cluster_formation.discovery_retry_limit = 480\ncluster_formation.discovery_retry_interval = 250\n' >>$b/rabbitmq.conf
    fi
    echo "# empty on purpose: the machine's rabbitmq-env.conf binds epmd and the distribution to 127.0.0.1" >$b/rabbitmq-env.conf
    echo '[].' >$b/enabled_plugins
    if [ -n "$CHROOT" ]; then chown -R "$RUID:$RGID" $b; else chown -R rabbitmq:rabbitmq $b; fi
  done
  # Node 1 boots alone, so that the others find it running and join it
  # (two blank nodes booting together could each form a cluster of their own).
  launch 1 && await 1 || exit 1
  launch 2 && launch 3 && await 2 && await 3 || exit 1
  wait_healthy 120 || { status; exit 1; }
  echo "up: $(uris | paste -sd,) (cluster_partition_handling=$mode, net_ticktime=$tick, data in $DIR${CHROOT:+, RabbitMQ of $CHROOT})"
}

down() {
  for i in $N; do  # the three stop at once
    has_ns $i || continue
    [ -f "$DIR/n$i/pid" ] && T=30 rctl $i -q stop >/dev/null 2>&1 &
  done
  wait
  for i in $N; do
    has_ns $i || continue
    # What still runs in the namespace was started here (epmd, a node that would not stop): end it by PID.
    pids=$(ip netns pids ${P}ns$i 2>/dev/null)
    [ -n "$pids" ] && kill $pids 2>/dev/null
    for t in $(seq 1 20); do [ -z "$(ip netns pids ${P}ns$i 2>/dev/null)" ] && break; sleep 0.25; done
    pids=$(ip netns pids ${P}ns$i 2>/dev/null)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null && sleep 0.5
    ip netns del ${P}ns$i
  done
  for l in ${P}c1 ${P}c2 ${P}c3 ${P}n1 ${P}n2 ${P}n3 ${P}bc ${P}bn; do
    ip link show $l >/dev/null 2>&1 && ip link del $l
  done
  rm -rf "$DIR"
  if [ -n "$CHROOT" ]; then unmount; fi
  return 0
}

links() { # up|down N c|n...
  local st=$1 i=$2; shift 2
  case $i in 1|2|3) ;; *) echo "node must be 1, 2 or 3"; exit 2 ;; esac
  for which in "$@"; do ip link set ${P}$which$i $st || exit 1; done
}

view() { T=${T:-20} rctl $1 -q eval '{rabbit:is_running(), nodes(), catch rabbit_nodes:all_running(), catch rabbit_node_monitor:partitions()}.' 2>/dev/null | tr -d ' \n'; }

status() {
  for i in $N; do
    echo "n$i links(client/node)=$(ip -br link show ${P}c$i | awk '{print $2}')/$(ip -br link show ${P}n$i | awk '{print $2}') {running,connected,running_nodes,partitions}=$(view $i | sed -E 's/@10\.2[0-9]+\.0\.[0-9]//g')"
  done
}

healthy() {
  for i in $N; do
    v=$(view $i)
    case $v in "{true,"*) ;; *) return 1 ;; esac
    [ "$(echo "$v" | grep -o "@" | wc -l)" = 5 ] || return 1  # 2 connected + 3 running
    case $v in *",[]}") ;; *) return 1 ;; esac                # no partition
  done
}

wait_healthy() {
  local until=$(( $(date +%s) + ${1:-180} ))
  while [ "$(date +%s)" -lt $until ]; do healthy && return 0; sleep 1; done
  echo "not healthy after ${1:-180} s"; return 1
}

uris() { for i in $N; do echo amqp://guest:guest@$CNET.0.$i:5672/; done; }

op=${1:-}; shift || true
case $op in
  up) up "$@" ;;
  down) down ;;
  reap) if exists && ! owner_alive; then down; fi ;;
  isolate) links down "${1:-}" c n ;;
  cut) links down "${1:-}" n ;;
  heal) for i in $N; do links up $i c n; done ;;
  status) status ;;
  wait-healthy) wait_healthy "${1:-180}" ;;
  uris) uris ;;
  ctl) i=$1; shift; rctl $i "$@" ;;
  *) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 2 ;;
esac
