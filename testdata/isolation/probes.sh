#!/bin/sh
# Red-team probes, run as root inside a container (busybox sh) started with the host's / bound
# read-only at /host:
#
#   kiln run --rm -v /:/host:ro -v DIR:/probes:ro IMAGE sh /probes/probes.sh [GROUP...]
#   docker run --rm --network=none -v /:/host:ro -v DIR:/probes:ro busybox sh /probes/probes.sh
#
# Each probe prints one line: `NAME VERDICT [DETAIL]`. VERDICT is `ok` (the attempt worked),
# `denied` (EPERM, EACCES or EROFS: the kernel refused it), another errno name (ENXIO, ENOENT,
# ...), or a value (the capability sets). DETAIL is the exact errno; tests compare NAME and
# VERDICT only, because two correct sandboxes may refuse the same thing with different errnos
# (a nodev mount says EACCES, the device cgroup EPERM).
#
# Nothing is written on the host when a probe is refused; when one succeeds, what it made is
# removed again and no existing file's content is changed (writability of /proc/sys files is
# tested by opening them for appending, without writing).
#
# Groups: caps proc sys mount dev robind seccomp (default: all but seccomp). To add a probe, add
# a line to its group's function, then record Docker's answers again with record-docker.sh.

errno_of() {
    case "$1" in
        *"Operation not permitted"*) echo EPERM ;;
        *"Permission denied"*) echo EACCES ;;
        *"Read-only file system"*) echo EROFS ;;
        *"No such device or address"*) echo ENXIO ;;
        *"No such device"*) echo ENODEV ;;
        *"No such file or directory"* | *"nonexistent directory"*) echo ENOENT ;;
        *"are you root"*) echo EPERM ;; # busybox mount's words for EPERM and EACCES
        *"File exists"*) echo EEXIST ;;
        *"Invalid argument"*) echo EINVAL ;;
        *"Function not implemented"*) echo ENOSYS ;;
        *"Device or resource busy"*) echo EBUSY ;;
        *) echo "EOTHER($(echo "$1" | tr ' ' '_' | head -c 60))" ;;
    esac
}

# report NAME: runs the rest of the arguments as a command, prints the verdict.
report() {
    local probe=$1 err e
    shift
    if err=$("$@" 2>&1 >/dev/null); then
        echo "$probe ok"
    else
        e=$(errno_of "$err")
        case "$e" in
            EPERM | EACCES | EROFS) echo "$probe denied $e" ;;
            *) echo "$probe $e $e" ;;
        esac
    fi
}

# The shell's own messages name the errno; busybox's `exec 3<` prints e.g.
# "sh: can't open '/x': Permission denied".
open_read() { sh -c 'exec 3<"$1"' sh "$1"; }
open_write() { sh -c 'exec 3>>"$1"' sh "$1"; }
create_file() { sh -c 'exec 3>"$1" && rm -f "$1"' sh "$1"; }
make_dir() { mkdir "$1" && rmdir "$1"; }

group_caps() {
    for set in CapInh CapPrm CapEff CapBnd CapAmb; do
        echo "caps-$set $(grep "^$set:" /proc/self/status | tr -d '\t' | cut -d: -f2)"
    done
}

group_proc() {
    report proc-sys-kernel-core_pattern open_write /proc/sys/kernel/core_pattern
    report proc-sys-vm-drop_caches open_write /proc/sys/vm/drop_caches
    report proc-sys-kernel-hostname open_write /proc/sys/kernel/hostname
    report proc-sys-create create_file /proc/sys/kiln-probe-$tag
}

group_sys() {
    report sys-class-net-lo-mtu open_write /sys/class/net/lo/mtu
    report sys-kernel-uevent_helper open_write /sys/kernel/uevent_helper
    report sys-create-file create_file /sys/kiln-probe-$tag
}

group_mount() {
    mkdir -p /tmp/probe-mnt
    report mount-tmpfs mount -t tmpfs none /tmp/probe-mnt
    report mount-bind mount --bind /tmp /tmp/probe-mnt
    report mount-remount-host-rw mount -o remount,rw /host
    report mount-remount-proc-sys-rw mount -o remount,rw /proc/sys
    umount /tmp/probe-mnt 2>/dev/null
    rmdir /tmp/probe-mnt
}

# mknod then open, once on the root filesystem and once in /dev.
device() {
    local name=$1 type=$2 major=$3 minor=$4 open=$5 where node
    for where in rootfs dev; do
        if [ $where = rootfs ]; then node=/tmp/probe-$name; else node=/dev/probe-$name; fi
        rm -f "$node"
        report dev-$name-$where-mknod mknod "$node" "$type" "$major" "$minor"
        if [ -e "$node" ]; then
            report dev-$name-$where-open $open "$node"
            rm -f "$node"
        fi
    done
}

group_dev() {
    device kvm c 10 232 open_read
    device loop-control c 10 237 open_read
    device loop0 b 7 0 open_read
    device fuse c 10 229 open_read
    device tty1 c 4 1 open_read
    device hwrng c 10 183 open_read
    device kmsg c 1 11 open_write
    # The default devices stay usable.
    for d in null zero full random urandom; do
        report dev-default-$d open_read /dev/$d
    done
    report dev-default-null-write open_write /dev/null
    report dev-default-ptmx open_read /dev/ptmx
    report dev-default-tty open_read /dev/tty
    report dev-shm-create create_file /dev/shm/probe-$tag
}

group_robind() {
    report robind-top create_file /host/kiln-probe-$tag
    report robind-tmp create_file /host/tmp/kiln-probe-$tag
    report robind-proc-sys-kernel-core_pattern open_write /host/proc/sys/kernel/core_pattern
    report robind-proc-sys-vm-drop_caches open_write /host/proc/sys/vm/drop_caches
    report robind-dev-pts-ptmx open_read /host/dev/pts/ptmx
    report robind-dev-create create_file /host/dev/kiln-probe-$tag
    report robind-dev-shm-create create_file /host/dev/shm/kiln-probe-$tag
    report robind-dev-null-write open_write /host/dev/null
    report robind-sys-fs-cgroup-mkdir make_dir /host/sys/fs/cgroup/pids/kiln-probe-$tag
    report robind-sys-class-net-lo-mtu open_write /host/sys/class/net/lo/mtu
}

# Needs seccomp (issue 11); `unshare` is busybox's, the rest need a probe binary at /probes/bin.
group_seccomp() {
    report seccomp-unshare-user unshare -U true
    report seccomp-unshare-user-mount unshare -Urm true
    if [ -x /probes/bin/syscall-probe ]; then
        for p in add_key keyctl io_uring_setup; do
            report seccomp-$p /probes/bin/syscall-probe $p
        done
    fi
}

groups=${*:-caps proc sys mount dev robind}
# Names of what a probe makes on the host, unique per run ($$ is the same in every container).
tag=$$-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
for g in $groups; do
    group_$g
done
