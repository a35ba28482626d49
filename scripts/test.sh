#!/usr/bin/env bash
# Runs every test of deep_sched: installs what is missing, builds nginx and
# the module into build/, checks formatting and lints, then runs the unit and
# property tests of every crate and the end-to-end tests against a real nginx
# (plus the container tests when a Docker engine is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/build.sh
[[ -x scripts/build-system.sh ]] && { scripts/build.sh --system || echo "test.sh: packaged-nginx build failed; its test will say so"; }

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# One profile for everything: the module and nginx built above are reused.
cargo test --workspace --release --no-fail-fast
# The fuzz targets live in their own workspace (libFuzzer stays out of the
# main build); their kept inputs and seeds are replayed as ordinary tests.
cargo test --release --manifest-path crates/core/fuzz/Cargo.toml
