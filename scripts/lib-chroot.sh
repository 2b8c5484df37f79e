# Sourced by scripts/rabbitmq4.sh, cluster.sh and partition.sh, whose
# RabbitMQ nodes can run in a chroot (RabbitMQ 4 from Debian trixie): the
# chroot's /proc, /sys and /dev, mounted for the nodes, and unmounted once
# nothing runs there any more. Several of them may use one chroot at once
# (the test suite's 4.0 node, a 4.0 cluster, a 4.0 partition cluster), so
# none unmounts while another's process has its root there.

# chroot_mount DIR: mounts /proc, /sys and /dev in DIR, each unless mounted.
chroot_mount() {
  mountpoint -q "$1/proc" || mount -t proc proc "$1/proc"
  mountpoint -q "$1/sys" || mount -t sysfs sysfs "$1/sys"
  mountpoint -q "$1/dev" || mount --bind /dev "$1/dev"
}

# chroot_user DIR: prints the pid of a process whose root is DIR, and fails
# when there is none.
chroot_user() {
  local real p
  real=$(readlink -f "$1")
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/root" 2>/dev/null)" = "$real" ]; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}

# chroot_unmount DIR: unmounts what chroot_mount mounted (lazily where a
# plain umount fails); it fails when a lazy one fails too. Callers check
# chroot_user first.
chroot_unmount() {
  local m
  for m in dev sys proc; do
    if mountpoint -q "$1/$m"; then umount "$1/$m" 2>/dev/null || umount -l "$1/$m" || return 1; fi
  done
}
