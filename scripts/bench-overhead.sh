#!/usr/bin/env bash
# Per-request cost of deep_sched against nginx's own balancers, as a matrix:
# worker_processes x number of peers x balancer.
#
# One nginx serves eight trivial backends (`return 200` on 127.0.0.1:18081-8)
# and proxies to them over keepalive through one upstream of N peers (the
# eight addresses in turn; duplicates are allowed by nginx and each is its
# own peer), with the upstream's `zone`. Balancers:
#   round robin, least_conn, random two least_conn, hash $request_uri
#   consistent, least_time header (only with LEAST_TIME_NGINX, an nginx >=
#   1.31), deep_sched observe (`deep_sched;`), deep_sched with a decision
#   every second (`explore weights=1`: the weights are republished each
#   interval, the same request path as a policy) under choose=wrr and
#   choose=p2c, and deep_sched's consistent hashing with bounded loads
#   (`choose=hash key=$request_uri`, observe mode, balance 1.25), also as a
#   ratio to nginx's `hash $request_uri consistent`.
# Requests cycle through KEYS distinct URIs (/k/0 .. /k/KEYS-1; 0: always
# "/"), so the hash balancers see many keys.
# wrk drives every balancer of one (workers, peers) point in turn, ROUNDS
# times interleaved; requests/s and the nginx workers' CPU per request (from
# /proc) go to BENCHMARKS.md ("module overhead"), medians with min-max, and
# each deep_sched variant's ratio to round robin of the same round.
#
#   scripts/bench-overhead.sh [ROUNDS=3] [SECONDS=5]
#   WORKERS="1 2" PEERS="3 64 256 1024" LEAST_TIME_NGINX=/path/to/nginx-1.31/objs/nginx
#   KEYS=10000 BALANCERS="rr hash dhash" (a subset) SECTION="module overhead"
#   (the BENCHMARKS.md section written; a subset should name its own)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
workers_list=${WORKERS:-1 2}
peers_list=${PEERS:-3 64 256 1024}
lt_nginx=${LEAST_TIME_NGINX:-}
keys=${KEYS:-10000}
section_name=${SECTION:-module overhead}
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

names=(rr least_conn random2 hash observe wrr p2c dhash)
declare -A line=(
    [rr]=""
    [least_conn]="least_conn;"
    [random2]="random two least_conn;"
    [hash]="hash \$request_uri consistent;"
    [observe]="deep_sched;"
    [wrr]="deep_sched explore weights=1 interval=1s choose=wrr;"
    [p2c]="deep_sched explore weights=1 interval=1s choose=p2c;"
    [dhash]="deep_sched choose=hash key=\$request_uri;"
    [least_time]="least_time header;"
)
if [[ -n "$lt_nginx" ]]; then
    names+=(least_time)
fi
if [[ -n "${BALANCERS:-}" ]]; then
    read -r -a names <<<"$BALANCERS"
    [[ " ${names[*]} " == *" rr "* ]] || names=(rr "${names[@]}") # the ratios' base
fi
wrk_script=()
if ((keys > 0)); then
    cat >"$work/keys.lua" <<LUA
local n = 0
request = function()
    n = (n + 1) % $keys
    return wrk.format(nil, "/k/" .. n)
end
LUA
    wrk_script=(-s "$work/keys.lua")
fi

conf() { # $1 = balancer line, $2 = workers, $3 = peers, $4 = load_module line
    local servers="" i
    for ((i = 0; i < $3; i++)); do
        servers+="        server 127.0.0.1:$((18081 + i % 8));"$'\n'
    done
    cat <<CONF
$4
worker_processes $2;
daemon off;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    upstream backend {
$servers        $1
        zone backend 8m;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:18081; listen 127.0.0.1:18082; listen 127.0.0.1:18083;
        listen 127.0.0.1:18084; listen 127.0.0.1:18085; listen 127.0.0.1:18086;
        listen 127.0.0.1:18087; listen 127.0.0.1:18088;
        location / { return 200 "ok"; }
    }
    server {
        listen 127.0.0.1:18080;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / { proxy_pass http://backend; }
    }
}
CONF
}

