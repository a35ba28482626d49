#!/usr/bin/env bash
# Builds an nginx >= 1.31 (open-source `least_time`) from a source tree YOU
# provide, and the deep_sched module for it, for scripts/lab-heldout.sh.
# Downloads nothing: fetch and verify the source yourself, e.g.
#   curl -LO https://nginx.org/download/nginx-1.31.4.tar.gz   (and its .asc)
#   tar xzf nginx-1.31.4.tar.gz
#
#   scripts/build-nginx-least-time.sh SRC [CONFIGURE_ARGS...]
#
# SRC is the unpacked source (it has ./auto/configure). Unless SRC/objs/Makefile
# already exists (then it is reused; RECONFIGURE=1 forces configure), runs
#   ./auto/configure --with-compat --prefix=SRC/prefix CONFIGURE_ARGS...
# then make; checks that SRC/objs/nginx is >= 1.31; builds the module
# against that tree into target/external/release/libngx_http_deep_sched_module.so
# (what `NGINX_SOURCE_DIR=SRC scripts/build.sh` builds, without replacing
# build/sbin/nginx). Then:
#   LEAST_TIME_NGINX=SRC/objs/nginx scripts/lab-heldout.sh
# Needs: a C compiler, make, the PCRE2, zlib (and, for CONFIGURE_ARGS
# such as --with-http_ssl_module, OpenSSL) development headers, cargo, clang
# (libclang for nginx-sys' bindgen).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n '2,22p' "$0" >&2; exit 2; }
src=$(cd "$1" && pwd) || { echo "build-nginx-least-time.sh: $1: no such directory" >&2; exit 1; }
shift
[[ -x $src/auto/configure || -x $src/configure ]] || {
    echo "build-nginx-least-time.sh: $src has no auto/configure: not an nginx source tree" >&2; exit 1; }

if [[ ! -f $src/objs/Makefile || "${RECONFIGURE:-0}" == 1 ]]; then
    conf=./auto/configure
    [[ -x $src/auto/configure ]] || conf=./configure
    (cd "$src" && $conf --with-compat --prefix="$src/prefix" "$@")
else
    echo "build-nginx-least-time.sh: $src is configured already (RECONFIGURE=1 to redo)" >&2
    grep -q -- '--with-compat' "$src/objs/ngx_auto_config.h" || {
        echo "build-nginx-least-time.sh: $src was configured without --with-compat: RECONFIGURE=1" >&2; exit 1; }
fi
make -C "$src" -j"$(nproc)"

nginx=$src/objs/nginx
version=$("$nginx" -v 2>&1 | sed -n 's#.*nginx/\([0-9.]*\).*#\1#p')
major=${version%%.*} rest=${version#*.} minor=${rest%%.*}
if [[ -z $version ]] || (( major < 1 || (major == 1 && minor < 31) )); then
    echo "build-nginx-least-time.sh: $nginx is nginx ${version:-?}: least_time needs 1.31 or later" >&2
    exit 1
fi

NGINX_SOURCE_DIR=$src cargo build --release -p ngx-http-deep-sched-module \
    --no-default-features --features export-modules --target-dir target/external
so=target/external/release/libngx_http_deep_sched_module.so
# the module loads into this nginx (nginx -t with load_module)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/logs"
printf 'load_module %s;\nerror_log %s/error.log;\npid %s/nginx.pid;\nevents {}\nhttp { upstream u { zone u 64k; server 127.0.0.1:9; least_time header; } upstream d { server 127.0.0.1:9; deep_sched choose=p2c; } }\n' \
    "$PWD/$so" "$tmp" "$tmp" > "$tmp/nginx.conf"
"$nginx" -t -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log"
echo "nginx $version with least_time: $nginx"
echo "module built for it:            $so"
echo "run:  LEAST_TIME_NGINX=$nginx scripts/lab-heldout.sh"
