//! Policies that do not depend on which peer is which (issue #13 item 1,
//! issue #14 item 3), through the real nginx with two workers: a per-peer
//! policy steers away from whichever peer is slow, and a version-1 policy
//! whose upstream was reordered and grew a peer is served by name.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::{json, Value};

fn peers_of(st: &Value) -> Vec<Value> {
    st["agents"][0]["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .clone()
}

fn field(st: &Value, f: &str) -> Vec<u64> {
    peers_of(st)
        .iter()
        .map(|p| p[f].as_u64().unwrap())
        .collect()
}

/// Requests each peer finished over `ms` milliseconds.
fn traffic_over(nginx: &Nginx, ms: u64) -> Vec<u64> {
    let before = field(&nginx.status(), "requestCounter");
    std::thread::sleep(Duration::from_millis(ms));
    let after = field(&nginx.status(), "requestCounter");
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

/// A per-peer policy (two states, "like the pool" and "ten times slower
/// than the pool's median", in the shape `deep-sched learn --kind per-peer`
/// writes) is served under p2c: the third peer turns slow and is steered
/// away from; it recovers, the first turns slow, and the same policy steers
/// away from the first.
#[test]
fn a_per_peer_policy_steers_away_from_whichever_peer_is_slow() {
    let b = backends(3, 16, 5.0);
    let dir = TempDir::new("perpeer");
    let policy = dir.path().join("per-peer.json");
    std::fs::write(&policy, per_peer_policy().to_string()).unwrap();
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched {} log={{prefix}}/logs/samples.jsonl;\n    }}\n{}",
        policy.display(),
        proxy_server("        location / { proxy_pass http://backend; }")
    );
    let nginx = Nginx::start(&full_config(&http, 2));
    let st = nginx.status();
    assert_eq!(st["agents"][0]["policy"]["kind"], "per_peer", "{st}");
    assert_eq!(st["agents"][0]["choose"], "p2c", "{st}");
    let load = Load::start(nginx.port, 8, &[READ]);

    for slow in [2usize, 0] {
        b[slow].set_slow(20.0);
        let st = wait_for(Duration::from_secs(8), || {
            let st = nginx.status();
            let w = field(&st, "weight");
            (w[slow] * 5 <= *w.iter().max().unwrap()).then_some(st)
        })
        .unwrap_or_else(|| panic!("peer {} slow: weights {}", slow + 1, nginx.status()));
        let w = field(&st, "weight");
        assert_eq!(w[slow], 100, "peer {} slow: {w:?}", slow + 1);
        let delta = traffic_over(&nginx, 1500);
        let total: u64 = delta.iter().sum();
        assert!(total > 100, "enough traffic: {delta:?}");
        // Equal shares would be a third; the slow peer's own latency keeps
        // closed-loop clients from filling it anyway, so compare with the
        // others' traffic rather than a fixed share.
        let others = delta
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != slow)
            .map(|(_, d)| *d)
            .min()
            .unwrap();
        assert!(
            delta[slow] * 10 < others,
            "peer {} slow got {delta:?}",
            slow + 1
        );
        b[slow].set_slow(1.0);
        // Back to equal weights once it recovers.
        wait_for(Duration::from_secs(8), || {
            let w = field(&nginx.status(), "weight");
            w.iter().all(|&x| x == w[0]).then_some(())
        })
        .unwrap_or_else(|| panic!("recovered: {}", nginx.status()));
    }
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    // The sample log names every peer's state and multiplier.
    let lines = nginx.lines("logs/samples.jsonl");
    let slow_logged = lines.iter().any(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["upstreams"][0]["peers"][0]["multiplier"] == json!(0.1)
            && v["upstreams"][0]["peers"][0]["state"] == 1
    });
    assert!(slow_logged, "no record shows peer 1 in the slow state");
}

