#!/usr/bin/env bash
# Request-rate overhead of deep_sched against nginx's round robin.
#
# One nginx serves three trivial backends (return 200 on 127.0.0.1:18081-3,
# the peers of policies/examples/three-peers.json) and proxies to them
# through an upstream that is either plain round robin or
# `deep_sched three-peers.json interval=1s`. wrk drives each variant in
# turn, interleaved, ROUNDS times; the medians and their ratio go to
# BENCHMARKS.md (section "module overhead").
#
#   scripts/bench-overhead.sh [ROUNDS=7] [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
secs=${2:-8}
scripts/deps.sh
[[ -x build/sbin/nginx && -f build/modules/ngx_http_deep_sched_module.so ]] || scripts/build.sh --module-only

work=$(mktemp -d)
pid=""
cleanup() {
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/logs"
cp policies/examples/three-peers.json "$work/policy.json"

conf() { # $1 = balancer line
    cat <<CONF
load_module $PWD/build/modules/ngx_http_deep_sched_module.so;
worker_processes 1;
daemon off;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend {
        server 127.0.0.1:18081;
        server 127.0.0.1:18082;
        server 127.0.0.1:18083;
        $1
        keepalive 64;
    }
    server { listen 127.0.0.1:18081; location / { return 200 "b1"; } }
    server { listen 127.0.0.1:18082; location / { return 200 "b2"; } }
    server { listen 127.0.0.1:18083; location / { return 200 "b3"; } }
    server {
        listen 127.0.0.1:18080;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / { proxy_pass http://backend; }
    }
}
CONF
}

cpu_ticks() { # utime + stime of a process, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # $1 = balancer line; prints "requests/s cpu-µs-per-request"
    conf "$1" > "$work/nginx.conf"
    build/sbin/nginx -p "$work" -c "$work/nginx.conf" &
    pid=$!
    for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done
    wrk -t1 -c32 -d1s http://127.0.0.1:18080/ >/dev/null   # warm up
    local worker out t0 t1 hz
    worker=$(pgrep -P "$pid" | head -n 1)
    hz=$(getconf CLK_TCK)
    t0=$(cpu_ticks "$worker")
    out=$(wrk -t1 -c32 -d"${secs}s" http://127.0.0.1:18080/)
    t1=$(cpu_ticks "$worker")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    awk -v t0="$t0" -v t1="$t1" -v hz="$hz" '
        /requests in/ {n = $1}
        /Requests\/sec/ {rps = $2}
        END {printf "%s %.3f\n", rps, (t1 - t0) / hz * 1e6 / n}' <<<"$out"
}

rr=(); ds=(); rr_cpu=(); ds_cpu=()
for i in $(seq "$rounds"); do
    read -r r c <<<"$(run '')"; rr+=("$r"); rr_cpu+=("$c")
    read -r r c <<<"$(run "deep_sched $work/policy.json interval=1s;")"; ds+=("$r"); ds_cpu+=("$c")
    echo "round $i: round robin ${rr[-1]} req/s ${rr_cpu[-1]} us/req, deep_sched ${ds[-1]} req/s ${ds_cpu[-1]} us/req" >&2
done

stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.0f %.0f %.0f", m, a[1], a[NR]}'; }
read -r rr_med rr_min rr_max <<<"$(stats "${rr[@]}")"
read -r ds_med ds_min ds_max <<<"$(stats "${ds[@]}")"
ratios=(); for i in "${!rr[@]}"; do ratios+=("$(awk -v a="${ds[$i]}" -v b="${rr[$i]}" 'BEGIN{printf "%.4f", a/b}')"); done
med3() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f %.3f %.3f", m, a[1], a[NR]}'; }
read -r q_med q_min q_max <<<"$(med3 "${ratios[@]}")"
read -r rc_med rc_min rc_max <<<"$(med3 "${rr_cpu[@]}")"
read -r dc_med dc_min dc_max <<<"$(med3 "${ds_cpu[@]}")"
cratios=(); for i in "${!rr_cpu[@]}"; do cratios+=("$(awk -v a="${ds_cpu[$i]}" -v b="${rr_cpu[$i]}" 'BEGIN{printf "%.4f", a/b}')"); done
read -r c_med c_min c_max <<<"$(med3 "${cratios[@]}")"

section=$(cat <<MD
## module overhead

Command: \`scripts/bench-overhead.sh $rounds $secs\` ($(date -u +%Y-%m-%d), $(nproc) cores, shared machine).
One nginx worker proxies to three \`return 200\` servers over keepalive; wrk
\`-t1 -c32\` for ${secs} s per run; round robin and \`deep_sched POLICY interval=1s\`
interleaved, $rounds rounds.

| balancer | median req/s | min | max | nginx worker CPU µs/request (median, min–max) |
| --- | ---: | ---: | ---: | ---: |
| round robin | $rr_med | $rr_min | $rr_max | $rc_med ($rc_min–$rc_max) |
| deep_sched (policy, wrr) | $ds_med | $ds_min | $ds_max | $dc_med ($dc_min–$dc_max) |

Per-round ratio deep_sched / round robin of requests/s: median **$q_med** (min $q_min, max $q_max); target ≥ 0.97.
Per-round ratio of worker CPU per request (less sensitive to the other tenants of
the machine): median **$c_med** (min $c_min, max $c_max); ≤ 1.03 is the same target.
MD
)
scripts/bench-section.sh "module overhead" "$section"
echo "$section"
