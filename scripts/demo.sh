#!/usr/bin/env bash
# The main job, end to end, on this machine:
#   1. install what is missing and build nginx 1.28 + deep_sched + the tools;
#   2. start three emulated backends of unequal capacity (8/8/3 workers,
#      exponential 10 ms service, 70% load: scenario S2);
#   3. explore with `deep_sched explore` (random weights from {1,3}, logged);
#   4. learn a policy with `deep-sched learn`;
#   5. serve with the learned policy and compare with round robin and
#      least_conn; print a short table and where the full report is.
#
#   scripts/demo.sh            ~2 min exploration, 2 x 30 s per balancer (~6-8 min)
#   scripts/demo.sh --quick    45 s exploration, 1 x 10 s per balancer (~2-3 min)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
exec scripts/lab-demo.sh "$@"
