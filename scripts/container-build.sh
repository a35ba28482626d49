#!/usr/bin/env bash
# Builds the image deep-sched/nginx:latest from the host-built outputs in
# build/ (scripts/build.sh) on the local base image deep-sched/base:bookworm
# (scripts/container-base.sh, built once). Nothing is pulled.
#   scripts/container-build.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-deep-sched/nginx:latest}

missing=()
for f in build/sbin/nginx build/modules/ngx_http_deep_sched_module.so \
         build/bin/deep-sched-backend build/bin/deep-sched-load; do
    [[ -e $f ]] || missing+=("$f")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "container-build.sh: missing ${missing[*]}: run scripts/build.sh first" >&2
    exit 1
fi
scripts/container-base.sh >/dev/null
docker build -q --rm --force-rm --build-arg BASE=deep-sched/base:bookworm -t "$tag" . >/dev/null
echo "container-build.sh: $tag"
