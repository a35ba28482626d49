//! Bad policy files: every one is refused with the JSON path and the problem.

use deep_sched_core::policy::{Policy, PolicyDocument};
use serde_json::{json, Value};

fn good() -> Value {
    serde_json::from_str(include_str!("../../../policies/examples/three-peers.json")).unwrap()
}

fn with(path: &[&str], value: Value) -> String {
    let mut doc = good();
    let mut cur = &mut doc;
    for key in &path[..path.len() - 1] {
        cur = match key.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[*key],
        };
    }
    let last = path[path.len() - 1];
    match last.parse::<usize>() {
        Ok(i) => cur[i] = value,
        Err(_) => cur[last] = value,
    }
    doc.to_string()
}

fn without(path: &[&str]) -> String {
    let mut doc = good();
    let mut cur = &mut doc;
    for key in &path[..path.len() - 1] {
        cur = &mut cur[*key];
    }
    cur.as_object_mut().unwrap().remove(path[path.len() - 1]);
    doc.to_string()
}

#[test]
fn the_example_is_valid() {
    let p = Policy::from_json_str(&good().to_string(), "ex.json").unwrap();
    assert_eq!(p.states(), 5);
    assert_eq!(
        p.check_upstream(
            "backend",
            &["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"]
        )
        .unwrap()
        .0,
        0
    );
}

