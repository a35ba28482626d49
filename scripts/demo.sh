#!/usr/bin/env bash
# The main job, end to end (small version): build nginx + deep_sched, start
# three emulated backends on 127.0.0.1:18081-18083 (the third one slow),
# serve through `deep_sched` with the example policy, drive open-loop load
# and print what the agent saw and did.
#   scripts/demo.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=30s
[[ "${1:-}" == "--quick" ]] && duration=8s

scripts/deps.sh
scripts/build.sh

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for i in 1 2 3; do
    slow=()
    [[ $i == 3 ]] && slow=(--slow-factor 5 --slow-period 10s --slow-for 5s)
    build/bin/deep-sched-backend --listen "127.0.0.1:1808$i" --name "b$i" --workers 8 \
        --service exp:10 "${slow[@]}" >/dev/null &
    pids+=($!)
done

mkdir -p "$work/logs"
cp -r build/conf/policies "$work/policies"
sed -e "s#modules/ngx_http_deep_sched_module.so#$PWD/build/modules/ngx_http_deep_sched_module.so#" \
    -e "s#policies/examples/three-peers.json#$work/policies/examples/three-peers.json#" \
    -e "s#^worker_processes.*#worker_processes 2; daemon off;#" \
    nginx-conf/deep_sched.conf > "$work/nginx.conf"
build/sbin/nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)
for _ in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:8080/deep_sched && break; sleep 0.1; done

echo "== open-loop load for $duration (400 req/s) through deep_sched"
build/bin/deep-sched-load rate --target http://127.0.0.1:8080 --rps 400 --duration "$duration" \
    --out "$work/load.json"
python3 - "$work/load.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps(s, indent=1)[:1500])
PY
echo "== status (/deep_sched)"
curl -s http://127.0.0.1:8080/deep_sched | python3 -c '
import json, sys
d = json.load(sys.stdin)
for a in d["agents"]:
    print(f"agent {a[\"name\"]}: mode={a[\"mode\"]} state={a[\"state\"]} action={a[\"action\"]} decisions={a[\"decisions\"]}")
    for u in a["upstreams"]:
        for p in u["peers"]:
            print(f"  {p[\"server\"]:>16} requests={p[\"requestCounter\"]:>6} weight={p[\"weight\"]} p95={p[\"requestMsecs\"][\"p95\"]:.1f}ms")
'
echo "== last decisions (sample log)"
tail -n 3 "$work/logs/backend.samples.jsonl" | cut -c1-300
