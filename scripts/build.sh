#!/usr/bin/env bash
# Builds an nginx prefix in build/:
#   build/sbin/nginx                                  nginx 1.28 (vendored source)
#   build/modules/ngx_http_deep_sched_module.so       the module
#   build/bin/{deep-sched,deep-sched-backend,deep-sched-load}
#
# Other nginx builds:
#   NGINX_SOURCE_DIR=/path/to/configured/nginx-src scripts/build.sh
#   NGINX_BUILD_DIR=/path/to/objs                  scripts/build.sh
#       build the module against that nginx (it must be configured with
#       --with-compat or the same flags as the nginx that will load it);
#       build/sbin/nginx is then that tree's objs/nginx when present.
#   scripts/build.sh --system
#       build against Debian's packaged nginx (see scripts/build-system.sh).
#
# Options: --module-only (skip the CLI tools), --debug (dev profile).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--system" ]]; then
    shift
    exec scripts/build-system.sh "$@"
fi

module_only=0
profile=release
for arg in "$@"; do
    case "$arg" in
        --module-only) module_only=1 ;;
        --debug) profile=debug ;;
        *) echo "build.sh: unknown option '$arg' (expected --system, --module-only, --debug)" >&2; exit 2 ;;
    esac
done
cargo_profile=()
[[ $profile == release ]] && cargo_profile=(--release)

if [[ -n "${NGINX_SOURCE_DIR:-}" || -n "${NGINX_BUILD_DIR:-}" ]]; then
    target_dir=target/external
    cargo build "${cargo_profile[@]}" -p ngx-http-deep-sched-module \
        --no-default-features --features export-modules --target-dir "$target_dir"
    nginx_bin="${NGINX_BUILD_DIR:-${NGINX_SOURCE_DIR:-}/objs}/nginx"
else
    target_dir=target
    cargo build "${cargo_profile[@]}" -p ngx-http-deep-sched-module
    # nginx-sys builds nginx under its OUT_DIR; take the newest one.
    nginx_bin=$(ls -t "$target_dir/$profile"/build/nginx-sys-*/out/objs/nginx 2>/dev/null | sed -n 1p)
fi
so="$target_dir/$profile/libngx_http_deep_sched_module.so"

mkdir -p build/sbin build/modules build/conf build/logs build/bin
install -m 0644 "$so" build/modules/ngx_http_deep_sched_module.so
if [[ -n "$nginx_bin" && -x "$nginx_bin" ]]; then
    install -m 0755 "$nginx_bin" build/sbin/nginx
else
    echo "build.sh: no nginx binary found (module only, in build/modules)" >&2
fi
cp -r nginx-conf/. build/conf/
mkdir -p build/conf/policies
cp -r policies/. build/conf/policies/

if [[ $module_only == 0 ]]; then
    cargo build "${cargo_profile[@]}" -p deep-sched-learn -p deep-sched-lab --bins
    for bin in deep-sched deep-sched-backend deep-sched-load deep-sched-lab; do
        if [[ -x "target/$profile/$bin" ]]; then
            install -m 0755 "target/$profile/$bin" build/bin/
        fi
    done
fi

echo "build.sh: nginx prefix ready in build/"
[[ -x build/sbin/nginx ]] && build/sbin/nginx -v 2>&1
ls -1 build/modules build/bin
