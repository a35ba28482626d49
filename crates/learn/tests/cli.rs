//! The `deep-sched` binary end to end: synth → learn → inspect → report,
//! and a bad input refused with file:line (or skipped with --skip-bad).

use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deep-sched"))
        .args(args)
        .current_dir(dir)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run deep-sched")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "deep-sched {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn synth_learn_inspect_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "synth",
            "--out",
            "s.jsonl",
            "--records",
            "800",
            "--seed",
            "4",
        ],
    );
    let learn_args = [
        "learn",
        "--kind",
        "table",
        "--samples",
        "s.jsonl",
        "--out",
        "p.json",
        "--states",
        "4",
        "--seed",
        "2",
        "--created",
        "2026-01-01T00:00:00Z",
    ];
    let summary = ok(d, &learn_args);
    for needle in [
        "mean log-likelihood",
        "BIC",
        "state occupancy",
        "pairs seen",
        "uniform",
        "capacity per peer",
    ] {
        assert!(summary.contains(needle), "no '{needle}' in:\n{summary}");
    }
    let first = std::fs::read(d.join("p.json")).unwrap();
    // Same inputs and seed: the same bytes.
    ok(d, &learn_args);
    assert_eq!(first, std::fs::read(d.join("p.json")).unwrap());

    let table = ok(d, &["inspect", "p.json"]);
    assert!(table.contains("4 states"), "{table}");
    // One table row per state, each naming the upstream's weights.
    let rows = table.lines().filter(|l| l.contains("backend=(")).count();
    assert_eq!(rows, 4, "{table}");
    assert!(table.contains("em_log_likelihood: "), "{table}");

    let files = ok(
        d,
        &[
            "report",
            "--samples",
            "s.jsonl",
            "--policy",
            "p.json",
            "--out",
            "plots",
        ],
    );
    assert_eq!(files.lines().count(), 4, "{files}");
    for f in files.lines() {
        let bytes = std::fs::read(d.join(f)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{f}");
    }
}

#[test]
fn bad_record_is_refused_with_file_and_line_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "synth",
            "--out",
            "s.jsonl",
            "--records",
            "300",
            "--seed",
            "1",
        ],
    );
    let mut text = std::fs::read_to_string(d.join("s.jsonl")).unwrap();
    let third = text.lines().nth(2).unwrap().to_owned();
    text = text.replacen(&third, &third[..third.len() / 3], 1);
    std::fs::write(d.join("s.jsonl"), text).unwrap();
    let args = [
        "learn",
        "--samples",
        "s.jsonl",
        "--out",
        "p.json",
        "--states",
        "3",
    ];
    let out = run(d, &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s.jsonl:3: "), "{err}");
    assert!(!d.join("p.json").exists());

    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    let summary = ok(d, &skip);
    assert!(summary.contains("299 read, 1 skipped"), "{summary}");
}

/// `learn --kind per-peer` (the default) writes a version-2 policy, prints
/// one line per state with its decision, and `inspect` reads it.
#[test]
fn per_peer_learn_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "synth",
            "--out",
            "s.jsonl",
            "--records",
            "600",
            "--seed",
            "3",
        ],
    );
    let summary = ok(
        d,
        &[
            "learn",
            "--kind",
            "per-peer",
            "--samples",
            "s.jsonl",
            "--out",
            "pp.json",
            "--states",
            "3",
            "--created",
            "2026-01-01T00:00:00Z",
        ],
    );
    for needle in [
        "baseline",
        "per-peer rows",
        "decision",
        "per-peer, 3 states",
    ] {
        assert!(summary.contains(needle), "'{needle}' not in:\n{summary}");
    }
    let lines = summary
        .lines()
        .filter(|l| l.contains(" — kept: ") || l.contains(" — changed: "))
        .count();
    assert_eq!(lines, 3, "one decision line per state:\n{summary}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("pp.json")).unwrap()).unwrap();
    assert_eq!(
        (doc["version"].as_u64(), doc["kind"].as_str()),
        (Some(2), Some("per_peer"))
    );
    let inspect = ok(d, &["inspect", "pp.json"]);
    assert!(
        inspect.contains("per_peer") && inspect.contains("multiplier"),
        "{inspect}"
    );
    // The default kind; "auto" is the default number of states.
    let summary = ok(
        d,
        &[
            "learn",
            "--samples",
            "s.jsonl",
            "--out",
            "x.json",
            "--states",
            "auto",
        ],
    );
    assert!(summary.contains("per-peer, 4 states"), "{summary}");
    let out = run(
        d,
        &[
            "learn",
            "--samples",
            "s.jsonl",
            "--out",
            "y.json",
            "--states",
            "many",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--states many"));
}
