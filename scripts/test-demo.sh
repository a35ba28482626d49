#!/usr/bin/env bash
# The test of the main job: runs `scripts/demo.sh --quick` (deps, build,
# S2 exploration, learning, comparison) into a scratch results directory and
# checks what it produced: the table and report, a learned policy, no failed
# request under deep_sched, and deep_sched (choose=p2c) well ahead of round
# robin, which overloads the weak peer in S2 (seconds against tens of ms).
# Prints one cargo-style `test result:` line so scripts/test.sh counts it.
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() {
    echo "test-demo: FAILED: $*" >&2
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored"
    exit 1
}
RESULTS="$out" timeout 900 scripts/demo.sh --quick | tee "$out/demo.txt" || fail "scripts/demo.sh --quick exited with $?"

grep -q '^report: ' "$out/demo.txt" || fail "no 'report:' line in the demo's output"
for b in round_robin least_conn deep_sched_p2c; do
    grep -q "^ *$b " "$out/demo.txt" || fail "no row for $b in the demo's table"
done
[[ -s $out/S2/policy.json ]] || fail "no learned policy in $out/S2"
python3 - "$out/S2/summary.json" <<'PY' || fail "summary check (above)"
import json, sys
rows = {b["balancer"]: b for b in json.load(open(sys.argv[1]))["balancers"]}
ds, rr = rows["deep_sched_p2c"], rows["round_robin"]
problems = []
if ds["errors"] != 0:
    problems.append(f"deep_sched_p2c had {ds['errors']} failed requests")
if not ds["p99_ms"] * 5 < rr["p99_ms"]:
    problems.append(f"deep_sched_p2c p99 {ds['p99_ms']} ms is not 5x below round robin's {rr['p99_ms']} ms")
if not 0.05 < ds["shares"]["b3"] < 0.30:
    problems.append(f"deep_sched_p2c sent {ds['shares']['b3']:.2f} of requests to the 3-worker peer")
for p in problems:
    print("test-demo:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "test result: ok. 1 passed; 0 failed; 0 ignored (scripts/demo.sh --quick)"
