#!/usr/bin/env bash
# Experiments of the lab (docs/lab.md): for each scenario, an exploration
# run of deep_sched, `deep-sched learn`, then round robin, least_conn,
# random two least_conn, hash $request_id consistent, deep_sched with the
# learned policy (choose=wrr and choose=p2c) and, where one backend can stand
# for the scenario's, the one-pool reference (all workers behind one queue),
# interleaved, each REPS times; writes
# results/SCENARIO/{report.md,summary.json,*.png}.
#
#   scripts/experiment.sh S1 [S2 ...]      one or more scenarios (G<seed>: generated, docs/lab.md)
#   scripts/experiment.sh all              S1..S6
#   scripts/experiment.sh distribution     N = 2..6 peers, 10,000 requests each,
#                                          and the 10,000-key hashing study
#                                          (--requests 0: keys only)
#   scripts/experiment.sh --quick S1       8 s runs, 1 repetition, 30 s exploration
#
# Environment: DURATION (30s), REPS (3), EXPLORE (120s), NGINX, DEEP_SCHED=0,
# RESULTS (results), LEARN_ARGS (extra `deep-sched learn` arguments, e.g.
# "--states auto"), POLICY (evaluate this policy instead of exploring and
# learning; one scenario), EXPLORE_CHOOSE (p2c or wrr: the per-request choice
# of the exploration run, default p2c), EXPLORE_WEIGHTS (the exploration set,
# default 1,3), EXPLORE_INTERVAL (the decision interval of the exploration
# and so of the learned policy, default 1s). deep_sched is evaluated when
# build/sbin/nginx, build/modules/ngx_http_deep_sched_module.so and the
# learner exist (scripts/build.sh); otherwise only nginx's own balancers run.
# Time: about (4 to 7 runs) x REPS x (DURATION + 2 s) + EXPLORE per
# scenario: ~10 min each with the defaults, ~60 min for `all`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lab-env.sh

duration=${DURATION:-30s} reps=${REPS:-3} explore=${EXPLORE:-120s}
args=()
for a in "$@"; do
    if [[ $a == --quick ]]; then
        duration=${DURATION:-8s} reps=${REPS:-1} explore=${EXPLORE:-30s}
    else
        args+=("$a")
    fi
done
[[ ${#args[@]} -gt 0 ]] || { sed -n '2,22p' "$0" >&2; exit 2; }

cargo build --release -q -p deep-sched-lab --bins
lab_find_nginx
echo "experiment: nginx $NGINX ($("$NGINX" -v 2>&1 | sed 's#.*/##'))${MODULE_ARGS[*]:+, deep_sched on}" >&2

if [[ ${args[0]} == distribution ]]; then
    exec target/release/deep-sched-lab distribution --nginx "$NGINX" --results "${RESULTS:-results}" "${args[@]:1}"
fi
exec target/release/deep-sched-lab run "${args[@]}" --nginx "$NGINX" --results "${RESULTS:-results}" \
    --duration "$duration" --reps "$reps" --explore "$explore" "${MODULE_ARGS[@]}" \
    --explore-choose "${EXPLORE_CHOOSE:-p2c}" --explore-weights "${EXPLORE_WEIGHTS:-1,3}" \
    --explore-interval "${EXPLORE_INTERVAL:-1s}" \
    ${POLICY:+--policy "$POLICY"} \
    ${LEARN_ARGS:+$(printf -- '--learn-arg=%s ' $LEARN_ARGS)}
