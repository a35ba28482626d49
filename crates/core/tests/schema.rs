//! The JSON Schemas in `policies/` describe what the code reads and writes:
//! every key a serialised document has is declared at its place in the
//! schema, every key the schema requires is there, and the shipped example
//! policies validate.

use std::path::PathBuf;

use deep_sched_core::decision::{Decider, Mode};
use deep_sched_core::policy::Policy;
use rand::SeedableRng;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schema(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("policies").join(name)).unwrap())
        .unwrap()
}

/// Checks `doc` against the parts of a JSON Schema that concern keys:
/// `properties`, `required`, `additionalProperties: false`, `items`.
fn check_keys(schema: &Value, doc: &Value, path: &str, errors: &mut Vec<String>) {
    match doc {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let k = req.as_str().unwrap();
                if !map.contains_key(k) {
                    errors.push(format!("{path}: required key \"{k}\" missing"));
                }
            }
            for (k, v) in map {
                match props.and_then(|p| p.get(k)) {
                    Some(sub) => check_keys(sub, v, &format!("{path}.{k}"), errors),
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false))
                        || props.is_some() =>
                    {
                        errors.push(format!("{path}: key \"{k}\" not in the schema"))
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check_keys(sub, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn example_policies_validate_and_match_the_schema() {
    let s = schema("policy.schema.json");
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("policies/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = Policy::from_json_str(&text, &path.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        // Round trip through the document type, then against the schema.
        let doc = serde_json::to_value(policy.to_document()).unwrap();
        let mut errors = Vec::new();
        check_keys(&s, &doc, "$", &mut errors);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        n += 1;
    }
    assert!(n >= 1);
}

#[test]
fn schema_rejects_what_the_code_would_not_write() {
    // The checker above is not vacuous: a stray key is reported.
    let s = schema("policy.schema.json");
    let mut doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("policies/examples/three-peers.json")).unwrap(),
    )
    .unwrap();
    doc["gmm"]["surprise"] = Value::from(1);
    let mut errors = Vec::new();
    check_keys(&s, &doc, "$", &mut errors);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("$.gmm"));
}

#[test]
fn sample_records_match_the_schema() {
    let s = schema("samples.schema.json");
    let policy = std::sync::Arc::new(
        Policy::load(
            root()
                .join("policies/examples/three-peers.json")
                .to_str()
                .unwrap(),
        )
        .unwrap(),
    );
    let peers: Vec<String> = policy.shape().upstreams[0].peers.clone();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    for mode in [
        Mode::Observe,
        Mode::Explore {
            weights: vec![1, 3, 5],
        },
        Mode::Policy {
            policy: policy.clone(),
            epsilon: 0.0,
        },
    ] {
        let mut d = Decider::new(
            mode,
            "a",
            vec![("backend".into(), peers.clone())],
            vec![vec![1, 1, 1]],
        );
        let zero = vec![vec![Default::default(); 3]];
        let x = d.decide(&zero, &zero, 1000, &[vec![1, 1, 1]], 1, 1, &mut rng);
        let doc = serde_json::to_value(&x.sample).unwrap();
        let mut errors = Vec::new();
        check_keys(&s, &doc, "$", &mut errors);
        assert!(errors.is_empty(), "{errors:#?}");
    }
}
