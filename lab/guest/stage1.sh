#!/bin/busybox sh
# Stage 1: /init of the lab initramfs (busybox only).
# Loads the 9p/overlay modules, mounts the host root read-only over 9p under a tmpfs overlay,
# adds the kernel's modules and the result share, then hands over to stage 2 (lab/guest/init.sh).
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "lab-stage1: FAILED: $*"
    # Power off instead of exiting: a dying PID 1 panics and hides the message in a stack dump.
    echo o 2>/dev/null >/proc/sysrq-trigger || exit 1
    while :; do sleep 1; done
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"

init= out=
for arg in $(cat /proc/cmdline); do
    case $arg in
        lab.init=*) init=${arg#lab.init=} ;;
        lab.out=*) out=${arg#lab.out=} ;;
    esac
done
[ -n "$init" ] && [ -n "$out" ] || fail "lab.init= or lab.out= missing on the kernel command line"

# Dependency order was resolved on the host (modprobe --show-depends).
while read -r mod; do
    insmod "/modules/$mod" || fail "insmod $mod"
done </modules/order

p9="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /lower /rw /newroot
# cache=loose: the shared root does not change under a running guest, and lookups are much faster.
mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || fail "mount host root (9p)"
mount -t tmpfs -o mode=0755 rw /rw || fail "mount tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "mount overlay root"

kver=$(uname -r)
mkdir -p "/newroot/lib/modules/$kver" || fail "mkdir /lib/modules/$kver"
mount -t 9p -o "$p9,ro" labmods "/newroot/lib/modules/$kver" || fail "mount kernel modules (9p)"
mkdir -p "/newroot$out" || fail "mkdir $out"
# No cache here: the host reads these files (rc, artifacts) as soon as the guest is gone.
mount -t 9p -o "$p9" labout "/newroot$out" || fail "mount result share (9p)"

mount -o move /dev /newroot/dev || fail "move /dev"
umount /sys
umount /proc
exec switch_root /newroot /bin/sh "$init" "$out"