/// A version-1 policy learned for peers [3, 1, 2] (another order) with
/// weights (5, 5, 1) for "the third listed peer is slow", served on an
/// upstream listing peers 1, 2, 3 and a new fourth: `nginx -t` warns and
/// passes, the status says which peers the policy knows, and when peer 2
/// (the policy's third) turns slow it alone gets weight 1 while the new
/// peer gets the median weight 5.
#[test]
fn a_version_1_policy_is_served_by_peer_name_after_the_upstream_changed() {
    let b = backends(4, 16, 5.0);
    let names: Vec<String> = b.iter().map(|h| h.addr().to_string()).collect();
    let fast = 6f64.ln_1p();
    let slow = 100f64.ln_1p();
    let policy_peers = [&names[2], &names[0], &names[1]];
    let doc = json!({
        "format": "deep_sched.policy", "version": 1, "interval_ms": 500,
        "agent": { "upstreams": [ { "name": "backend", "peers": policy_peers } ] },
        "features": (0..3).map(|p| json!({
            "upstream": 0, "peer": p, "metric": "latency_p95_ms", "transform": "log1p"
        })).collect::<Vec<_>>(),
        "standardization": { "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0] },
        "gmm": { "covariance": "diag", "weights": [0.5, 0.5],
                 "means": [[fast, fast, fast], [fast, fast, slow]],
                 "covariances": [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]] },
        "actions": [ { "weights": [[1, 1, 1]] }, { "weights": [[5, 5, 1]] } ],
        "table": [0, 1], "default_action": 0, "ood_log_likelihood": null,
    });
    let dir = TempDir::new("v1match");
    let policy = dir.path().join("v1.json");
    std::fs::write(&policy, doc.to_string()).unwrap();
    let servers = server_lines(&b, &["", "", "", ""]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched {} choose=wrr;\n    }}\n{}",
        policy.display(),
        proxy_server("        location / { proxy_pass http://backend; }")
    );
    let conf = full_config(&http, 2);
    let t = nginx_t(&conf.replace("{port}", &free_port().to_string()));
    let stderr = String::from_utf8_lossy(&t.stderr);
    assert!(t.status.success(), "{stderr}");
    assert!(
        stderr.contains("[warn]")
            && stderr.contains("unknown to the policy")
            && stderr.contains(&names[3]),
        "{stderr}"
    );

    let nginx = Nginx::start(&conf);
    let st = nginx.status();
    let known: Vec<String> = peers_of(&st)
        .iter()
        .map(|p| p["policyPeer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(known, ["known", "known", "known", "unknown"], "{st}");
    let load = Load::start(nginx.port, 4, &[READ]);
    b[1].set_slow(20.0);
    let st = wait_for(Duration::from_secs(8), || {
        let st = nginx.status();
        (st["agents"][0]["state"] == 1).then_some(st)
    })
    .unwrap_or_else(|| panic!("state 1 once peer 2 is slow: {}", nginx.status()));
    assert_eq!(field(&st, "weight"), vec![5, 1, 5, 5], "{st}");
    let delta = traffic_over(&nginx, 1500);
    let total: u64 = delta.iter().sum();
    assert!(total > 50, "{delta:?}");
    // Smooth round robin: 1 of 16 per cycle, with a cycle at each end.
    assert!(
        delta[1] as f64 <= total as f64 / 16.0 + 3.0,
        "peer 2 got {delta:?}"
    );
    assert!(delta[3] > 0, "the new peer is served: {delta:?}");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
}

/// `explore spread=0.5`: log-normal weights around the configured ones,
/// every decision logged with the draw's density.
#[test]
fn explore_spread_draws_log_normal_weights_through_nginx() {
    let b = backends(3, 8, 1.0);
    let servers = server_lines(&b, &["weight=2", "weight=2", "weight=2"]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched explore spread=0.5 interval=200ms log={{prefix}}/logs/samples.jsonl;\n    }}\n{}",
        proxy_server("        location / { proxy_pass http://backend; }")
    );
    let nginx = Nginx::start(&full_config(&http, 2));
    let load = Load::start(nginx.port, 2, &[READ]);
    let lines = wait_for(Duration::from_secs(10), || {
        let l = nginx.lines("logs/samples.jsonl");
        (l.len() >= 10).then_some(l)
    })
    .expect("10 decisions logged");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    let mut vectors = std::collections::BTreeSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (v["mode"].as_str(), v["explored"].as_bool()),
            (Some("explore"), Some(true))
        );
        assert!(v["log_density"].is_number(), "{line}");
        assert!(v.get("propensity").is_none(), "{line}");
        let w: Vec<u64> = v["weights"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(*w.iter().max().unwrap(), 1000, "scaled to 1000: {line}");
        vectors.insert(w);
    }
    assert!(
        vectors.len() >= 8,
        "weights change every interval: {vectors:?}"
    );
}