cpu_ticks() { # utime + stime of the given processes, in clock ticks
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

run() { # $1 = balancer name, $2 = workers, $3 = peers; prints "requests/s cpu-us-per-request"
    local bin=build/sbin/nginx load="load_module $PWD/build/modules/ngx_http_deep_sched_module.so;"
    if [[ $1 == least_time ]]; then bin=$lt_nginx; load=""; fi
    conf "${line[$1]}" "$2" "$3" "$load" > "$work/nginx.conf"
    "$bin" -p "$work" -c "$work/nginx.conf" &
    pid=$!
    for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done
    wrk -t1 -c32 -d1s http://127.0.0.1:18080/ >/dev/null   # warm up
    local workers out t0 t1 hz
    mapfile -t workers < <(pgrep -P "$pid")
    hz=$(getconf CLK_TCK)
    t0=$(cpu_ticks "${workers[@]}")
    out=$(wrk -t1 -c32 -d"${secs}s" "${wrk_script[@]}" http://127.0.0.1:18080/)
    t1=$(cpu_ticks "${workers[@]}")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    awk -v t0="$t0" -v t1="$t1" -v hz="$hz" '
        /requests in/ {n = $1}
        /Requests\/sec/ {rps = $2}
        END {printf "%s %.3f\n", rps, (t1 - t0) / hz * 1e6 / n}' <<<"$out"
}

med() { # median min max of the arguments, with printf format $1
    local fmt=$1; shift
    printf '%s\n' "$@" | sort -g | awk -v f="$fmt" '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf f" "f" "f, m, a[1], a[NR]}'
}

rows=""
hash_rows=""
for w in $workers_list; do
    for n in $peers_list; do
        declare -A rps=() cpu=()
        for ((r = 1; r <= rounds; r++)); do
            for b in "${names[@]}"; do
                read -r q c <<<"$(run "$b" "$w" "$n")"
                rps[$b]+="$q "; cpu[$b]+="$c "
                echo "workers $w, peers $n, round $r: $b $q req/s $c us/req" >&2
            done
        done
        read -r -a rr_q <<<"${rps[rr]}"
        read -r -a rr_c <<<"${cpu[rr]}"
        for b in "${names[@]}"; do
            read -r -a q <<<"${rps[$b]}"
            read -r -a c <<<"${cpu[$b]}"
            qr=(); cr=()
            for i in "${!q[@]}"; do
                qr+=("$(awk -v a="${q[$i]}" -v b="${rr_q[$i]}" 'BEGIN{printf "%.4f", a/b}')")
                cr+=("$(awk -v a="${c[$i]}" -v b="${rr_c[$i]}" 'BEGIN{printf "%.4f", a/b}')")
            done
            read -r qm qlo qhi <<<"$(med %.0f "${q[@]}")"
            read -r cm clo chi <<<"$(med %.2f "${c[@]}")"
            read -r qrm qrlo qrhi <<<"$(med %.3f "${qr[@]}")"
            read -r crm crlo crhi <<<"$(med %.3f "${cr[@]}")"
            rows+="| $w | $n | $b | $qm ($qlo–$qhi) | $cm ($clo–$chi) | $qrm ($qrlo–$qrhi) | $crm ($crlo–$crhi) |"$'\n'
        done
        if [[ -n "${rps[dhash]:-}" && -n "${rps[hash]:-}" ]]; then
            read -r -a q <<<"${rps[dhash]}"
            read -r -a c <<<"${cpu[dhash]}"
            read -r -a hq <<<"${rps[hash]}"
            read -r -a hc <<<"${cpu[hash]}"
            qr=(); cr=()
            for i in "${!q[@]}"; do
                qr+=("$(awk -v a="${q[$i]}" -v b="${hq[$i]}" 'BEGIN{printf "%.4f", a/b}')")
                cr+=("$(awk -v a="${c[$i]}" -v b="${hc[$i]}" 'BEGIN{printf "%.4f", a/b}')")
            done
            read -r qrm qrlo qrhi <<<"$(med %.3f "${qr[@]}")"
            read -r crm crlo crhi <<<"$(med %.3f "${cr[@]}")"
            hash_rows+="| $w | $n | $qrm ($qrlo–$qrhi) | $crm ($crlo–$crhi) |"$'\n'
        fi
        unset rps cpu
    done
done

hash_table=""
if [[ -n "$hash_rows" ]]; then
    hash_table=$(cat <<MD

\`dhash\` (\`deep_sched choose=hash key=\$request_uri;\`, balance 1.25) against nginx's
\`hash \$request_uri consistent\` of the same round (target: requests/s ≥ 0.97):

| workers | peers | req/s ÷ nginx hash | CPU ÷ nginx hash |
| ---: | ---: | ---: | ---: |
$hash_rows
MD
)
fi

section=$(cat <<MD
## $section_name

Command: \`WORKERS="$workers_list" PEERS="$peers_list" KEYS=$keys$( [[ -n "${BALANCERS:-}" ]] && echo " BALANCERS=\"${names[*]}\" SECTION=\"$section_name\"" ) scripts/bench-overhead.sh $rounds $secs\`$( [[ -n "$lt_nginx" ]] && echo " with \`LEAST_TIME_NGINX\` ($("$lt_nginx" -v 2>&1 | sed 's/.*\///'))" )
($(date -u +%Y-%m-%d), $(nproc) cores, shared machine, $(build/sbin/nginx -v 2>&1 | sed 's/.*\///') from \`scripts/build.sh\`).
nginx proxies over keepalive to eight \`return 200\` servers of its own through
one upstream of N peers (the eight addresses in turn) with a \`zone\`; wrk
\`-t1 -c32\` for ${secs} s per run on the same two cores, cycling through $keys URIs
(0: always \`/\`); all balancers of a row
group interleaved, $rounds rounds. CPU is the nginx workers' user+system time
per request from \`/proc\`. Ratios are to round robin of the same round
(targets: requests/s ≥ 0.97, CPU ≤ 1.05). \`wrr\` and \`p2c\` republish the
weights every second (\`explore weights=1\`), the request path of a policy.

| workers | peers | balancer | req/s median (min–max) | worker CPU µs/request | req/s ÷ round robin | CPU ÷ round robin |
| ---: | ---: | --- | ---: | ---: | ---: | ---: |
$rows$hash_table
MD
)
scripts/bench-section.sh "$section_name" "$section"
echo "$section"
