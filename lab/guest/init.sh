#!/bin/sh
# Stage 2: PID 1 inside the overlaid host root (started by stage1.sh as "init.sh OUT_DIR").
# Mounts the kernel API filesystems, optionally brings up NFS, runs OUT_DIR/cmd.sh (written by
# lab/vm.py) with its output on ttyS1, records the exit status in OUT_DIR/rc and powers off.
# Lines starting with "lab-event:" on the console are timing markers read by the host.
out=$1
here=${0%/*}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

event() { echo "lab-event: $*"; }

power_off() {
    sync
    mkfifo /run/lab-hold 2>/dev/null
    # Without /proc there is no sysrq: exiting PID 1 then ends the VM through panic=-1.
    echo o >/proc/sysrq-trigger || exit 1
    # Builtins only from here: the 9p root goes away during power-off, so an exec would fail,
    # PID 1 would exit and the kernel would panic. Opening a FIFO without a writer blocks for good.
    while :; do : </run/lab-hold; done 2>/dev/null
}

die() {
    echo "lab-init: FAILED: $*"
    # The host reports this message; no rc file means the command never ran.
    echo "$*" >"$out/setup-error"
    power_off
}

must() {
    what=$1
    shift
    "$@" || die "$what"
}

event stage2
must "mount /proc" mount -t proc -o nosuid,nodev,noexec proc /proc
must "mount /sys" mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
must "mount /run" mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/lock /dev/pts /dev/shm
must "mount /dev/pts" mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
must "mount /dev/shm" mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
must "mount tracefs" mount -t tracefs tracefs /sys/kernel/tracing
must "mount debugfs" mount -t debugfs debugfs /sys/kernel/debug
must "mount bpffs" mount -t bpf -o mode=0700 bpf /sys/fs/bpf
cgroup=v2
for arg in $(cat /proc/cmdline); do
    case $arg in lab.cgroup=*) cgroup=${arg#lab.cgroup=} ;; esac
done
if [ "$cgroup" = v1 ]; then
    # A cgroup v1-only host as systemd's legacy layout makes one (no cgroup2 anywhere): a
    # tmpfs, a named systemd hierarchy and one hierarchy per controller, cpu,cpuacct and
    # net_cls,net_prio co-mounted.
    must "mount cgroup tmpfs" mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup /sys/fs/cgroup
    mkdir /sys/fs/cgroup/systemd
    must "mount cgroup name=systemd" mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    for c in $(awk '!/^#/ && $4 == 1 { print $1 }' /proc/cgroups); do
        case $c in
            cpu | cpuacct) c=cpu,cpuacct ;;
            net_cls | net_prio) c=net_cls,net_prio ;;
        esac
        [ -d "/sys/fs/cgroup/$c" ] && continue
        mkdir "/sys/fs/cgroup/$c"
        must "mount cgroup $c" mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
    done
else
    must "mount cgroup2" mount -t cgroup2 cgroup2 /sys/fs/cgroup
fi
ulimit -l unlimited || die "ulimit -l unlimited"
hostname bpfnfs-lab
must "loopback up" ip link set lo up

nfs=full rows=24 cols=80
for arg in $(cat /proc/cmdline); do
    case $arg in
        lab.nfs=*) nfs=${arg#lab.nfs=} ;;
        lab.rows=*) rows=${arg#lab.rows=} ;;
        lab.cols=*) cols=${arg#lab.cols=} ;;
    esac
done

if [ "$nfs" != none ]; then
    sh "$here/nfs-up.sh" "$nfs" || die "NFS setup ($nfs) failed, see nfs-up messages above"
    event nfs-ready
fi

# The command gets its own serial port so the host can show its output apart from kernel messages.
tty=/dev/ttyS1
if [ -c "$tty" ]; then
    # -opost: pass "\n" through untranslated; the size is what full-screen programs ask for.
    stty -F "$tty" -opost -echo rows "$rows" cols "$cols" 2>/dev/null
else
    tty=/dev/console
fi

event command-start
sh "$out/cmd.sh" </dev/null >"$tty" 2>&1
rc=$?
echo "$rc" >"$out/rc"
event "command-end rc=$rc"
power_off
