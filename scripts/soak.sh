#!/usr/bin/env bash
# Soak: deep_sched (the example policy, renamed to this run's peers) and
# nginx's plain round robin side by side, same upstream and proxy settings,
# each in front of three backends of its own, at a steady open-loop rate for
# a long while, with backend 3 of both flapping at the same moments (killed,
# then restarted, every FLAP seconds). Reports requests lost by each (client-
# visible errors: deep_sched must lose no more than round robin) and the RSS
# of the nginx workers over time (must stay flat).
#
#   scripts/soak.sh [SECONDS] [RPS] [FLAP_SECONDS] [OUT_DIR]
#                   (default 600 s, 200 req/s each, 30 s, target/soak)
#
# Needs build/ from scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-600}
rps=${2:-200}
flap=${3:-30}
out=${4:-target/soak}
for f in build/sbin/nginx build/modules/ngx_http_deep_sched_module.so build/bin/deep-sched-backend build/bin/deep-sched-load; do
    [[ -e $f ]] || { echo "soak.sh: $f missing: run scripts/build.sh" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

ports=($(python3 -c 'import socket
s=[socket.socket() for _ in range(8)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))

pids=()
declare -A flapper
cleanup() {
    for p in "${pids[@]}" "${flapper[@]}"; do kill "$p" 2>/dev/null || true; done
    for s in ds rr; do
        [[ -f $out/$s/logs/nginx.pid ]] && kill -QUIT "$(cat "$out/$s/logs/nginx.pid")" 2>/dev/null || true
    done
}
trap cleanup EXIT

backend() { # name addr log
    build/bin/deep-sched-backend --listen "$2" --name "$1" --workers 16 --service exp:5 >>"$3" 2>&1 &
    echo $!
}

# side index: 0 = deep_sched, 1 = round robin
start_side() {
    local s=$1 base=$2 balancer=$3
    local port=${ports[$base]}
    local peers=("127.0.0.1:${ports[$((base + 1))]}" "127.0.0.1:${ports[$((base + 2))]}" "127.0.0.1:${ports[$((base + 3))]}")
    mkdir -p "$out/$s/logs"
    for i in 0 1; do
        pids+=("$(backend "b$((i + 1))" "${peers[$i]}" "$out/$s/backend$i.log")")
    done
    flapper[$s]=$(backend b3 "${peers[2]}" "$out/$s/backend2.log")
    echo "${peers[2]}" >"$out/$s/flapping-peer"
    local ds_line=""
    if [[ $balancer == deep_sched ]]; then
        python3 - "$out/$s/policy.json" "${peers[@]}" <<'EOF'
import json, sys
path, peers = sys.argv[1], sys.argv[2:]
p = json.load(open("policies/examples/three-peers.json"))
p["agent"]["upstreams"][0]["peers"] = peers
json.dump(p, open(path, "w"))
EOF
        ds_line="deep_sched $out/$s/policy.json interval=1s log=logs/samples.jsonl;"
    fi
    cat >"$out/$s/nginx.conf" <<EOF
load_module $root/build/modules/ngx_http_deep_sched_module.so;
worker_processes 2;
error_log logs/error.log notice;
pid logs/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path logs/tmp_body;
    proxy_temp_path logs/tmp_proxy;
    fastcgi_temp_path logs/tmp_fcgi;
    uwsgi_temp_path logs/tmp_uwsgi;
    scgi_temp_path logs/tmp_scgi;
    upstream backend {
        zone backend 64k;
        server ${peers[0]};
        server ${peers[1]};
        server ${peers[2]};
        $ds_line
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$port;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_connect_timeout 1s;
        proxy_next_upstream error timeout http_502;
        location / { proxy_pass http://backend; }
        location = /deep_sched { $( [[ $balancer == deep_sched ]] && echo "deep_sched_status;" || echo "return 204;" ) }
    }
}
EOF
    build/sbin/nginx -p "$out/$s" -c "$out/$s/nginx.conf" -e "$out/$s/logs/error.log"
    echo "$port" >"$out/$s/port"
}

start_side ds 0 deep_sched
start_side rr 4 round_robin
sleep 1
for s in ds rr; do
    curl -sf -o /dev/null "http://127.0.0.1:$(cat "$out/$s/port")/wrk2-api/home-timeline/read" ||
        { echo "soak.sh: $s does not answer" >&2; cat "$out/$s/logs/error.log" >&2; exit 1; }
done
echo "soak.sh: ${secs}s at ${rps} req/s to each of deep_sched (:$(cat "$out/ds/port")) and round robin (:$(cat "$out/rr/port")); backend 3 flaps every ${flap}s"

loads=()
for s in ds rr; do
    build/bin/deep-sched-load rate --target "http://127.0.0.1:$(cat "$out/$s/port")" --rps "$rps" \
        --duration "${secs}s" --timeout 10s --seed 7 \
        --paths /wrk2-api/home-timeline/read /wrk2-api/user-timeline/read \
        --out "$out/$s/load.json" >"$out/$s/load.txt" 2>&1 &
    loads+=($!)
done

rss() { # side -> "worker RSS in kB, summed" and the list
    local master
    master=$(cat "$out/$1/logs/nginx.pid")
    ps --ppid "$master" -o rss= | awk '{ s += $1; l = l " " $1 } END { printf "%d%s", s, l }'
}
echo "t_s,ds_workers_rss_kb,rr_workers_rss_kb,flapping_peer" >"$out/rss.csv"
start=$(date +%s)
next_flap=$((start + flap))
up=1
while :; do
    now=$(date +%s)
    t=$((now - start))
    (( t > secs )) && break
    if (( now >= next_flap )); then
        for s in ds rr; do
            if [[ $up == 1 ]]; then
                kill -KILL "${flapper[$s]}" 2>/dev/null || true
            else
                flapper[$s]=$(backend b3 "$(cat "$out/$s/flapping-peer")" "$out/$s/backend2.log")
            fi
        done
        up=$((1 - up))
        next_flap=$((next_flap + flap))
    fi
    if (( t % 10 == 0 )); then
        echo "$t,$(rss ds | cut -d' ' -f1),$(rss rr | cut -d' ' -f1),$([[ $up == 1 ]] && echo up || echo down)" >>"$out/rss.csv"
    fi
    sleep 1
done
for l in "${loads[@]}"; do wait "$l" || true; done
curl -s "http://127.0.0.1:$(cat "$out/ds/port")/deep_sched" >"$out/ds/status.json" || true

python3 - "$out" <<'EOF'
import csv, json, sys
out = sys.argv[1]
res = {}
for s, name in (("ds", "deep_sched"), ("rr", "round robin")):
    t = json.load(open(f"{out}/{s}/load.json"))["total"]
    lost = t["sent"] - t["ok"]
    res[s] = lost
    lat = t["latency"]
    print(f"{name:12} sent {t['sent']:7} ok {t['ok']:7} lost {lost:5} errors {t['errors']} "
          f"p50 {lat['p50_ms']:.1f} p99 {lat['p99_ms']:.1f} p99.9 {lat['p999_ms']:.1f} ms")
rows = list(csv.DictReader(open(f"{out}/rss.csv")))
for s, name in (("ds", "deep_sched"), ("rr", "round robin")):
    v = [int(r[f"{s}_workers_rss_kb"]) for r in rows if r[f"{s}_workers_rss_kb"]]
    if len(v) >= 4:
        q = len(v) // 4
        first, last = sum(v[:q]) / q, sum(v[-q:]) / q
        print(f"{name:12} workers' RSS (kB, both workers): first {v[0]}, min {min(v)}, max {max(v)}, last {v[-1]}; "
              f"mean of first quarter {first:.0f}, last quarter {last:.0f} ({(last - first) / first * 100:+.1f}%)")
ok = res["ds"] <= res["rr"]
print("soak.sh:", "OK: deep_sched lost no more than round robin" if ok else "deep_sched lost MORE than round robin")
sys.exit(0 if ok else 1)
EOF
