#!/bin/sh
# NFS over loopback inside a lab guest: kernel nfsd exporting a tmpfs at /srv/nfs, mounted with
# NFSv3 at /mnt/nfs3 and NFSv4.2 at /mnt/nfs4.
#
# Usage: nfs-up.sh [full|server|mount]    (default: full)
#   full    server + both mounts
#   server  server only; a test mounts by itself later
#   mount   both mounts only (the server is already up)
# lab/guest/init.sh runs it (full or server) before the command unless the VM runs with nfs=none.
# LAB_NFS in the command's environment is deliberately ignored here, so a test started with
# --nfs none can call "sh lab/guest/nfs-up.sh" later (e.g. to load the modules after its agent).
# Exits non-zero with "nfs-up: FAILED: <step>" on the first failing step.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mode=${1:-full}

fail() {
    echo "nfs-up: FAILED: $*" >&2
    exit 1
}

run() {
    what=$1
    shift
    "$@" || fail "$what: $*"
}

server() {
    # nfsv4 covers 4.0-4.2; nfsd and the client modules are needed by both versions.
    run "load modules" modprobe -a nfsd nfs nfsv3 nfsv4
    run "mount nfsd filesystem" mount -t nfsd nfsd /proc/fs/nfsd
    mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/v4recovery /run/rpcbind /srv/nfs \
        || fail "create state directories"
    if ! grep -q " /var/lib/nfs/rpc_pipefs " /proc/self/mounts; then
        run "mount rpc_pipefs" mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs
    fi
    # The root is an overlay, which nfsd cannot export: export a fresh tmpfs. fsid=0 makes it the
    # NFSv4 pseudo-root, otherwise v4 mounts fail (mountd would build the pseudo-root from /).
    run "mount export tmpfs" mount -t tmpfs -o mode=0777 nfsexport /srv/nfs
    echo "/srv/nfs 127.0.0.1(rw,no_root_squash,no_subtree_check,insecure,fsid=0)" >/etc/exports \
        || fail "write /etc/exports"
    # rpcbind: rpc.nfsd registers with it and mount.nfs asks it for mountd's port (v3).
    run "start rpcbind" rpcbind -w
    run "exportfs" exportfs -ra
    # mountd answers the kernel's export cache upcalls, for v3 and v4 alike.
    run "start rpc.mountd" rpc.mountd
    # Writable only before nfsd starts; 10 s is the minimum and keeps OPENs out of a long grace.
    echo 10 >/proc/fs/nfsd/nfsv4gracetime || fail "set nfsv4gracetime"
    echo 10 >/proc/fs/nfsd/nfsv4leasetime || fail "set nfsv4leasetime"
    run "start nfsd" rpc.nfsd 4
    echo "nfs-up: server ready"
}

mounts() {
    mkdir -p /mnt/nfs3 /mnt/nfs4 || fail "create mount points"
    # nolock: NLM would need rpc.statd, which mount.nfs tries to start through systemctl.
    run "mount NFSv3" mount -t nfs -o vers=3,nolock 127.0.0.1:/srv/nfs /mnt/nfs3
    run "mount NFSv4.2" mount -t nfs -o vers=4.2 127.0.0.1:/ /mnt/nfs4
    echo "nfs-up: mounted /mnt/nfs3 (v3) and /mnt/nfs4 (v4.2)"
}

case $mode in
    full) server && mounts ;;
    server) server ;;
    mount) mounts ;;
    *) fail "unknown mode '$mode' (use full, server or mount)" ;;
esac
