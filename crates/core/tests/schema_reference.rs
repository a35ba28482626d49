//! The JSON Schemas in `policies/` checked by a reference draft 2020-12
//! validator (Python's `jsonschema`, the implementation the JSON Schema
//! project tests against) instead of the key-only walk of `schema.rs`:
//!
//! - what the code writes (example policies after a round trip, sample
//!   records of every mode) is valid;
//! - the code and the schema agree on a set of mutated documents: each is
//!   refused by both or accepted by both, so the schema is exactly as strict
//!   as the serde types on everything a schema can express.
//!
//! No Rust crate does this without a long build on our machines; the
//! validator runs as one `python3` process per test, fed on stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use deep_sched_core::counters::{latency_bucket, PeerCounters};
use deep_sched_core::decision::{Decider, Mode};
use deep_sched_core::perpeer::PerPeerPolicy;
use deep_sched_core::policy::{LoadedPolicy, Policy};
use deep_sched_core::samples::SampleRecord;
use rand::SeedableRng;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const VALIDATOR: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema)
docs = json.load(sys.stdin)
print(json.dumps([[f"{e.json_path}: {e.message}" for e in v.iter_errors(d)] for d in docs]))
"#;

/// The reference validator's errors for each document (empty: valid).
fn reference_errors(schema: &str, docs: &[Value]) -> Vec<Vec<String>> {
    let schema_path = root().join("policies").join(schema);
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(VALIDATOR)
        .arg(&schema_path)
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
        "the reference validator failed on {} (python3 needs the jsonschema package): {}",
        schema_path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the validator prints a JSON list")
}

fn example() -> Value {
    serde_json::from_str(include_str!("../../../policies/examples/three-peers.json")).unwrap()
}

