#!/usr/bin/env bash
# criterion benchmarks of the core's hot paths; writes the "core" section of
# BENCHMARKS.md (median and 95% interval of each estimate).
#   scripts/bench-core.sh [MEASUREMENT_SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cargo bench -p deep-sched-core --bench core -- --warm-up-time 2 --measurement-time "$secs" >/dev/null
row() { # $1 = criterion id (dir under target/criterion), $2 = label, $3 = target
    python3 - "$1" "$2" "$3" <<'PY'
import json, os, sys
cid, label, target = sys.argv[1:4]
base = f"{os.environ.get('CARGO_TARGET_DIR', 'target')}/criterion/{cid}/new"
e = json.load(open(f"{base}/estimates.json"))["median"]
s = json.load(open(f"{base}/sample.json"))
fastest = min(t / n for t, n in zip(s["times"], s["iters"]))
def fmt(ns):
    if ns >= 1e6:
        return f"{ns/1e6:.2f} ms"
    return f"{ns/1000:.2f} µs" if ns >= 1000 else f"{ns:.1f} ns"
print(f"| {label} | {fmt(e['point_estimate'])} | {fmt(e['confidence_interval']['lower_bound'])} – {fmt(e['confidence_interval']['upper_bound'])} | {fmt(fastest)} | {target} |")
PY
}
section=$(cat <<MD
## core

Command: \`scripts/bench-core.sh $secs\` ($(date -u +%Y-%m-%d), $(nproc) cores, shared machine, load
average $load_before before the run; default x86-64 target, no \`target-cpu=native\`).
criterion median and its 95% interval, and the fastest of criterion's samples (mean time per
iteration of the least disturbed sample: what the code costs when it has the core to itself).

| what | median | 95% interval | fastest sample | target |
| --- | ---: | ---: | ---: | --- |
$(row choose/p2c_3_peers "one p2c pick, 3 peers (plain loads)" "≤ 50 ns")
$(row pick/p2c_table_3 "p2c pick from the alias table, 3 peers (reads 2 slots)" "")
$(row pick/p2c_table_64 "p2c pick from the alias table, 64 peers" "")
$(row pick/p2c_table_1024 "p2c pick from the alias table, 1,024 peers" "≤ 60 ns")
$(row pick/p2c_scan_3 "p2c pick by scanning every slot, 3 peers (fallback)" "")
$(row pick/p2c_scan_64 "p2c pick by scanning every slot, 64 peers" "")
$(row pick/p2c_scan_1024 "p2c pick by scanning every slot, 1,024 peers" "")
$(row pick/wrr_overhead_3 "wrr: what deep_sched adds to round robin's pick, 3 peers" "≤ 10 ns")
$(row pick/wrr_overhead_64 "wrr: what deep_sched adds, 64 peers" "≤ 10 ns")
$(row pick/wrr_overhead_1024 "wrr: what deep_sched adds, 1,024 peers" "≤ 10 ns")
$(row hash/pick_64x160 "choose=hash: one pick (ring lookup + bound over every peer + walk), 64 peers x 160 points" "≤ 200 ns")
$(row hash/pick_1024x1000 "choose=hash: one pick, 1,024 peers of weight 1,000 (ring capped at 2^18 points)" "")
$(row hash/key_xxh3 "choose=hash: hashing a 40-byte key (xxh3)" "")
$(row hash/rebuild_64x160 "choose=hash: ring rebuild, 64 peers, ~15k points (once per decision)" "")
$(row hash/rebuild_1024x1000 "choose=hash: ring rebuild at the cap, 2^18 points" "")
$(row free_record "free path: one try recorded + in flight released" "")
$(row free_dispatch "free path: the try charged to its dispatch interval (sample log credit)" "")
$(row choose/latency_bucket "latency histogram bucket (per request)" "")
$(row choose/decayed_latency "read-time decay of a latency estimate (per p2c draw)" "")
$(row classify_k27_d27_full "one state classification, K=27, D=27, full covariance" "≤ 2 µs")
$(row policy_load_k27_d27_full "parse + validate a 27-state, 27-feature full policy" "")

In the module the per-request path is: one atomic load of the agent's decision
epoch, nginx's own round robin plus the \`wrr_overhead\` row (address → index
in an FxHashMap, in-flight gauge and the worker's shard), or the p2c pick from
the decision's alias table reading the two drawn peers' slots (\`p2c_table\`;
the scan is the fallback when draws keep hitting ineligible peers), or the
\`choose=hash\` pick (one xxh3 of the key in \`init_peer\`, then the ring
walk; the module also reads every peer's eligibility and in-flight count,
O(n), under the peers' write lock, as nginx's own \`hash\` holds it), and the
\`free/record\` and \`free/dispatch\` rows in \`free_peer\`. The peers' lock is nginx's and is not
in these numbers. Classification runs once per interval in one worker.
MD
)
scripts/bench-section.sh "core" "$section"
echo "$section"
