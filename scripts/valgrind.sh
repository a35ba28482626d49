#!/usr/bin/env bash
# nginx + deep_sched under valgrind memcheck, under load, with reloads that
# swap policies and one reload with a bad policy (refused):
#   - master and worker are both traced (valgrind follows fork; workers are
#     forked, not exec'd), one worker, master_process on so that every reload
#     starts a new worker generation and retires the old one;
#   - every process writes its own log: valgrind.<pid>.log;
#   - the report: memcheck errors per process and the leak summary of each
#     worker generation (its "definitely lost" must not grow with reloads).
#
#   scripts/valgrind.sh [SECONDS] [OUT_DIR]    (default 60 s, target/valgrind)
#   BALANCER=rr scripts/valgrind.sh ...         the same without deep_sched
#                                               (nginx's own round robin: the baseline)
#
# Needs valgrind (apt-get install valgrind), build/ from scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-60}
out=${2:-target/valgrind}
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind missing (apt-get install valgrind)" >&2; exit 1; }
for f in build/sbin/nginx build/modules/ngx_http_deep_sched_module.so build/bin/deep-sched-backend build/bin/deep-sched-load; do
    [[ -e $f ]] || { echo "valgrind.sh: $f missing: run scripts/build.sh" >&2; exit 1; }
done

rm -rf "$out"
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
balancer=${BALANCER:-deep_sched}
ds_line="deep_sched $out/policy.json log=logs/samples.jsonl;"
status_line="deep_sched_status;"
if [[ $balancer == rr ]]; then
    ds_line=""
    status_line="return 204;"
fi

# Ports: nginx and three backends, free ones from the kernel.
ports=($(python3 -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))
port=${ports[0]}
peers=("127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" "127.0.0.1:${ports[3]}")

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -f $out/logs/nginx.pid ]]; then kill -QUIT "$(cat "$out/logs/nginx.pid")" 2>/dev/null || true; fi
}
trap cleanup EXIT

for i in 0 1 2; do
    build/bin/deep-sched-backend --listen "${peers[$i]}" --name "b$((i + 1))" --workers 16 \
        --service exp:5 >"$out/backend$i.log" 2>&1 &
    pids+=($!)
done

# Two policies (the example, renamed to our peers, with two different
# tables) and a bad one (the same, truncated).
python3 - "$out" "${peers[@]}" <<'EOF'
import json, sys
out, peers = sys.argv[1], sys.argv[2:]
p = json.load(open("policies/examples/three-peers.json"))
p["agent"]["upstreams"][0]["peers"] = peers
p["interval_ms"] = 500
json.dump(p, open(f"{out}/policy-a.json", "w"))
p["table"] = [1, 2, 3, 0, 1][: len(p["table"])]
p["provenance"]["notes"] = "variant b"
json.dump(p, open(f"{out}/policy-b.json", "w"))
text = json.dumps(p)
open(f"{out}/policy-bad.json", "w").write(text[: len(text) // 2])
EOF
cp "$out/policy-a.json" "$out/policy.json"

cat >"$out/nginx.conf" <<EOF
load_module $root/build/modules/ngx_http_deep_sched_module.so;
daemon off;
master_process on;
worker_processes 1;
error_log logs/error.log notice;
pid logs/nginx.pid;
events { worker_connections 1024; }
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
        keepalive 8;
    }
    server {
        listen 127.0.0.1:$port;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout http_502;
        location / { proxy_pass http://backend; }
        location = /deep_sched { $status_line }
    }
}
EOF

# nginx's own: each worker copies its environment (ngx_set_environment) and
# never frees it, 8 bytes per worker. Not the module's; suppressed by name.
cat >"$out/nginx.supp" <<'SUPP'
{
   nginx-worker-environment
   Memcheck:Leak
   match-leak-kinds: definite
   fun:malloc
   fun:ngx_alloc
   fun:ngx_set_environment
   fun:ngx_worker_process_init
}
SUPP
valgrind --tool=memcheck --trace-children=yes --suppressions="$out/nginx.supp" --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite --num-callers=30 --error-limit=no \
    --log-file="$out/valgrind.%p.log" \
    build/sbin/nginx -p "$out" -c "$out/nginx.conf" -e "$out/logs/error.log" &
vg=$!
for _ in $(seq 300); do
    curl -s -o /dev/null "http://127.0.0.1:$port/deep_sched" && break
    sleep 0.2
done
curl -sf -o /dev/null "http://127.0.0.1:$port/deep_sched" || { echo "valgrind.sh: nginx did not start" >&2; cat "$out/logs/error.log" >&2; exit 1; }
echo "valgrind.sh: nginx under memcheck on :$port, load for ${secs}s with a reload every $((secs / 6))s"

build/bin/deep-sched-load rate --target "http://127.0.0.1:$port" --rps 100 --duration "${secs}s" \
    --paths /wrk2-api/home-timeline/read /wrk2-api/user-timeline/read \
    --out "$out/load.json" >"$out/load.txt" 2>&1 &
load=$!

# Reloads: policy b, a, bad (refused), b, a.
step=$((secs / 6))
for p in b a bad b a; do
    sleep "$step"
    cp "$out/policy-$p.json" "$out/policy.json"
    kill -HUP "$(cat "$out/logs/nginx.pid")"
    echo "valgrind.sh: reload with policy $p"
done
wait "$load" || true
curl -s "http://127.0.0.1:$port/deep_sched" >"$out/status.json" || true

# Graceful stop: the worker and the master exit and write leak summaries.
kill -QUIT "$(cat "$out/logs/nginx.pid")"
wait "$vg" || true
rm -f "$out/logs/nginx.pid"

python3 - "$out" <<'EOF'
import glob, json, re, sys
out = sys.argv[1]
rows = []
for f in sorted(glob.glob(f"{out}/valgrind.*.log")):
    t = open(f).read()
    pid = f.rsplit(".", 2)[-2]
    err = re.search(r"ERROR SUMMARY: (\d+) errors", t)
    def lost(kind):
        m = re.search(kind + r" lost: ([\d,]+) bytes in ([\d,]+) blocks", t)
        return int(m.group(1).replace(",", "")) if m else 0
    role = "master" if "nginx: master" in t or f == sorted(glob.glob(f"{out}/valgrind.*.log"))[0] else "worker"
    rows.append((int(pid), int(err.group(1)) if err else -1, lost("definitely"), lost("indirectly"), lost("possibly")))
rows.sort()
load = json.load(open(f"{out}/load.json"))["total"]
print(f"requests: {load['sent']} sent, {load['ok']} ok, errors {load['errors']}")
print(f"{'pid':>8} {'errors':>7} {'definitely':>11} {'indirectly':>11} {'possibly':>9}  (bytes lost)")
for r in rows:
    print(f"{r[0]:>8} {r[1]:>7} {r[2]:>11} {r[3]:>11} {r[4]:>9}")
bad = [r for r in rows if r[1] != 0]
print("valgrind.sh:", "OK: 0 memcheck errors in every process" if not bad else f"ERRORS in {len(bad)} process(es): see {out}/valgrind.<pid>.log")
sys.exit(1 if bad else 0)
EOF
grep -E "\[emerg\]" "$out/logs/error.log" | sed 's/^/refused reload: /' || true
