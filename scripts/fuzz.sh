#!/usr/bin/env bash
# Fuzzes deep-sched-core's parsers with cargo-fuzz (libFuzzer + ASan):
#   policy_from_json   Policy::from_json_str, then the policy used as the module would
#   sample_record      one sample-log line as the learner reads it
# each for a bounded time, starting from crates/core/fuzz/seeds/<target>/.
# A crash leaves its input in crates/core/fuzz/artifacts/<target>/: minimise
# it (`cargo fuzz tmin`), copy it to crates/core/fuzz/regressions/<target>/
# and it is replayed by `cargo test --manifest-path crates/core/fuzz/Cargo.toml`.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default 60, both)
#
# cargo-fuzz needs nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them. Install once with `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../crates/core"

secs=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(policy_from_json sample_record)

command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1

status=0
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    mkdir -p "$corpus"
    cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz.sh: $t for ${secs}s"
    if ! cargo fuzz run "$t" "$corpus" -- -max_total_time="$secs" -max_len=65536 \
            -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>fuzz/"$t".log; then
        status=1
        echo "fuzz.sh: $t FAILED; input in crates/core/fuzz/artifacts/$t/" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written" fuzz/"$t".log >&2 || tail -n 30 fuzz/"$t".log >&2
    fi
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+.*DONE" fuzz/"$t".log || true
    echo "fuzz.sh: $t corpus $(ls "$corpus" | wc -l) inputs"
done
# The kept inputs still pass (stable toolchain).
unset RUSTC_BOOTSTRAP
cargo test --release --manifest-path fuzz/Cargo.toml -q
exit $status
