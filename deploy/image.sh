#!/bin/sh
# Builds the bpfnfs image from deploy/Dockerfile (make image; run from the repository's root).
#
#   deploy/image.sh [--local-base] [--rootfs DIR] [TAG]        TAG defaults to bpfnfs:<version>
#
# The engine: docker when a daemon answers, else buildah (daemonless, as root: vfs storage, chroot
# isolation, so it also runs inside a container or a CI job). --local-base makes the two Debian base
# images the Dockerfile names (debian:bookworm, debian:bookworm-slim) with debootstrap from the Debian
# mirror, for machines that reach package registries but no container registry (buildah only).
# --rootfs DIR writes the built image's root filesystem to DIR (lab.check_pods --image-rootfs runs
# it as the DaemonSet does, make image-check). Behind a TLS-intercepting proxy whose CA the host
# trusts through PIP_CERT, buildah's RUN steps get that CA for pip (bind-mounted, not in the image).
set -eu

local_base=0
rootfs=""
tag=""
while [ $# -gt 0 ]; do
    case $1 in
        --local-base) local_base=1 ;;
        --rootfs) rootfs=$2; shift ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "deploy/image.sh: unknown option $1" >&2; exit 2 ;;
        *) tag=$1 ;;
    esac
    shift
done
[ -f deploy/Dockerfile ] || { echo "deploy/image.sh: run it from the repository's root" >&2; exit 2; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
tag=${tag:-bpfnfs:$version}

if docker info >/dev/null 2>&1; then
    [ "$local_base" = 0 ] || { echo "deploy/image.sh: --local-base is for buildah" >&2; exit 2; }
    docker build -f deploy/Dockerfile -t "$tag" .
    if [ -n "$rootfs" ]; then
        rm -rf "$rootfs" && mkdir -p "$rootfs"
        c=$(docker create "$tag")
        docker export "$c" | tar -C "$rootfs" -x
        docker rm "$c" >/dev/null
    fi
    exit 0
fi

command -v buildah >/dev/null || { echo "deploy/image.sh: neither a docker daemon nor buildah here" >&2; exit 2; }
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

if [ "$local_base" = 1 ]; then
    if ! buildah inspect --type image docker.io/library/debian:bookworm >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || { echo "deploy/image.sh: --local-base needs debootstrap" >&2; exit 2; }
        base=$(mktemp -d /tmp/bpfnfs-base.XXXXXX)
        debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian
        rm -rf "$base"/var/cache/apt/archives/*.deb "$base"/var/lib/apt/lists/*
        c=$(buildah from scratch)
        buildah copy "$c" "$base" / >/dev/null
        buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$c"
        buildah commit -q "$c" docker.io/library/debian:bookworm >/dev/null
        buildah rm "$c" >/dev/null
        rm -rf "$base"
    fi
    buildah tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
    pull=--pull-never
else
    pull=--pull
fi

set -- bud "$pull" --layers=false -f deploy/Dockerfile -t "$tag"
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    conf=$(mktemp /tmp/bpfnfs-pip.XXXXXX)
    printf '[global]\ncert = /opt/host-ca.crt\n' >"$conf"
    set -- "$@" -v "$conf:/etc/pip.conf:ro" -v "$PIP_CERT:/opt/host-ca.crt:ro"
fi
buildah "$@" .

if [ -n "$rootfs" ]; then
    c=$(buildah from --pull-never "$tag")
    m=$(buildah mount "$c")
    rm -rf "$rootfs" && mkdir -p "$rootfs"
    cp -a "$m/." "$rootfs/"
    buildah umount "$c" >/dev/null
    buildah rm "$c" >/dev/null
fi
