//! Replays every kept input: the seeds (valid documents the fuzzers start
//! from) and the regressions (inputs that once crashed a target, minimised).
//! Runs on stable: `cargo test --manifest-path crates/core/fuzz/Cargo.toml`.

use std::path::Path;

fn replay(dir: &str, target: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.file_name().is_some_and(|f| f == ".gitkeep") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            target(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn policy_inputs_replay() {
    assert!(replay("policy_from_json", deep_sched_core_fuzz::policy_from_json) > 0);
}

#[test]
fn sample_inputs_replay() {
    assert!(replay("sample_record", deep_sched_core_fuzz::sample_record) > 0);
}