#[test]
fn policies_the_code_accepts_and_writes_are_schema_valid() {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(root().join("policies/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = LoadedPolicy::from_json_str(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        docs.push(serde_json::from_str::<Value>(&text).unwrap());
        docs.push(match policy {
            LoadedPolicy::Table(p) => serde_json::to_value(p.to_document()).unwrap(),
            LoadedPolicy::PerPeer(p) => serde_json::to_value(p.document()).unwrap(),
        });
    }
    // The other covariance forms the code reads.
    let mut diag_prec = example();
    let k = diag_prec["gmm"]["weights"].as_array().unwrap().len();
    let d = diag_prec["features"].as_array().unwrap().len();
    diag_prec["gmm"]["covariance"] = json!("diag");
    diag_prec["gmm"]
        .as_object_mut()
        .unwrap()
        .remove("covariances");
    diag_prec["gmm"]["precisions_cholesky"] = json!(vec![vec![1.5; d]; k]);
    let ident: Vec<Vec<f64>> = (0..d)
        .map(|i| (0..d).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    let mut full = example();
    full["gmm"]["covariance"] = json!("full");
    full["gmm"]["covariances"] = json!(vec![ident; k]);
    for doc in [diag_prec, full] {
        Policy::from_json_str(&doc.to_string(), "variant").unwrap_or_else(|e| panic!("{e}"));
        docs.push(doc);
    }
    for (doc, errors) in docs
        .iter()
        .zip(reference_errors("policy.schema.json", &docs))
    {
        assert!(errors.is_empty(), "{errors:#?}\nin {doc}");
    }
}

fn per_peer_example() -> Value {
    serde_json::from_str(include_str!("../../../policies/examples/per-peer.json")).unwrap()
}

#[test]
fn schema_and_code_refuse_the_same_per_peer_documents() {
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut d = per_peer_example();
        f(&mut d);
        d
    };
    let cases: Vec<(&str, Value, bool)> = vec![
        ("unchanged", per_peer_example(), true),
        ("kind", edit(&|d| d["kind"] = json!("per_request")), false),
        (
            "no kind",
            edit(&|d| drop(d.as_object_mut().unwrap().remove("kind"))),
            false,
        ),
        ("version 1", edit(&|d| d["version"] = json!(1)), false),
        (
            "multiplier 0",
            edit(&|d| d["multipliers"][0] = json!(0.0)),
            false,
        ),
        (
            "multiplier huge",
            edit(&|d| d["multipliers"][0] = json!(1e4)),
            false,
        ),
        (
            "multiplier string",
            edit(&|d| d["multipliers"][0] = json!("1")),
            false,
        ),
        (
            "default 0.001",
            edit(&|d| d["default_multiplier"] = json!(0.001)),
            true,
        ),
        (
            "unknown feature",
            edit(&|d| d["peer_features"][0] = json!("vibes")),
            false,
        ),
        (
            "subset of features",
            edit(&|d| {
                d["peer_features"] = json!(["latency_ratio"]);
                d["standardization"] = json!({"mean": [0.0], "std": [1.0]});
                let k = d["multipliers"].as_array().unwrap().len();
                d["gmm"]["means"] = json!(vec![vec![0.0]; k]);
                d["gmm"]["covariances"] = json!(vec![vec![1.0]; k]);
            }),
            true,
        ),
        (
            "no baseline",
            edit(&|d| drop(d.as_object_mut().unwrap().remove("baseline"))),
            false,
        ),
        (
            "baseline source",
            edit(&|d| d["baseline"]["source"] = json!("oracle")),
            false,
        ),
        (
            "baseline negative",
            edit(&|d| d["baseline"]["weights"]["backend"]["127.0.0.1:18081"] = json!(-1.0)),
            false,
        ),
        (
            "configured",
            edit(&|d| d["baseline"] = json!({"source": "configured"})),
            true,
        ),
        (
            "no peers listed",
            edit(&|d| d["agent"]["upstreams"][0]["peers"] = json!([])),
            true,
        ),
        ("unknown key", edit(&|d| d["table"] = json!([0])), false),
        (
            "ood null",
            edit(&|d| d["ood_log_likelihood"] = Value::Null),
            true,
        ),
    ];
    let docs: Vec<Value> = cases.iter().map(|(_, d, _)| d.clone()).collect();
    let reference = reference_errors("policy.schema.json", &docs);
    let mut disagreements = Vec::new();
    for ((name, doc, valid), errors) in cases.iter().zip(&reference) {
        let code = PerPeerPolicy::from_json_str(&doc.to_string(), name);
        if code.is_ok() != *valid {
            disagreements.push(format!("{name}: the code says {:?}", code.err()));
        }
        if errors.is_empty() != *valid {
            disagreements.push(format!("{name}: the schema says {errors:?}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// A copy of the example with `edit` applied.
fn edited(edit: impl FnOnce(&mut Value)) -> Value {
    let mut doc = example();
    edit(&mut doc);
    doc
}

#[test]
fn schema_and_code_refuse_the_same_documents() {
    // Mutations a schema can see (types, keys, enums, ranges), each with
    // whether it is still a valid policy.
    let cases: Vec<(&str, Value, bool)> = vec![
        ("unchanged", example(), true),
        (
            "wrong format",
            edited(|d| d["format"] = json!("policy")),
            false,
        ),
        ("version 2", edited(|d| d["version"] = json!(2)), false),
        (
            "interval 99",
            edited(|d| d["interval_ms"] = json!(99)),
            false,
        ),
        (
            "interval 100",
            edited(|d| d["interval_ms"] = json!(100)),
            true,
        ),
        (
            "interval too long",
            edited(|d| d["interval_ms"] = json!(3_600_001)),
            false,
        ),
        (
            "interval as text",
            edited(|d| d["interval_ms"] = json!("2000")),
            false,
        ),
        ("unknown key", edited(|d| d["extra"] = json!(1)), false),
        (
            "unknown agent key",
            edited(|d| d["agent"]["extra"] = json!(1)),
            false,
        ),
        (
            "unknown feature key",
            edited(|d| d["features"][0]["scale"] = json!(1)),
            false,
        ),
        (
            "unknown metric",
            edited(|d| d["features"][0]["metric"] = json!("vibes")),
            false,
        ),
        (
            "unknown transform",
            edited(|d| d["features"][0]["transform"] = json!("log")),
            false,
        ),
        (
            "transform omitted",
            edited(|d| {
                d["features"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("transform");
            }),
            true,
        ),
        (
            "peer omitted",
            edited(|d| {
                d["features"][0].as_object_mut().unwrap().remove("peer");
            }),
            false,
        ),
        (
            "negative peer",
            edited(|d| d["features"][0]["peer"] = json!(-1)),
            false,
        ),
        (
            "no upstreams",
            edited(|d| d["agent"]["upstreams"] = json!([])),
            false,
        ),
        (
            "empty upstream name",
            edited(|d| d["agent"]["upstreams"][0]["name"] = json!("")),
            false,
        ),
        (
            "no peers",
            edited(|d| d["agent"]["upstreams"][0]["peers"] = json!([])),
            false,
        ),
        ("no features", edited(|d| d["features"] = json!([])), false),
        (
            "std zero",
            edited(|d| d["standardization"]["std"][0] = json!(0.0)),
            false,
        ),
        (
            "std negative",
            edited(|d| d["standardization"]["std"][0] = json!(-1.0)),
            false,
        ),
        (
            "mixture weight zero",
            edited(|d| d["gmm"]["weights"][0] = json!(0.0)),
            false,
        ),
        (
            "unknown covariance kind",
            edited(|d| d["gmm"]["covariance"] = json!("spherical")),
            false,
        ),
        (
            "no covariances",
            edited(|d| {
                d["gmm"].as_object_mut().unwrap().remove("covariances");
            }),
            false,
        ),
        (
            "both covariances and precisions",
            edited(|d| d["gmm"]["precisions_cholesky"] = d["gmm"]["covariances"].clone()),
            false,
        ),
        ("no actions", edited(|d| d["actions"] = json!([])), false),
        (
            "action weight 0",
            edited(|d| d["actions"][0]["weights"][0][0] = json!(0)),
            false,
        ),
        (
            "action weight 1000",
            edited(|d| d["actions"][0]["weights"][0][0] = json!(1000)),
            true,
        ),
        (
            "action weight 1001",
            edited(|d| d["actions"][0]["weights"][0][0] = json!(1001)),
            false,
        ),
        (
            "fractional action weight",
            edited(|d| d["actions"][0]["weights"][0][0] = json!(1.5)),
            false,
        ),
        (
            "unknown action key",
            edited(|d| d["actions"][0]["name"] = json!("x")),
            false,
        ),
        (
            "negative table entry",
            edited(|d| d["table"][0] = json!(-1)),
            false,
        ),
        (
            "negative default action",
            edited(|d| d["default_action"] = json!(-1)),
            false,
        ),
        (
            "ood threshold null",
            edited(|d| d["ood_log_likelihood"] = Value::Null),
            true,
        ),
        (
            "ood threshold omitted",
            edited(|d| {
                d.as_object_mut().unwrap().remove("ood_log_likelihood");
            }),
            false,
        ),
        (
            "ood threshold as text",
            edited(|d| d["ood_log_likelihood"] = json!("-50")),
            false,
        ),
        (
            "unknown scaling advice",
            edited(|d| d["scaling"][0] = json!("grow")),
            false,
        ),
        (
            "scaling omitted",
            edited(|d| {
                d.as_object_mut().unwrap().remove("scaling");
            }),
            true,
        ),
        (
            "provenance omitted",
            edited(|d| {
                d.as_object_mut().unwrap().remove("provenance");
            }),
            true,
        ),
        (
            "provenance not an object",
            edited(|d| d["provenance"] = json!("learner")),
            false,
        ),
    ];
    let docs: Vec<Value> = cases.iter().map(|(_, d, _)| d.clone()).collect();
    let reference = reference_errors("policy.schema.json", &docs);
    let mut disagreements = Vec::new();
    for ((name, doc, valid), schema_errors) in cases.iter().zip(&reference) {
        let code = Policy::from_json_str(&doc.to_string(), name);
        if code.is_ok() != *valid {
            disagreements.push(format!(
                "{name}: the code says {:?}, expected valid = {valid}",
                code.err().map(|e| e.to_string())
            ));
        }
        if schema_errors.is_empty() != *valid {
            disagreements.push(format!(
                "{name}: the schema says {schema_errors:?}, expected valid = {valid}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

fn cumulative(latencies_ms: [u64; 3], n: u64) -> Vec<Vec<PeerCounters>> {
    vec![latencies_ms
        .iter()
        .map(|&ms| {
            let mut c = PeerCounters {
                requests: n,
                response_msec: n * ms,
                out_bytes: n * 200,
                in_bytes: n * 1000,
                inflight: 2,
                ..PeerCounters::default()
            };
            c.responses = [0, n - 1, 0, 0, 1];
            c.latency_hist[latency_bucket(ms)] = n;
            c
        })
        .collect()]
}

#[test]
fn sample_records_of_every_mode_are_schema_valid_and_read_back() {
    let policy = Arc::new(
        Policy::load(
            root()
                .join("policies/examples/three-peers.json")
                .to_str()
                .unwrap(),
        )
        .unwrap(),
    );
    let shape = policy.shape().clone();
    let upstreams: Vec<(String, Vec<String>)> = shape
        .upstreams
        .iter()
        .map(|u| (u.name.clone(), u.peers.clone()))
        .collect();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let per_peer = Arc::new(
        PerPeerPolicy::from_json_str(&per_peer_example().to_string(), "per-peer").unwrap(),
    );
    let modes = [
        (None, Mode::Perturb { spread: 0.5 }),
        (
            None,
            Mode::PerPeer {
                policy: per_peer.clone(),
                epsilon: 0.0,
            },
        ),
        (
            Some(0.3),
            Mode::PerPeer {
                policy: per_peer,
                epsilon: 1.0,
            },
        ),
        (
            Some(0.3),
            Mode::Policy {
                policy: policy.clone(),
                epsilon: 1.0,
            },
        ),
        (None, Mode::Observe),
        (
            None,
            Mode::Explore {
                weights: vec![1, 3, 5],
            },
        ),
        (
            None,
            Mode::Policy {
                policy: policy.clone(),
                epsilon: 0.0,
            },
        ),
        (
            None,
            Mode::Policy {
                policy,
                epsilon: 1.0,
            },
        ),
    ];
    let mut lines = Vec::new();
    for (spread, mode) in modes {
        let mut decider = Decider::new(mode, "backend", upstreams.clone(), vec![vec![1, 1, 1]])
            .with_spread(spread);
        let mut prev = vec![vec![PeerCounters::default(); 3]];
        for (seq, slow) in [(1u64, 5u64), (2, 300)] {
            let cur = cumulative([5, 5, slow], 100 * seq);
            let x = decider.decide(
                &prev,
                &cur,
                2000,
                &[vec![1, 1, 1]],
                1_763_856_000_000 + seq,
                seq,
                &mut rng,
            );
            prev = cur;
            let line = serde_json::to_string(&x.sample).unwrap();
            let back: SampleRecord = serde_json::from_str(&line).unwrap();
            assert_eq!(back, x.sample, "a sample line reads back as written");
            lines.push(serde_json::from_str::<Value>(&line).unwrap());
        }
    }
    let reference = reference_errors("samples.schema.json", &lines);
    for (line, errors) in lines.iter().zip(reference) {
        assert!(errors.is_empty(), "{errors:#?}\nin {line}");
    }

    // The reader and the schema agree on edited lines: (name, line, valid).
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut line = lines[0].clone();
        f(&mut line);
        line
    };
    let remove = |key: &'static str| edit(&move |l| drop(l.as_object_mut().unwrap().remove(key)));
    let cases: Vec<(&str, Value, bool)> = vec![
        ("unchanged", lines[0].clone(), true),
        ("state null", edit(&|l| l["state"] = Value::Null), true),
        ("state omitted", remove("state"), false),
        ("log_likelihood omitted", remove("log_likelihood"), false),
        ("action omitted", remove("action"), false),
        ("ood omitted", remove("ood"), true),
        ("explored omitted", remove("explored"), false),
        (
            "short histogram",
            edit(&|l| l["upstreams"][0]["peers"][0]["latency_hist"] = json!([1, 2, 3])),
            false,
        ),
        (
            "four response classes",
            edit(&|l| l["upstreams"][0]["peers"][0]["responses"] = json!([1, 2, 3, 4])),
            false,
        ),
        (
            "negative count",
            edit(&|l| l["upstreams"][0]["peers"][0]["requests"] = json!(-1)),
            false,
        ),
        (
            "with health",
            edit(&|l| {
                l["upstreams"][0]["peers"][0]["health"] = json!({
                    "state": "down", "passes": 0, "fails": 3, "latency_ms": 1000,
                    "error": "timeout"
                })
            }),
            true,
        ),
        (
            "health that passed",
            edit(&|l| {
                l["upstreams"][0]["peers"][0]["health"] = json!({
                    "state": "up", "passes": 2, "fails": 0, "latency_ms": 1, "error": null
                })
            }),
            true,
        ),
        (
            "health without its state",
            edit(&|l| {
                l["upstreams"][0]["peers"][0]["health"] =
                    json!({"passes": 2, "fails": 0, "latency_ms": 1, "error": null})
            }),
            false,
        ),
    ];
    let docs: Vec<Value> = cases.iter().map(|(_, d, _)| d.clone()).collect();
    let reference = reference_errors("samples.schema.json", &docs);
    let mut disagreements = Vec::new();
    for ((name, line, valid), schema_errors) in cases.iter().zip(&reference) {
        let code = serde_json::from_value::<SampleRecord>(line.clone());
        if code.is_ok() != *valid {
            disagreements.push(format!("{name}: the reader says {:?}", code.err()));
        }
        if schema_errors.is_empty() != *valid {
            disagreements.push(format!("{name}: the schema says {schema_errors:?}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
