#!/usr/bin/env bash
# rabbitmq4.sh: the test suite's RabbitMQ 4.x node (Debian trixie's rabbitmq-server 4.0.5 on Erlang/OTP 27) on a
# Debian 12 (bookworm) machine, beside the machine's own RabbitMQ, without touching the machine's apt
# sources or packages (only `debootstrap` is installed, from the machine's own suite). trixie's Erlang needs
# trixie's glibc, so the node runs in a trixie chroot made with debootstrap (minbase).
#
# Usage (as root):
#   rabbitmq4.sh [start]   install if missing, start the node if not running; prints the AMQP URI and
#                          the rabbitmqctl command to use (e.g. as $AMQP_URI and $RABBITMQCTL)
#   rabbitmq4.sh stop      stop the node and the epmd it started; unmount /proc, /sys, /dev from the
#                          chroot (unless another process still runs in it); the directory stays
#   rabbitmq4.sh status    whether the node runs, and the URI and ctl command
#   rabbitmq4.sh install   install only (idempotent)
#   rabbitmq4.sh ctl ARGS  rabbitmqctl ARGS against the node (this is what $RABBITMQCTL should run)
#   rabbitmq4.sh diag ARGS rabbitmq-diagnostics ARGS against the node (also: queues ARGS, plugins ARGS)
#
# Environment (defaults):
#   RMQ4_DIR=/srv/rmq4-trixie     the chroot (created by debootstrap)
#   RMQ4_PORT=5680                AMQP listener, on 127.0.0.1 only (config file /etc/rabbitmq/<node>.conf in
#                                 the chroot: listeners.tcp.local = 127.0.0.1:$RMQ4_PORT)
#   RMQ4_DIST_PORT=RMQ4_PORT+20000  Erlang distribution port (127.0.0.1 only); the CLI uses +10000..+10010 above it
#   RMQ4_NODE=rmq4@localhost      node name (data in /var/lib/rabbitmq/mnesia/<node>, logs in /var/log/rabbitmq
#                                 of the chroot)
#   RMQ4_EPMD_PORT=4700           an epmd of its own, on 127.0.0.1, started by the chroot's Erlang with the
#                                 node; stop ends it (by pid, only if its root is the chroot). 4369 shares the
#                                 machine's epmd instead: seen to work (the OTP 27 node registers with
#                                 bookworm's OTP 25 epmd, same protocol), and then stop leaves epmd alone.
#   RMQ4_SUITE=trixie  RMQ4_MIRROR=the Debian archive this machine's apt already uses (its sources)
#   RMQ4_CONF=                    extra lines for the node's config file, written at each start
#   RMQ4_UID=4700                 uid and gid of the chroot's rabbitmq user (the node runs as it): one the
#                                 machine does not use, so the node's processes are not some host user's
# RABBITMQCTL is split on spaces by the Go tests (strings.Fields): keep paths free of spaces.
# The chroot's own /etc/hosts maps localhost; a policy-rc.d stops the package from starting its default node.
#
# Seen on a shared 2-core Debian 12 machine (Dec 2026, trixie = rabbitmq-server 4.0.5-6+deb13u2, Erlang
# 27.3.4.1), the machine loaded by other work: a fresh install took 69 s by hand (debootstrap 52 s, apt-get
# update 4 s, apt-get install of the 35 packages 14 s), 47 s through `install`, and 90 s for a bare `start`
# into a new directory (install 85 s at load average 10 to 14, then the node 4.7 s). The chroot is 240 MB
# once apt's caches and lists are removed (about 490 MB at its peak). Starts took 4.7 to 6.6 s to
# await_startup on a new node, 9 to 17 s on a used one at load average 14 to 17; stop 4 to 28 s. A
# rabbitmqctl call costs 2.5 to 5 s here (an Erlang VM boots for each; `rabbitmqctl version` took about
# 5 s with bookworm's 3.10 CLI too), which lengthens every broker restart a test drives.
# 4.0 differences that showed in tests: max_message_size (default 16 MiB) is read from a persistent_term
# written at boot, so `application:set_env(rabbit, max_message_size, N)` alone no longer takes effect
# (also `persistent_term:put(max_message_size, N)`); delivery_mode values other than 1 and 2 are accepted
# as transient (3.10 refused them: delivery_mode_unknown); quorum queues drop a message after 20 requeues (delivery-limit).
set -euo pipefail

