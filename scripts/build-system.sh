#!/usr/bin/env bash
# Builds the module against Debian's packaged nginx (1.22 on bookworm) into
#   build/system/ngx_http_deep_sched_module.so
# so that `/usr/sbin/nginx` can `load_module` it.
#
# Needs the packages nginx and nginx-dev (scripts/deps.sh installs them):
# nginx-dev ships the configured-ready source in /usr/share/nginx/src and the
# exact configure flags of the package in its conf_flags file. The module's
# binary signature must match the nginx that loads it, so we configure a copy
# of that source with those flags (they include --with-compat) and let
# nginx-sys generate bindings from it. Called by `scripts/build.sh --system`.
set -euo pipefail
cd "$(dirname "$0")/.."

src=/usr/share/nginx/src
if [[ ! -f "$src/conf_flags" || ! -x "$src/configure" ]]; then
    echo "build-system.sh: $src/conf_flags missing: install nginx-dev (scripts/deps.sh)" >&2
    exit 1
fi

work=target/system/nginx-src
# Reconfigure only when the package changed: a fresh copy would make
# nginx-sys regenerate its bindings and cargo rebuild the module every time.
stamp=$(cat "$src/conf_flags" "$src/src/core/nginx.h" | sha256sum | cut -d' ' -f1)
if [[ ! -f $work/objs/ngx_auto_config.h || "$(cat "$work/.deep_sched_stamp" 2>/dev/null)" != "$stamp" ]]; then
    rm -rf "$work"
    mkdir -p "$work"
    cp -a "$src/." "$work/"
    # conf_flags defines the bash array NGX_CONF_FLAGS.
    # shellcheck disable=SC1091
    source "$src/conf_flags"
    (
        cd "$work"
        ./configure "${NGX_CONF_FLAGS[@]}" >configure.log 2>&1 || { tail -n 30 configure.log >&2; exit 1; }
    )
    echo "$stamp" >"$work/.deep_sched_stamp"
fi
version=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$work/src/core/nginx.h")
echo "build-system.sh: configured nginx $version source in $work"

NGINX_SOURCE_DIR="$(pwd)/$work" cargo build --release --no-default-features --features export-modules \
    -p ngx-http-deep-sched-module --target-dir target/system

mkdir -p build/system
install -m 0644 target/system/release/libngx_http_deep_sched_module.so build/system/ngx_http_deep_sched_module.so
echo "build-system.sh: build/system/ngx_http_deep_sched_module.so (for nginx $version)"
if [[ -x /usr/sbin/nginx ]]; then
    /usr/sbin/nginx -v 2>&1
fi
