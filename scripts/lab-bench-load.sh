#!/usr/bin/env bash
# How fast the open-loop load generator goes on this machine: one
# deep-sched-backend (4096 workers, fixed 1 ms service, so it never queues)
# and deep-sched-load `rate` at increasing rates, ROUNDS times each,
# interleaved; prints a markdown table (median achieved req/s, p50/p99 and
# failures) for the "lab load generator" section of BENCHMARKS.md.
#   scripts/lab-bench-load.sh [ROUNDS=3] [SECONDS=5] [RATES="2000 4000 8000 12000"]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-5} rates=${3:-"2000 4000 8000 12000"}
cargo build --release -q -p deep-sched-lab --bins
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
target/release/deep-sched-backend --listen 127.0.0.1:0 --name bench --workers 4096 \
    --service fixed:1 > "$work/addr" &
pid=$!
for _ in $(seq 50); do [[ -s $work/addr ]] && break; sleep 0.1; done
addr=$(awk '{print $2}' "$work/addr")
for r in $(seq "$rounds"); do
    for rate in $rates; do
        target/release/deep-sched-load rate --target "http://$addr" --rps "$rate" \
            --duration "${secs}s" --paths /wrk2-api/home-timeline/read --seed "$r" \
            --out "$work/$rate-$r.json" 2>/dev/null
        echo "round $r: $rate req/s asked" >&2
    done
done
python3 - "$work" "$rounds" "$secs" "$rates" <<'PY'
import json, statistics, sys
work, rounds, secs, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split()
print(f"Command: `scripts/lab-bench-load.sh {rounds} {secs}` ({rounds} interleaved rounds of {secs} s per rate; one backend, fixed 1 ms service, 4096 workers; 2 shared cores).\n")
print("| asked req/s | achieved req/s (median, min–max) | p50 ms | p99 ms | failures |")
print("|---:|---:|---:|---:|---:|")
for rate in rates:
    runs = [json.load(open(f"{work}/{rate}-{r}.json"))["total"] for r in range(1, rounds + 1)]
    ach = [t["rps"] for t in runs]
    p50 = statistics.median(t["latency"]["p50_ms"] for t in runs)
    p99 = statistics.median(t["latency"]["p99_ms"] for t in runs)
    fails = sum(sum(t["errors"].values()) for t in runs)
    print(f"| {rate} | {statistics.median(ach):.0f} ({min(ach):.0f}–{max(ach):.0f}) | {p50:.2f} | {p99:.2f} | {fails} |")
PY
