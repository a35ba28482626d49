#!/usr/bin/env bash
# Runs every test of deep_sched: installs what is missing, builds nginx and
# the module into build/, checks formatting and lints, then runs the unit and
# property tests of every crate, the loom model check of the decision's
# publication, and the end-to-end tests against a real nginx
# (plus the container tests when a Docker engine is reachable), and the
# quick demo (scripts/test-demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/build.sh
[[ -x scripts/build-system.sh ]] && { scripts/build.sh --system || echo "test.sh: packaged-nginx build failed; its test will say so"; }

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# One profile for everything: the module and nginx built above are reused.
# The fuzz targets live in their own workspace (libFuzzer stays out of the
# main build); their kept inputs and seeds are replayed as ordinary tests.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release --no-fail-fast 2>&1 | tee -a "$log" || status=1
cargo test --release --manifest-path crates/core/fuzz/Cargo.toml 2>&1 | tee -a "$log" || status=1
# The decision's publication protocol, model-checked with loom (every
# interleaving and weak-memory outcome); its own target dir, since the cfg
# changes every crate's build.
RUSTFLAGS="--cfg loom" cargo test -p deep-sched-core --lib --target-dir target/loom publish::loom_tests 2>&1 \
    | tee -a "$log" || status=1
# The main job end to end (scripts/demo.sh --quick, ~3 min), checked.
scripts/test-demo.sh 2>&1 | tee -a "$log" || status=1
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit $status
