#!/usr/bin/env bash
# The main job, end to end: three emulated backends of unequal capacity
# (scenario S2: 8/8/3 workers, exponential 10 ms, 70 % load), an exploration
# run of deep_sched, `deep-sched learn`, then deep_sched with the learned
# policy against round robin and least_conn; prints a short table and where
# the report is. Needs scripts/build.sh to have built nginx, the module and
# the learner; otherwise it compares the built-ins only and says so.
#
#   scripts/lab-demo.sh            ~2 min exploration, 2 x 30 s per balancer (~6 min)
#   scripts/lab-demo.sh --quick    45 s exploration, 1 x 10 s per balancer (~2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lab-env.sh

if [[ "${1:-}" == --quick ]]; then
    duration=10s reps=1 explore=45s
else
    duration=30s reps=2 explore=120s
fi
out=${RESULTS:-build/demo}

cargo build --release -q -p deep-sched-lab --bins
lab_find_nginx
if [[ ${#MODULE_ARGS[@]} -eq 0 ]]; then
    echo "lab-demo: deep_sched not built (build/sbin/nginx, build/modules/ngx_http_deep_sched_module.so, deep-sched); comparing nginx's balancers only" >&2
fi
target/release/deep-sched-lab run S2 --nginx "$NGINX" --results "$out" \
    --duration "$duration" --reps "$reps" --explore "$explore" \
    --only round_robin,least_conn,deep_sched,deep_sched_p2c "${MODULE_ARGS[@]}"

report="$out/S2/report.md"
echo
sed -n '/^| balancer | p50/,/^$/p' "$report" | cut -d'|' -f2,3,5,7,9,10,11
grep -E '^(Best built-in|deep_sched)' "$report" || true
echo "report: $report"