DIR=${RMQ4_DIR:-/srv/rmq4-trixie}
PORT=${RMQ4_PORT:-5680}
DIST_PORT=${RMQ4_DIST_PORT:-$((PORT + 20000))}
NODE=${RMQ4_NODE:-rmq4@localhost}
EPMD_PORT=${RMQ4_EPMD_PORT:-4700}
SUITE=${RMQ4_SUITE:-trixie}
# The Debian archive this machine's apt uses (deb822 or one-line sources), unless RMQ4_MIRROR names one.
machine_mirror() {
  { sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
    sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}\([^[:space:]]*\).*/\2/p' /etc/apt/sources.list 2>/dev/null || true; } |
    grep -E '/debian/?$' | head -n 1 || true
}
MIRROR=${RMQ4_MIRROR:-$(machine_mirror)}
RUID=${RMQ4_UID:-4700}
SELF=$(readlink -f "$0")
NAME=${NODE%@*}
CONF=/etc/rabbitmq/$NAME.conf             # inside the chroot
PIDFILE=/var/lib/rabbitmq/mnesia/$NODE.pid # inside the chroot
STARTLOG=/var/log/rabbitmq/$NAME-start.log # inside the chroot

# shellcheck source=scripts/lib-chroot.sh
source "$(dirname "$SELF")/lib-chroot.sh"
say() { printf '%s\n' "$*" >&2; }
die() { say "rabbitmq4.sh: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (chroot and mount need it)"

installed() {
  [ -x "$DIR/usr/lib/rabbitmq/bin/rabbitmq-server" ] &&
    chroot "$DIR" dpkg-query -W -f='${db:Status-Status}' rabbitmq-server 2>/dev/null | grep -qx installed
}

# Unmount, unless a process (another node from the same directory) still has its root in the chroot.
unmounts() {
  local pid
  if pid=$(chroot_user "$DIR"); then
    say "a process still runs in $DIR (pid $pid): /proc, /sys, /dev stay mounted"
    return 0
  fi
  chroot_unmount "$DIR"
}

# in_chroot CMD...: runs CMD in the chroot as its rabbitmq user, with the node's environment and nothing else.
# chroot_argv CMD...: the same command line, in the array ARGV.
chroot_argv() {
  local uid gid
  uid=$(awk -F: '$1=="rabbitmq"{print $3}' "$DIR/etc/passwd")
  gid=$(awk -F: '$1=="rabbitmq"{print $4}' "$DIR/etc/passwd")
  ARGV=(chroot --userspec="$uid:$gid" --groups="$gid" "$DIR" /usr/bin/env -i
    HOME=/var/lib/rabbitmq PATH=/usr/lib/rabbitmq/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 LANG=C.UTF-8
    RABBITMQ_NODENAME="$NODE" RABBITMQ_CONFIG_FILE="$CONF" RABBITMQ_DIST_PORT="$DIST_PORT"
    RABBITMQ_PID_FILE="$PIDFILE" ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    "$@")
}
in_chroot() { local ARGV; chroot_argv "$@"; "${ARGV[@]}"; }

ctl() { in_chroot /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODE" "$@"; }

install_chroot() {
  installed && return 0
  local t0=$SECONDS
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (from the machine's own suite)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
  fi
  if [ ! -x "$DIR/usr/bin/apt-get" ] || [ -d "$DIR/debootstrap" ]; then # absent, or a debootstrap cut short
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
      unmounts
      mountpoint -q "$DIR/proc" && die "$DIR: a partial chroot is still in use"
      say "removing the partial chroot $DIR"
      rm -rf --one-file-system "$DIR"
    fi
    mkdir -p "$DIR"
    [ -n "$MIRROR" ] || die "no Debian archive found in this machine's apt sources: set RMQ4_MIRROR"
    say "debootstrap --variant=minbase $SUITE $DIR $MIRROR"
    debootstrap --variant=minbase "$SUITE" "$DIR" "$MIRROR" >"$DIR.debootstrap.log" 2>&1 ||
      die "debootstrap failed, see $DIR.debootstrap.log"
  fi
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$DIR/etc/hosts"
  cp /etc/resolv.conf "$DIR/etc/resolv.conf" 2>/dev/null || true
  # No service may start from a maintainer script: its default node would take 5672 and 25672.
  printf '#!/bin/sh\nexit 101\n' >"$DIR/usr/sbin/policy-rc.d"
  chmod 755 "$DIR/usr/sbin/policy-rc.d"
  # The rabbitmq user before the package makes one with a uid that may be a host user's.
  if ! grep -q '^rabbitmq:' "$DIR/etc/group"; then chroot "$DIR" groupadd -r -g "$RUID" rabbitmq; fi
  if ! grep -q '^rabbitmq:' "$DIR/etc/passwd"; then
    chroot "$DIR" useradd -r -u "$RUID" -g rabbitmq -d /var/lib/rabbitmq -M -s /usr/sbin/nologin \
      -c "RabbitMQ messaging server" rabbitmq 2>/dev/null # (a warning: the uid is above SYS_UID_MAX)
  fi
  chroot_mount "$DIR"
  say "apt-get install rabbitmq-server in the chroot"
  chroot "$DIR" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends rabbitmq-server && apt-get clean' \
    >"$DIR.apt.log" 2>&1 || die "apt-get failed, see $DIR.apt.log"
  rm -rf "$DIR"/var/lib/apt/lists/* # 90 MB; `apt-get update` in the chroot brings them back
  installed || die "rabbitmq-server is not installed in $DIR"
  say "installed $(chroot "$DIR" dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server)," \
    "erlang $(chroot "$DIR" dpkg-query -W -f='${Version}' erlang-base) in $((SECONDS - t0)) s;" \
    "$(du -sxh "$DIR" | cut -f1) in $DIR"
}

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

node_pid() { # the Erlang VM's pid, if it runs
  local pid
  pid=$(cat "$DIR$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/root")" = "$(readlink -f "$DIR")" ] &&
    echo "$pid"
}

usage_lines() {
  local envs="RMQ4_DIR=$DIR RMQ4_NODE=$NODE RMQ4_PORT=$PORT RMQ4_DIST_PORT=$DIST_PORT RMQ4_EPMD_PORT=$EPMD_PORT"
  echo "AMQP_URI=amqp://guest:guest@127.0.0.1:$PORT/"
  echo "RABBITMQCTL='env $envs $SELF ctl'"
}

start() {
  install_chroot
  chroot_mount "$DIR"
  if node_pid >/dev/null && ctl -q await_startup >/dev/null 2>&1; then
    say "$NODE already runs (pid $(node_pid)) on 127.0.0.1:$PORT"
    usage_lines
    return 0
  fi
  if answers "$PORT"; then die "something else answers on 127.0.0.1:$PORT"; fi
  # Our own config file; the node's own data and log directories are the chroot's defaults, by node name.
  printf '%s\n' "# written by rabbitmq4.sh" "listeners.tcp.local = 127.0.0.1:$PORT" ${RMQ4_CONF:+"$RMQ4_CONF"} >"$DIR$CONF"
  chmod 644 "$DIR$CONF"
  local t0 pid
  t0=$(date +%s.%N)
  # rabbitmq-server stays in the foreground (a sh that turns SIGTERM into a clean stop, with the VM as its
  # child); setsid detaches it from this shell.
  local ARGV
  chroot_argv /usr/lib/rabbitmq/bin/rabbitmq-server
  setsid "${ARGV[@]}" >>"$DIR$STARTLOG" 2>&1 </dev/null &
  for _ in $(seq 1 240); do
    if node_pid >/dev/null && ctl -q await_startup --timeout 60 >/dev/null 2>&1; then break; fi
    [ -n "$(jobs -rp)" ] || die "the node exited; see $DIR$STARTLOG and $DIR/var/log/rabbitmq/$NODE.log"
    sleep 0.5
  done
  answers "$PORT" || die "the node does not answer on 127.0.0.1:$PORT; see $DIR/var/log/rabbitmq/$NODE.log"
  local took
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  pid=$(node_pid)
  say "$NODE (rabbitmq-server $(chroot "$DIR" dpkg-query -W -f='${Version}' rabbitmq-server), erlang" \
    "$(chroot "$DIR" dpkg-query -W -f='${Version}' erlang-base)) started in $took s, pid $pid, on 127.0.0.1:$PORT"
  usage_lines
}

stop() {
  [ -d "$DIR" ] || die "no chroot at $DIR"
  local pid
  if pid=$(node_pid); then
    say "stopping $NODE (pid $pid)"
    ctl -q shutdown >/dev/null 2>&1 || { kill -TERM "$pid" 2>/dev/null || true; }
    for _ in $(seq 1 60); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
    [ -d "/proc/$pid" ] && { say "still running: kill -KILL $pid"; kill -KILL "$pid" || true; }
  else
    say "$NODE does not run"
  fi
  # The epmd this node started: only one of ours (its root is the chroot), never the machine's.
  local ep
  for ep in $(ss -Hltnp "sport = :$EPMD_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    if [ "$(readlink "/proc/$ep/root")" = "$(readlink -f "$DIR")" ] &&
      [ "$(cat "/proc/$ep/comm" 2>/dev/null)" = epmd ]; then
      if in_chroot epmd -names 2>/dev/null | grep -q '^name '; then
        say "epmd on $EPMD_PORT (pid $ep) still has names: left running"
      else
        say "stopping epmd on $EPMD_PORT (pid $ep)"
        kill -TERM "$ep" || true
      fi
    fi
  done
  unmounts
}

case "${1:-start}" in
start) start ;;
install) install_chroot; node_pid >/dev/null || unmounts ;;
stop) stop ;;
status)
  if pid=$(node_pid); then say "$NODE runs, pid $pid"; usage_lines; else say "$NODE does not run"; exit 3; fi ;;
ctl | diag | queues | plugins) # exec: a caller's timeout that kills this process kills the command
  tool=$(case $1 in ctl) echo rabbitmqctl ;; diag) echo rabbitmq-diagnostics ;; *) echo "rabbitmq-$1" ;; esac)
  shift
  chroot_argv "/usr/lib/rabbitmq/bin/$tool" -n "$NODE" "$@"
  exec "${ARGV[@]}" ;;
*) die "usage: $0 [start|stop|status|install|ctl ARGS|diag ARGS|queues ARGS|plugins ARGS]" ;;
esac
