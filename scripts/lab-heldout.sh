#!/usr/bin/env bash
# The held-out judgement of issue #13 (docs/lab.md, "Held-out scenarios"):
# for each seed of lab/seeds/heldout.txt, an exploration run of deep_sched,
# `deep-sched learn`, then, interleaved (order rotated per repetition) and
# REPS times each: the one-pool reference, round robin, least_conn,
# least_conn with true-capacity weights, random two least_conn, least_time
# header (with LEAST_TIME_NGINX), deep_sched p2c with equal weights, the
# static capacity oracle (true-capacity weights under deep_sched's p2c) and
# the learned policy under choose=p2c and choose=wrr. Writes
# results/heldout/{G<seed>.json,G<seed>/learn.txt,G<seed>/policy.json,
# heldout.md,section.md} and BENCHMARKS.md's "## held-out scenarios".
#
#   scripts/lab-heldout.sh                    all held-out seeds, 30 s runs, 3 reps, 120 s exploration
#   scripts/lab-heldout.sh --quick            smoke run: 3 s runs, 3 reps, 20 s exploration, 2 seeds
#   scripts/lab-heldout.sh --seeds tuning     design work (never tune on the held-out seeds)
#   scripts/lab-heldout.sh --seeds 1001,1002 --first 1
#
# Environment: DURATION (30s), REPS (3), EXPLORE (120s), SEEDS (heldout |
# tuning | 1,2,3 | FILE), FIRST (only the first N seeds), RESULTS
# (results/heldout), LEARN_ARGS, BENCH=0 (do not touch BENCHMARKS.md),
# LEAST_TIME_NGINX=/path/to/nginx-1.31+/objs/nginx: run EVERY balancer on
# that nginx and add least_time; the module must be built for it
# (scripts/build-nginx-least-time.sh, or NGINX_SOURCE_DIR=... scripts/build.sh)
# and is taken from LEAST_TIME_MODULE (default
# target/external/release/libngx_http_deep_sched_module.so).
# Without LEAST_TIME_NGINX: build/sbin/nginx and build/modules (scripts/build.sh).
# Time per seed: 10 balancers x REPS x (DURATION + ~0.7 s) + EXPLORE + learning.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-30s} reps=${REPS:-3} explore=${EXPLORE:-120s}
seeds=${SEEDS:-heldout} first=${FIRST:-}
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) duration=${DURATION:-3s} explore=${EXPLORE:-20s} first=${FIRST:-2}; shift ;;
        --seeds) seeds=$2; shift 2 ;;
        --first) first=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "lab-heldout.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

cargo build --release -q -p deep-sched-lab -p deep-sched-learn --bins
learner=target/release/deep-sched
lt_args=()
if [[ -n "${LEAST_TIME_NGINX:-}" ]]; then
    nginx=$LEAST_TIME_NGINX
    module=${LEAST_TIME_MODULE:-target/external/release/libngx_http_deep_sched_module.so}
    [[ -x $nginx ]] || { echo "lab-heldout.sh: LEAST_TIME_NGINX=$nginx is not an executable" >&2; exit 1; }
    [[ -f $module ]] || { echo "lab-heldout.sh: no module built for $nginx at $module (scripts/build-nginx-least-time.sh SRC, or NGINX_SOURCE_DIR=SRC scripts/build.sh)" >&2; exit 1; }
    lt_args=(--least-time)
else
    nginx=${NGINX:-build/sbin/nginx} module=build/modules/ngx_http_deep_sched_module.so
    [[ -x $nginx && -f $module ]] || { echo "lab-heldout.sh: build/ is missing: run scripts/build.sh" >&2; exit 1; }
fi
echo "lab-heldout: nginx $nginx ($("$nginx" -v 2>&1 | sed 's#.*/##')), module $module" >&2

# the command as a user would type it, for the reports
shown="scripts/lab-heldout.sh"
[[ -n "${LEAST_TIME_NGINX:-}" ]] && shown="LEAST_TIME_NGINX=<nginx-1.31 source>/objs/nginx $shown"
shown="DURATION=$duration REPS=$reps EXPLORE=$explore $shown --seeds $seeds${first:+ --first $first}"

results=${RESULTS:-results/heldout}
target/release/deep-sched-lab heldout --nginx "$nginx" --module "$module" --learner "$learner" \
    "${lt_args[@]}" --seeds "$seeds" ${first:+--first "$first"} \
    --duration "$duration" --reps "$reps" --explore "$explore" --results "$results" \
    --command "$shown" \
    ${LEARN_ARGS:+$(printf -- '--learn-arg=%s ' $LEARN_ARGS)}

if [[ "${BENCH:-1}" != 0 ]]; then
    scripts/bench-section.sh "held-out scenarios" "$(cat "$results/section.md")"
    echo "lab-heldout: BENCHMARKS.md section \"held-out scenarios\" written" >&2
fi
