#!/usr/bin/env bash
# Build a Debian bookworm base image (python3 + venv + CA certificates) with debootstrap and
# `docker import` it, for machines without access to an image registry. The root filesystem
# tarball is cached, so later imports take seconds.
#
#   docker/base-image.sh [TAG] [EXTRA_PACKAGES]
#       TAG defaults to edgebed/base:bookworm; EXTRA_PACKAGES is a comma list added to the
#       default set (e.g. "prometheus" for edgebed/prometheus:bookworm).
#
# Environment: EDGEBED_CACHE_DIR (default .edgebed/cache under the repository, gitignored),
# DEBIAN_MIRROR (default: the first Debian archive in this host's apt sources), DOCKER_HOST (the
# engine to import into).
# Needs root and debootstrap (apt-get install debootstrap).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-edgebed/base:bookworm}"
extra="${2:-}"
suite=bookworm
host_mirror() {  # the first ".../debian" archive URI this host's apt already uses
    local f uris=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        uris+="$(grep -v '^[[:space:]]*#' "$f" | grep -oE '(https?|file)://[^ ]*/debian/?( |$)' || true)"$'\n'
    done
    awk 'NF { sub(/[ \/]+$/, ""); print; exit }' <<<"$uris"
}
mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
if [[ -z "$mirror" ]]; then
    echo "base-image.sh: no Debian archive in this host's apt sources; set DEBIAN_MIRROR" >&2
    exit 2
fi
cache="${EDGEBED_CACHE_DIR:-$repo_root/.edgebed/cache}"
packages="python3,python3-venv,python3-pip,ca-certificates${extra:+,$extra}"
# Bump recipe when the way the root filesystem is made changes: the cached tarball is rebuilt.
recipe=2
key="$(printf '%s' "$recipe $suite $mirror $packages" | sha256sum | cut -c1-12)"
tarball="$cache/rootfs-$suite-$key.tar"

if [[ $(id -u) -ne 0 ]]; then
    echo "base-image.sh: debootstrap needs root" >&2
    exit 2
fi
mkdir -p "$cache"

if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { echo "base-image.sh: apt-get install debootstrap" >&2; exit 2; }
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    echo "base-image.sh: debootstrap $suite ($packages) into $rootfs" >&2
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
    # Point apt at the same suites as a stock Debian image, then trim what a container never uses
    # (keep Python's byte code: without it every start of python3 recompiles the stdlib).
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" \
        >"$rootfs/etc/apt/sources.list"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
        "$rootfs"/tmp/* "$rootfs"/root/.cache
    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    find "$cache" -maxdepth 1 -name "rootfs-$suite-*.tar" ! -name "$(basename "$tarball")" -delete
    rm -rf "$rootfs"
    trap - EXIT
fi

# Import only when the tag does not already hold this tarball: a re-import makes a new image ID,
# which would invalidate every build cache layer on top of it.
if docker image inspect --format '{{json .Config.Env}}' "$tag" 2>/dev/null \
        | grep -q "\"EDGEBED_ROOTFS=$key\""; then
    echo "$tag"
    exit 0
fi
docker import \
    --change "ENV EDGEBED_ROOTFS=$key" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$tarball" "$tag" >/dev/null
echo "$tag"
