#!/usr/bin/env bash
# The design levers of the lab issue, measured: how many GMM states, the
# decision interval, the reward, and what the learned weights buy at all
# (the same exploration, an equal-weights table served with the same
# choose=p2c). On S6 (day/night, one weak peer), where the learned weights
# matter; S3 (noisy neighbour) again at a 500 ms interval.
#
#   scripts/lab-levers.sh            all of it (~45 min on 2 cores)
#
# For each variant: the exploration log (180 s, one per interval), the
# policy learned from it, then least_conn, deep_sched choose=p2c with that
# policy and the one-pool reference, interleaved, 3 x 20 s. Writes
# results/levers/VARIANT/{report.md,summary.json,policy.json,learn.txt}
# (no plots: `deep-sched-lab report` writes the report again without them).
# Environment: RESULTS (results/levers), EXPLORE (180s), DURATION (20s),
# REPS (3), VARIANTS (a subset of the names below).
set -euo pipefail -f  # -f: no globbing (learn arguments hold a `*`)
cd "$(dirname "$0")/.."
source scripts/lab-env.sh

out=${RESULTS:-results/levers}
explore=${EXPLORE:-180s}
cargo build --release -q -p deep-sched-lab --bins
lab_find_nginx
[[ ${#MODULE_ARGS[@]} -gt 0 ]] || { echo "lab-levers: needs the module and learner (scripts/build.sh)" >&2; exit 1; }
learner=${MODULE_ARGS[3]}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name  scenario  interval  learn arguments
variants=(
    "S6-1s-auto       S6 1s    --states auto"
    "S6-1s-states27   S6 1s    --states 27"
    "S6-1s-states1    S6 1s    --states 1"
    "S6-1s-equal      S6 1s    --states auto --anchor 1000000 --share-model false"
    "S6-1s-reward-p99 S6 1s    --states auto --reward=-p99_ms-1000*error_rate"
    "S6-500ms-auto    S6 500ms --states auto"
    "S6-2s-auto       S6 2s    --states auto"
    "S3-500ms-auto    S3 500ms --states auto"
)

for line in "${variants[@]}"; do
    read -r name scenario interval learn_args <<<"$line"
    if [[ -n ${VARIANTS:-} && " $VARIANTS " != *" $name "* ]]; then
        continue
    fi
    log=$work/$scenario-$interval.jsonl
    if [[ ! -f $log ]]; then
        target/release/deep-sched-lab explore "$scenario" --nginx "$NGINX" \
            --module "${MODULE_ARGS[1]}" --duration "$explore" \
            --explore-interval "$interval" --out "$log"
    fi
    dir=$out/$name
    mkdir -p "$dir"
    # shellcheck disable=SC2086 # learn_args is a word list on purpose
    "$learner" learn --samples "$log" --out "$dir/policy.json" --seed 1 $learn_args \
        --created 0 >"$dir/learn.txt" 2>&1
    only=least_conn,deep_sched_p2c,one_pool
    [[ $scenario == S3 ]] && only=least_conn,deep_sched_p2c
    target/release/deep-sched-lab run "$scenario" --nginx "$NGINX" "${MODULE_ARGS[@]}" \
        --policy "$dir/policy.json" --only "$only" --results "$work/runs" \
        --duration "${DURATION:-20s}" --reps "${REPS:-3}"
    cp "$work/runs/$scenario/summary.json" "$dir/"
    target/release/deep-sched-lab report "$dir" >/dev/null
    sed -i "s#Reproduce: \`scripts/experiment.sh $scenario\`#Reproduce: \`VARIANTS=$name scripts/lab-levers.sh\`#" "$dir/report.md"
    echo "lab-levers: $dir/report.md"
done