#[test]
fn bad_policies_name_the_path_and_the_problem() {
    let text = good().to_string();
    // Full covariances, identity but for component 2 ([[1,2],[2,1]] block).
    let mut gmm = good()["gmm"].clone();
    let ident: Vec<Vec<f64>> = (0..6)
        .map(|i| (0..6).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    let mut bad = ident.clone();
    bad[0][1] = 2.0;
    bad[1][0] = 2.0;
    gmm["covariance"] = json!("full");
    gmm["covariances"] = json!([ident, ident, bad, ident, ident]);
    let cov_full = gmm;
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("empty", String::new(), "$", "empty"),
        (
            "truncated",
            text[..text.len() / 3].to_owned(),
            "",
            "ends early",
        ),
        (
            "not an object",
            "[1,2]".into(),
            "$",
            "expected a JSON object",
        ),
        (
            "garbage",
            "policy = yes".into(),
            "$",
            "expected a JSON object",
        ),
        (
            "format",
            with(&["format"], json!("x")),
            "format",
            "expected \"deep_sched.policy\"",
        ),
        (
            "version",
            with(&["version"], json!(2)),
            "version",
            "unsupported version 2",
        ),
        (
            "version type",
            with(&["version"], json!("1")),
            "version",
            "invalid type",
        ),
        (
            "interval",
            with(&["interval_ms"], json!(50)),
            "interval_ms",
            "outside",
        ),
        (
            "unknown key",
            with(&["colour"], json!("red")),
            "colour",
            "unknown field",
        ),
        (
            "unknown nested key",
            with(&["gmm", "colour"], json!(1)),
            "gmm.colour",
            "unknown field",
        ),
        (
            "missing table",
            without(&["table"]),
            "$",
            "missing field `table`",
        ),
        (
            "duplicate key",
            text.replacen("\"version\":1", "\"version\":1,\"version\":1", 1),
            "$",
            "duplicate field `version`",
        ),
        (
            "huge number",
            text.replacen("0.25", "1e400", 1),
            "gmm.covariances",
            "out of range",
        ),
        (
            "nan string",
            with(&["gmm", "means", "0", "0"], json!("NaN")),
            "gmm.means[0][0]",
            "invalid type: string \"NaN\", expected f64",
        ),
        (
            "duplicate upstream",
            with(
                &["agent", "upstreams"],
                json!([
                    {"name": "backend", "peers": ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"]},
                    {"name": "backend", "peers": ["127.0.0.1:18084"]}
                ]),
            ),
            "agent.upstreams[1].name",
            "upstream \"backend\" is listed twice",
        ),
        (
            "no upstreams",
            with(&["agent", "upstreams"], json!([])),
            "agent.upstreams",
            "no upstreams",
        ),
        (
            "duplicate peer",
            with(
                &["agent", "upstreams", "0", "peers"],
                json!(["a", "a", "b"]),
            ),
            "agent.upstreams[0].peers[1]",
            "twice",
        ),
        (
            "feature upstream",
            with(&["features", "0", "upstream"], json!(3)),
            "features[0].upstream",
            "out of range",
        ),
        (
            "feature peer",
            with(&["features", "1", "peer"], json!(7)),
            "features[1].peer",
            "out of range",
        ),
        (
            "metric",
            with(&["features", "0", "metric"], json!("vibes")),
            "features[0].metric",
            "unknown variant",
        ),
        (
            "std length",
            with(&["standardization", "std"], json!([1.0])),
            "standardization.std",
            "1 values for 6 features",
        ),
        (
            "std zero",
            with(&["standardization", "std", "2"], json!(0.0)),
            "standardization.std[2]",
            "positive",
        ),
        (
            "weights sum",
            with(&["gmm", "weights", "0"], json!(0.5)),
            "gmm.weights",
            "sum to",
        ),
        (
            "negative weight",
            with(&["gmm", "weights", "0"], json!(-0.6)),
            "gmm.weights[0]",
            "positive",
        ),
        (
            "means count",
            with(&["gmm", "means"], json!([vec![0.0; 6]])),
            "gmm.means",
            "1 means for 5 components",
        ),
        (
            "mean length",
            with(&["gmm", "means", "2"], json!([0.0, 1.0])),
            "gmm.means[2]",
            "2 values for 6 features",
        ),
        (
            "variance",
            with(&["gmm", "covariances", "3", "1"], json!(-0.01)),
            "gmm.covariances[3]",
            "positive definite",
        ),
        (
            "cov shape",
            with(&["gmm", "covariances", "0"], json!([[1.0]])),
            "gmm.covariances",
            "expected [K][D][D]",
        ),
        (
            "both cov forms",
            with(&["gmm", "precisions_cholesky"], json!([[1.0]])),
            "gmm",
            "not both",
        ),
        ("no cov", without(&["gmm", "covariances"]), "gmm", "missing"),
        (
            "not PD full",
            with(&["gmm"], cov_full),
            "gmm.covariances[2]",
            "positive definite",
        ),
        (
            "no actions",
            with(&["actions"], json!([])),
            "actions",
            "no actions",
        ),
        (
            "action upstreams",
            with(&["actions", "1", "weights"], json!([[1, 1, 1], [1, 1, 1]])),
            "actions[1].weights",
            "2 upstreams",
        ),
        (
            "action peers",
            with(&["actions", "1", "weights", "0"], json!([1, 1])),
            "actions[1].weights[0]",
            "2 weights for 3 peers",
        ),
        (
            "action weight",
            with(&["actions", "2", "weights", "0", "1"], json!(5000)),
            "actions[2].weights[0][1]",
            "outside 1..=1000",
        ),
        (
            "negative weight int",
            with(&["actions", "2", "weights", "0", "1"], json!(-1)),
            "actions[2].weights[0][1]",
            "invalid value",
        ),
        (
            "table length",
            with(&["table"], json!([0, 1])),
            "table",
            "2 entries for 5 states",
        ),
        (
            "table range",
            with(&["table", "4"], json!(9)),
            "table[4]",
            "action 9 out of range",
        ),
        (
            "default",
            with(&["default_action"], json!(4)),
            "default_action",
            "out of range",
        ),
        (
            "scaling length",
            with(&["scaling"], json!(["add"])),
            "scaling",
            "1 entries for 5 states",
        ),
        (
            "scaling value",
            with(&["scaling", "0"], json!("grow")),
            "scaling[0]",
            "unknown variant",
        ),
    ];
    assert!(cases.len() >= 25);
    for (name, body, path, needle) in cases {
        let e = Policy::from_json_str(&body, "bad.json").expect_err(name);
        let msg = e.to_string();
        assert!(msg.starts_with("policy \"bad.json\": at "), "{name}: {msg}");
        assert!(
            e.path.contains(path),
            "{name}: path {} does not contain {path}: {msg}",
            e.path
        );
        assert!(msg.contains(needle), "{name}: '{needle}' not in {msg}");
    }
}

#[test]
fn upstream_mismatch_is_matched_by_identity_and_explained() {
    let p = Policy::from_json_str(&good().to_string(), "p.json").unwrap();
    // Exact.
    let (u, m) = p
        .check_upstream(
            "backend",
            &["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"],
        )
        .unwrap();
    assert_eq!(u, 0);
    assert!(m.is_exact() && m.describe().is_none());
    // Reordered: every peer maps to its own entry, nothing is missing.
    let (_, m) = p
        .check_upstream(
            "backend",
            &["127.0.0.1:18083", "127.0.0.1:18081", "127.0.0.1:18082"],
        )
        .unwrap();
    assert_eq!(m.to_policy, vec![Some(2), Some(0), Some(1)]);
    assert_eq!(m.from_policy, vec![Some(1), Some(2), Some(0)]);
    assert!(!m.is_exact());
    assert!(m.describe().unwrap().contains("another order"), "{m:?}");
    // A peer replaced: one unknown, one missing, both named.
    let (_, m) = p
        .check_upstream(
            "backend",
            &["127.0.0.1:1", "127.0.0.1:18082", "127.0.0.1:18083"],
        )
        .unwrap();
    assert_eq!(m.unknown, vec!["127.0.0.1:1"]);
    assert_eq!(m.missing, vec!["127.0.0.1:18081"]);
    let text = m.describe().unwrap();
    assert!(
        text.contains("unknown to the policy") && text.contains("127.0.0.1:1"),
        "{text}"
    );
    assert!(
        text.contains("out of distribution") && text.contains("127.0.0.1:18081"),
        "{text}"
    );
    // An added peer gets the median of each action's weights.
    let (_, m) = p
        .check_upstream(
            "backend",
            &[
                "127.0.0.1:18081",
                "127.0.0.1:18082",
                "127.0.0.1:18083",
                "127.0.0.1:9",
            ],
        )
        .unwrap();
    assert!(m.missing.is_empty());
    for a in 0..p.actions().len() {
        let ws = p.weights_for(a, 0, &m);
        assert_eq!(&ws[..3], &p.actions()[a].weights[0][..]);
        let mut sorted = p.actions()[a].weights[0].clone();
        sorted.sort_unstable();
        assert_eq!(ws[3], sorted[1], "action {a}");
    }
    // An upstream the policy does not list is still an error.
    let e = p.check_upstream("other", &[]).unwrap_err();
    assert!(e.to_string().contains("no upstream \"other\""), "{e}");
}

#[test]
fn documents_round_trip() {
    let p = Policy::from_json_str(&good().to_string(), "p.json").unwrap();
    let again = serde_json::to_string(&p.to_document()).unwrap();
    let q = Policy::from_json_str(&again, "again.json").unwrap();
    assert_eq!(p.to_document(), q.to_document());
}

/// The learner builds documents in memory, where NaN and infinities exist:
/// `validate` refuses them with the same paths.
#[test]
fn documents_built_in_memory_refuse_non_finite_numbers() {
    let base = || -> PolicyDocument { serde_json::from_value(good()).unwrap() };
    let cases: Vec<(&str, PolicyDocument, &str)> = vec![
        (
            "mean NaN",
            {
                let mut d = base();
                d.gmm.means[1][2] = f64::NAN;
                d
            },
            "gmm.means[1][2]",
        ),
        (
            "std infinite",
            {
                let mut d = base();
                d.standardization.std[0] = f64::INFINITY;
                d
            },
            "standardization.std[0]",
        ),
        (
            "weight NaN",
            {
                let mut d = base();
                d.gmm.weights[0] = f64::NAN;
                d
            },
            "gmm.weights[0]",
        ),
        (
            "ood NaN",
            {
                let mut d = base();
                d.ood_log_likelihood = Some(f64::NAN);
                d
            },
            "ood_log_likelihood",
        ),
    ];
    for (name, doc, path) in cases {
        let e = doc.validate("mem").expect_err(name);
        assert_eq!(e.path, path, "{name}: {e}");
        assert!(e.problem.contains("not a finite number"), "{name}: {e}");
    }
}

proptest::proptest! {
    /// Any prefix of a valid file is refused, with the line and column
    /// where the text ends.
    #[test]
    fn every_truncation_is_refused_with_a_position(cut in 0.0f64..1.0) {
        let text = good().to_string();
        let mut at = (cut * text.len() as f64) as usize;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let e = Policy::from_json_str(&text[..at], "cut.json").unwrap_err();
        let msg = e.to_string();
        proptest::prop_assert!(msg.starts_with("policy \"cut.json\": at "), "{}", msg);
        proptest::prop_assert!(
            msg.contains("the file is empty") || msg.contains("ends early") && msg.contains("line 1 column"),
            "{}", msg
        );
    }

    /// One character replaced anywhere never panics: the file is accepted
    /// or refused with a message.
    #[test]
    fn corrupted_files_never_panic(pos in 0.0f64..1.0, c in proptest::sample::select(vec!['{', '}', '[', ']', ',', ':', '"', '-', '0', '9', 'e', 'x', ' '])) {
        let text = good().to_string();
        let mut at = (pos * text.len() as f64) as usize;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mut bad = text[..at].to_owned();
        bad.push(c);
        bad.push_str(text[at..].get(1..).unwrap_or(""));
        if let Err(e) = Policy::from_json_str(&bad, "x.json") {
            proptest::prop_assert!(!e.problem.is_empty() && !e.path.is_empty(), "{}", e);
        }
    }
}
