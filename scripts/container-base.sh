#!/usr/bin/env bash
# Builds the local base image deep-sched/base:bookworm: a minimal Debian
# bookworm root filesystem (debootstrap --variant=minbase) with the runtime
# libraries nginx and the module need, imported with `docker import`.
# No registry is involved: the packages come from the Debian mirror this
# machine's apt already uses.
#
#   scripts/container-base.sh            build it unless it exists
#   scripts/container-base.sh --force    rebuild it
#
# Needs root (debootstrap), debootstrap and a reachable Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

image=deep-sched/base:bookworm
force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ $force == 0 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "container-base.sh: $image exists"
    exit 0
fi

# The mirror apt is configured with: the first URI of a deb822 source whose
# suites include "bookworm", else the first "deb URI bookworm" line.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] || continue
    mirror=$(awk '
        /^[[:space:]]*$/ { if (uri != "" && suites ~ /(^| )bookworm( |$)/) { print uri; exit } uri=""; suites=""; next }
        /^URIs:/   { uri=$2 }
        /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites=$0 }
        END { if (uri != "" && suites ~ /(^| )bookworm( |$)/) print uri }' "$f" | sed -n 1p)
    [[ -n "$mirror" ]] && break
done
if [[ -z "$mirror" ]]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' |
        sed -n 1p)
fi
if [[ -z "$mirror" ]]; then
    echo "container-base.sh: no bookworm mirror found in /etc/apt/sources.list{,.d/}" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "container-base.sh: debootstrap missing (scripts/deps.sh installs it)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/deep-sched-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "container-base.sh: debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
    --include=libpcre2-8-0,libssl3,zlib1g,ca-certificates,curl \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# Keep the image small: no apt lists, caches, docs or man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
# Resolver and hosts files are bind-mounted by Docker at run time.
: >"$rootfs/etc/resolv.conf"

tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase bookworm from $mirror" \
    - "$image" >/dev/null
docker image ls "$image"
