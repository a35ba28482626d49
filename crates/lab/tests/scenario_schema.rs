//! `policies/scenario.schema.json` checked by the reference draft 2020-12
//! validator (Python's `jsonschema`, as `crates/core/tests/schema_reference.rs`
//! does for the other schemas): every generated scenario is valid, and
//! documents out of the generator's ranges are refused.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use deep_sched_lab::generate::generate;
use serde_json::Value;

const VALIDATOR: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema)
docs = json.load(sys.stdin)
print(json.dumps([[f"{e.json_path}: {e.message}" for e in v.iter_errors(d)] for d in docs]))
"#;

fn reference_errors(docs: &[Value]) -> Vec<Vec<String>> {
    let schema =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies/scenario.schema.json");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(VALIDATOR)
        .arg(&schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to check the JSON Schemas");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(Value::from(docs.to_vec()).to_string().as_bytes())
        .expect("python3 reads the documents");
    let out = child.wait_with_output().expect("python3 runs");
    assert!(
        out.status.success(),
        "the validator failed (python3 needs the jsonschema package): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the validator prints a JSON list")
}

/// Changes a valid document into one the schema must refuse.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn generated_scenarios_are_schema_valid_and_out_of_range_ones_are_not() {
    let seeds: Vec<u64> = (0..400).chain([u64::MAX, 1 << 40]).collect();
    let docs: Vec<Value> = seeds
        .iter()
        .map(|&s| serde_json::to_value(generate(s)).unwrap())
        .collect();
    for (seed, errors) in seeds.iter().zip(reference_errors(&docs)) {
        assert!(errors.is_empty(), "seed {seed}: {errors:?}");
    }
    let base = serde_json::to_value(generate(3)).unwrap();
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "one peer",
            Box::new(|d| d["peers"].as_array_mut().unwrap().truncate(1)),
        ),
        (
            "13 workers",
            Box::new(|d| d["peers"][0]["workers"] = 13.into()),
        ),
        ("load 0.95", Box::new(|d| d["load"] = 0.95.into())),
        (
            "two request types",
            Box::new(|d| d["request_types"] = serde_json::json!(["home", "user"])),
        ),
        (
            "unknown kind",
            Box::new(|d| d["affected"] = serde_json::json!({"peer": 0, "kind": "dead"})),
        ),
        (
            "noisy factor 20",
            Box::new(
                |d| d["affected"] = serde_json::json!({"peer": 0, "kind": "noisy", "factor": 20, "period_s": 15, "slow_for_s": 5}),
            ),
        ),
        (
            "gamma service",
            Box::new(|d| d["service"]["home"] = "gamma:3".into()),
        ),
        ("extra key", Box::new(|d| d["extra"] = 1.into())),
        (
            "wrong format",
            Box::new(|d| d["format"] = "deep_sched.policy".into()),
        ),
    ];
    let bad: Vec<Value> = mutations
        .iter()
        .map(|(_, m)| {
            let mut d = base.clone();
            m(&mut d);
            d
        })
        .collect();
    for ((what, _), errors) in mutations.iter().zip(reference_errors(&bad)) {
        assert!(!errors.is_empty(), "{what}: accepted by the schema");
    }
}

#[test]
fn the_cli_prints_the_generated_scenario_and_refuses_a_bad_seed() {
    let lab = env!("CARGO_BIN_EXE_deep-sched-lab");
    let out = Command::new(lab)
        .args(["scenario", "1001"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, serde_json::to_value(generate(1001)).unwrap());
    assert_eq!(reference_errors(&[printed]), vec![Vec::<String>::new()]);
    for bad in ["x", "-1", "1.5"] {
        let out = Command::new(lab).args(["scenario", bad]).output().unwrap();
        assert!(!out.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
    }
}
