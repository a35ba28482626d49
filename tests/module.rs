//! End-to-end tests of the module inside a real nginx (`build/sbin/nginx`),
//! with emulated backends on 127.0.0.1.

mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};

/// Counts per backend name for the backends, in order.
fn counts(spread: &BTreeMap<String, usize>, n: usize) -> Vec<usize> {
    (1..=n)
        .map(|i| spread.get(&format!("b{i}")).copied().unwrap_or(0))
        .collect()
}

/// `deep_sched;` sends each peer what nginx's round robin sends.
#[test]
fn observe_mode_matches_round_robin() {
    for weights in [["", "", ""], ["weight=5", "weight=3", "weight=1"]] {
        let b = backends(3, 8, 1.0);
        let servers = server_lines(&b, &weights);
        let http = format!(
            "    upstream rr {{\n{servers}    }}\n\
                 upstream ds {{\n{servers}        deep_sched;\n    }}\n{}",
            proxy_server(
                "        location /rr/ { proxy_pass http://rr/; }\n\
                         location / { proxy_pass http://ds; }"
            )
        );
        let nginx = Nginx::start(&full_config(&http, 1));
        let total: usize = 90;
        let ds = counts(&spread(&nginx, total), 3);
        let mut rr = BTreeMap::new();
        for _ in 0..total {
            let r = nginx.get(&format!("/rr{READ}"));
            let key = r.header("X-Backend").unwrap_or("none").to_owned();
            *rr.entry(key).or_insert(0) += 1;
        }
        let rr = counts(&rr, 3);
        assert_eq!(
            ds, rr,
            "weights {weights:?}: deep_sched {ds:?} vs round robin {rr:?}"
        );
        let w: Vec<usize> = if weights[0].is_empty() {
            vec![1, 1, 1]
        } else {
            vec![5, 3, 1]
        };
        let sum: usize = w.iter().sum();
        let expect: Vec<usize> = w.iter().map(|x| total * x / sum).collect();
        assert_eq!(ds, expect, "smooth weighted round robin shares");
        // The status page counted every request once.
        let st = nginx.status();
        let peers = st["agents"][0]["upstreams"][0]["peers"].as_array().unwrap();
        let counted: u64 = peers
            .iter()
            .map(|p| p["requestCounter"].as_u64().unwrap())
            .sum();
        assert_eq!(counted as usize, total);
    }
}

/// A backend that drops every 3rd connection: deep_sched retries and
/// penalises exactly as round robin does.
#[test]
fn observe_mode_handles_failures_like_round_robin() {
    let run = |with_deep_sched: bool| -> Vec<usize> {
        let b = backends(3, 8, 1.0);
        b[1].set_drop_every(Some(3));
        let servers = server_lines(&b, &["", "", ""]);
        let ds = if with_deep_sched {
            "        deep_sched;\n"
        } else {
            ""
        };
        let http = format!(
            "    upstream up {{\n{servers}{ds}    }}\n{}",
            proxy_server("        location / { proxy_pass http://up; }")
        );
        let nginx = Nginx::start(&full_config(&http, 1));
        let s = spread(&nginx, 60);
        assert_eq!(
            s.keys().filter(|k| k.starts_with("status:")).count(),
            0,
            "{s:?}"
        );
        counts(&s, 3)
    };
    let rr = run(false);
    let ds = run(true);
    assert_eq!(rr, ds, "round robin {rr:?} vs deep_sched {ds:?}");
    assert!(rr[1] < rr[0], "the failing peer was penalised: {rr:?}");
}

/// Policy document for three peers whose GMM tells "peer 3 slow" (state 1)
/// from "all fast" (state 0), with actions (1,1,1) and (5,5,1).
pub fn slow_peer_policy(peers: &[String], interval_ms: u64) -> Value {
    let fast = (6.0f64).ln_1p();
    let slow = (100.0f64).ln_1p();
    json!({
        "format": "deep_sched.policy",
        "version": 1,
        "interval_ms": interval_ms,
        "agent": { "upstreams": [ { "name": "backend", "peers": peers } ] },
        "features": (0..3).map(|p| json!({
            "upstream": 0, "peer": p, "metric": "latency_p95_ms", "transform": "log1p"
        })).collect::<Vec<_>>(),
        "standardization": { "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0] },
        "gmm": {
            "covariance": "diag",
            "weights": [0.5, 0.5],
            "means": [[fast, fast, fast], [fast, fast, slow]],
            "covariances": [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
        },
        "actions": [ { "weights": [[1, 1, 1]] }, { "weights": [[5, 5, 1]] } ],
        "table": [0, 1],
        "default_action": 0,
        "ood_log_likelihood": null,
        "provenance": { "learner": "hand-written test policy" }
    })
}

fn backend_names(b: &[BackendHandle]) -> Vec<String> {
    b.iter().map(|h| h.addr().to_string()).collect()
}

fn policy_http(b: &[BackendHandle], policy: &str, extra: &str) -> String {
    let servers = server_lines(b, &["", "", ""]);
    format!(
        "    upstream backend {{\n{servers}        deep_sched {policy}{extra};\n    }}\n{}",
        proxy_server("        location / { proxy_pass http://backend; }")
    )
}

/// Once peer 3 turns slow, the policy moves it to weight 1 of 11 within
/// two intervals, and the status shows the new state.
#[test]
fn policy_moves_weight_away_from_a_slow_peer() {
    let b = backends(3, 16, 5.0);
    let dir = TempDir::new("policy");
    let policy = dir.path().join("slow.json");
    std::fs::write(
        &policy,
        slow_peer_policy(&backend_names(&b), 500).to_string(),
    )
    .unwrap();
    // Explicit wrr: the share below is exact under a smooth round robin.
    let nginx = Nginx::start(&full_config(
        &policy_http(&b, &policy.display().to_string(), " choose=wrr"),
        2,
    ));
    let load = Load::start(nginx.port, 4, &[READ]);

    // All fast: state 0, equal weights.
    let st = wait_for(Duration::from_secs(5), || {
        let st = nginx.status();
        (st["agents"][0]["state"] == 0).then_some(st)
    })
    .expect("state 0 while all peers are fast");
    assert_eq!(st["agents"][0]["mode"], "policy");

    b[2].set_slow(20.0);
    let turned = Instant::now();
    let st = wait_for(Duration::from_secs(3), || {
        let st = nginx.status();
        (st["agents"][0]["state"] == 1).then_some(st)
    })
    .unwrap_or_else(|| panic!("state 1 after peer 3 turned slow: {}", nginx.status()));
    assert!(
        turned.elapsed() <= Duration::from_millis(1000 + 400),
        "within two intervals"
    );
    assert_eq!(peer_field(&st, "weight"), vec![5.0, 5.0, 1.0]);

    // Share of new requests while slow.
    let before: Vec<u64> = peer_requests(&nginx.status());
    std::thread::sleep(Duration::from_millis(1500));
    let after: Vec<u64> = peer_requests(&nginx.status());
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = delta.iter().sum();
    assert!(total > 50, "enough traffic: {delta:?}");
    // Exactly 1/11 per weighted cycle; allow the cycle in progress at each end.
    assert!(
        delta[2] as f64 <= total as f64 / 11.0 + 2.0,
        "peer 3 got {} of {total}",
        delta[2]
    );
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
}

/// One numeric field of every peer of the first agent's first upstream.
fn peer_field(st: &Value, field: &str) -> Vec<f64> {
    st["agents"][0]["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_f64().unwrap())
        .collect()
}

fn peer_requests(st: &Value) -> Vec<u64> {
    peer_field(st, "requestCounter")
        .into_iter()
        .map(|x| x as u64)
        .collect()
}

/// `explore`: weights change every interval, drawn from the set, logged.
#[test]
fn explore_draws_weights_from_the_set_and_logs_them() {
    let b = backends(3, 8, 1.0);
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched explore weights=2,7 interval=300ms log={{prefix}}/logs/samples.jsonl;\n    }}\n{}",
        proxy_server("        location / { proxy_pass http://backend; }")
    );
    // An absolute log path (nginx does not copy those: the name must be a
    // proper C string).
    let nginx = Nginx::start(&full_config(&http, 2));
    let load = Load::start(nginx.port, 2, &[READ]);
    let lines = wait_for(Duration::from_secs(10), || {
        let l = nginx.lines("logs/samples.jsonl");
        (l.len() >= 8).then_some(l)
    })
    .expect("8 decisions logged");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    let mut seen = std::collections::BTreeSet::new();
    let mut vectors = std::collections::BTreeSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line).expect("one JSON object per line");
        assert_eq!(v["mode"], "explore", "{line}");
        assert_eq!(v["explored"], true, "{line}");
        let w = &v["weights"][0];
        let w: Vec<u64> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(w.len(), 3);
        for x in &w {
            assert!([2, 7].contains(x), "weight {x} not from the set: {line}");
            seen.insert(*x);
        }
        vectors.insert(w);
        assert_eq!(v["upstreams"][0]["peers"].as_array().unwrap().len(), 3);
    }
    assert_eq!(seen.len(), 2, "both weights of the set were drawn");
    assert!(vectors.len() >= 2, "weights changed between intervals");
}

/// The sample log charges every try to the interval that dispatched it:
/// per peer, the `dispatched` counts plus the `late` ones add up to the
/// interval counters and to the upstream times in nginx's own access log;
/// a peer slower than two intervals has late tries.
#[test]
fn sample_log_charges_tries_to_their_dispatch_interval() {
    let b = backends(3, 16, 4.0);
    // 400 ms: longer than one 300 ms interval, shorter than two, so its
    // tries end in the interval after theirs or the one after that.
    b[2].set_slow(100.0);
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    log_format up '$upstream_addr $upstream_response_time';\n\
             upstream backend {{\n{servers}        deep_sched explore weights=1,2 interval=300ms \
         log={{prefix}}/logs/samples.jsonl;\n    }}\n{}",
        proxy_server(
            "        location / { proxy_pass http://backend; access_log {prefix}/logs/up.log up; }"
        )
    );
    let nginx = Nginx::start(&full_config(&http, 2));
    let load = Load::start(nginx.port, 6, &[READ]);
    std::thread::sleep(Duration::from_millis(3000));
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    let names = backend_names(&b);

    // From the access log: tries and ms per peer.
    let access = |nginx: &Nginx| -> Vec<(u64, u64)> {
        let mut per = vec![(0u64, 0u64); 3];
        for line in nginx.lines("logs/up.log") {
            let (addrs, times) = line.split_once(' ').unwrap();
            for (a, t) in addrs.split(", ").zip(times.split(", ")) {
                let i = names.iter().position(|n| n == a).unwrap();
                let ms = (t.parse::<f64>().unwrap() * 1000.0).round() as u64;
                per[i].0 += 1;
                per[i].1 += ms;
            }
        }
        per
    };
    // From the sample log: (interval counters, dispatched + late, late).
    let sums = |nginx: &Nginx| -> Vec<[(u64, u64); 3]> {
        let mut per = vec![[(0u64, 0u64); 3]; 3];
        for line in nginx.lines("logs/samples.jsonl") {
            let v: Value = serde_json::from_str(&line).unwrap();
            for (i, p) in v["upstreams"][0]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let get = |o: &Value| {
                    (
                        o["requests"].as_u64().unwrap_or(0),
                        o["response_msec"].as_u64().unwrap_or(0),
                    )
                };
                let (c, d, l) = (get(p), get(&p["dispatched"]), get(&p["late"]));
                per[i][0].0 += c.0;
                per[i][0].1 += c.1;
                per[i][1].0 += d.0 + l.0;
                per[i][1].1 += d.1 + l.1;
                per[i][2].0 += l.0;
                per[i][2].1 += l.1;
            }
        }
        per
    };
    // Every try ended; wait until the decisions have reported them all.
    let settled = wait_for(Duration::from_secs(10), || {
        let (a, s) = (access(&nginx), sums(&nginx));
        let all = (0..3).all(|i| s[i][0] == a[i] && s[i][1] == a[i]);
        all.then_some(s)
    });
    let s = settled.unwrap_or_else(|| {
        panic!(
            "per peer (tries, ms): access log {:?}, sample counters / dispatched+late / late {:?}",
            access(&nginx),
            sums(&nginx)
        )
    });
    eprintln!("per peer (tries, ms): counters / dispatched+late / late: {s:?}");
    assert!(
        s.iter().all(|p| p[0].0 > 10),
        "traffic at every peer: {s:?}"
    );
    assert!(
        s[2][2].0 > 0 && s[2][2].0 < s[2][0].0,
        "the slow peer has late tries and tries on time: {s:?}"
    );
    assert_eq!(
        (s[0][2].0, s[1][2].0),
        (0, 0),
        "4 ms tries are never late: {s:?}"
    );
    let first: Value = serde_json::from_str(&nginx.lines("logs/samples.jsonl")[1]).unwrap();
    assert_eq!(
        first["dispatched_seq"].as_u64(),
        first["seq"].as_u64().map(|s| s - 1)
    );
}

/// Four workers: the shared counters add up to what was sent, and exactly
/// one decision per interval is logged.
#[test]
fn four_workers_share_counters_and_decide_once_per_interval() {
    let b = backends(3, 16, 1.0);
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched interval=400ms log=logs/samples.jsonl;\n    }}\n{}",
        proxy_server("        location / { proxy_pass http://backend; }")
    );
    let nginx = Nginx::start(&full_config(&http, 4));
    let load = Load::start(nginx.port, 8, &[READ]);
    std::thread::sleep(Duration::from_millis(3000));
    let (sent, failed) = load.stop();
    assert_eq!(failed, 0);
    let st = nginx.status();
    let counted: u64 = peer_requests(&st).iter().sum();
    assert_eq!(counted, sent, "counters summed over 4 workers");

    std::thread::sleep(Duration::from_millis(1000));
    let lines = nginx.lines("logs/samples.jsonl");
    let times: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["time_ms"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        times.len() >= 7,
        "about 10 decisions in 4 s, got {}",
        times.len()
    );
    for w in times.windows(2) {
        let gap = w[1] as i64 - w[0] as i64;
        assert!(
            gap >= 300,
            "two decisions {gap} ms apart: one per interval expected"
        );
    }
    let logged: u64 = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["upstreams"][0]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["requests"].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(logged, sent, "the logged intervals add up to what was sent");
}

/// `nginx -t` rejects bad policies with the file and the problem named.
#[test]
fn bad_policies_fail_nginx_t_with_a_clear_message() {
    let peers: Vec<String> = (1..=3)
        .map(|i| format!("127.0.0.1:{}", 18080 + i))
        .collect();
    let good = slow_peer_policy(&peers, 1000);
    let set = |path: &[&str], value: Value| {
        let mut doc = good.clone();
        let mut cur = &mut doc;
        for (i, key) in path.iter().enumerate() {
            if i + 1 == path.len() {
                if let Ok(idx) = key.parse::<usize>() {
                    cur[idx] = value.clone();
                } else {
                    cur[*key] = value.clone();
                }
                break;
            }
            cur = if let Ok(idx) = key.parse::<usize>() {
                &mut cur[idx]
            } else {
                &mut cur[*key]
            };
        }
        doc.to_string()
    };
    let text = good.to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), ""),
        ("truncated", text[..text.len() / 2].to_owned(), ""),
        ("not json", "policy: yes".into(), ""),
        ("wrong version", set(&["version"], json!(99)), "version"),
        (
            "wrong format",
            set(&["format"], json!("something.else")),
            "format",
        ),
        ("huge number", text.replacen("0.5,", "1e999,", 1), ""),
        (
            "nan as string",
            set(&["gmm", "means", "0", "0"], json!("NaN")),
            "means",
        ),
        (
            "negative std",
            set(&["standardization", "std", "1"], json!(-1.0)),
            "std",
        ),
        (
            "std dims",
            set(&["standardization", "std"], json!([1.0])),
            "std",
        ),
        (
            "mean dims",
            set(&["gmm", "means", "1"], json!([1.0, 2.0])),
            "means",
        ),
        (
            "weights sum",
            set(&["gmm", "weights"], json!([0.5, 0.6])),
            "weights",
        ),
        (
            "negative weight",
            set(&["gmm", "weights"], json!([1.5, -0.5])),
            "weights",
        ),
        (
            "singular covariance",
            set(&["gmm", "covariances", "0"], json!([0.0, 0.5, 0.5])),
            "covariances",
        ),
        ("table length", set(&["table"], json!([0])), "table"),
        (
            "action out of range",
            set(&["table"], json!([0, 9])),
            "table",
        ),
        (
            "default out of range",
            set(&["default_action"], json!(7)),
            "default_action",
        ),
        (
            "action shape",
            set(&["actions", "1", "weights"], json!([[5, 5]])),
            "actions",
        ),
        (
            "zero weight",
            set(&["actions", "1", "weights"], json!([[5, 0, 1]])),
            "actions",
        ),
        (
            "feature peer",
            set(&["features", "2", "peer"], json!(5)),
            "features",
        ),
        (
            "unknown metric",
            set(&["features", "0", "metric"], json!("vibes")),
            "features",
        ),
        ("unknown key", set(&["surprise"], json!(1)), "surprise"),
        ("interval", set(&["interval_ms"], json!(5)), "interval_ms"),
        (
            "no upstreams",
            set(&["agent", "upstreams"], json!([])),
            "upstreams",
        ),
        (
            "duplicate key",
            text.replacen("\"version\":1", "\"version\":1,\"version\":1", 1),
            "version",
        ),
        (
            "other upstream",
            set(&["agent", "upstreams", "0", "name"], json!("other")),
            "other",
        ),
    ];
    assert!(cases.len() >= 20);
    let dir = TempDir::new("bad");
    // The good policy passes, so each failure below is the change's doing.
    let good_path = dir.path().join("good.json");
    std::fs::write(&good_path, &text).unwrap();
    let servers: String = peers
        .iter()
        .map(|p| format!("        server {p};\n"))
        .collect();
    let conf_for = |path: &std::path::Path| {
        full_config(
            &format!(
                "    upstream backend {{\n{servers}        deep_sched {};\n    }}\n\
                     server {{ listen 127.0.0.1:1; location / {{ proxy_pass http://backend; }} }}\n",
                path.display()
            ),
            1,
        )
    };
    let ok = nginx_t(&conf_for(&good_path));
    assert!(
        ok.status.success(),
        "good policy: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    for (i, (name, body, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.json"));
        std::fs::write(&path, body).unwrap();
        let out = nginx_t(&conf_for(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: nginx -t accepted it");
        assert!(
            out.status.code().is_some(),
            "{name}: nginx crashed: {stderr}"
        );
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: file not named: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{name}: '{needle}' not in: {stderr}"
        );
    }
    // Per-peer (version 2) policies: each problem named with its path.
    let pp = per_peer_policy();
    let set_pp = |key: &str, value: Value| {
        let mut doc = pp.clone();
        doc[key] = value;
        doc.to_string()
    };
    let pp_cases: Vec<(&str, String, &str)> = vec![
        (
            "pp multiplier 0",
            set_pp("multipliers", json!([1.0, 0.0])),
            "multipliers[1]",
        ),
        (
            "pp multipliers short",
            set_pp("multipliers", json!([1.0])),
            "multipliers",
        ),
        ("pp kind", set_pp("kind", json!("per_request")), "kind"),
        ("pp version", set_pp("version", json!(1)), "version"),
        (
            "pp feature",
            set_pp(
                "peer_features",
                json!(["latency_ratio", "vibes", "error_rate"]),
            ),
            "peer_features",
        ),
        (
            "pp duplicate feature",
            set_pp(
                "peer_features",
                json!(["latency_ratio", "latency_ratio", "error_rate"]),
            ),
            "peer_features[1]",
        ),
        (
            "pp baseline",
            set_pp(
                "baseline",
                json!({"source": "capacity", "weights": {"backend": {"x": -1.0}}}),
            ),
            "baseline.weights.backend.x",
        ),
        (
            "pp baseline upstream",
            set_pp(
                "baseline",
                json!({"source": "capacity", "weights": {"nope": {"x": 1.0}}}),
            ),
            "baseline.weights.nope",
        ),
        (
            "pp default",
            set_pp("default_multiplier", json!(2000.0)),
            "default_multiplier",
        ),
    ];
    for (i, (name, body, needle)) in pp_cases.iter().enumerate() {
        let path = dir.path().join(format!("pp{i}.json"));
        std::fs::write(&path, body).unwrap();
        let out = nginx_t(&conf_for(&path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: nginx -t accepted it");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(needle),
            "{name}: '{needle}' or the file not in: {stderr}"
        );
    }

    // Peers that differ from the policy's are not a reason to fail: a
    // version-1 policy listing other, reordered peers is accepted with a
    // warning naming what did not match.
    let mut other = good.clone();
    other["agent"]["upstreams"][0]["peers"] =
        json!(["127.0.0.1:18083", "127.0.0.1:18081", "127.0.0.1:9"]);
    let path = dir.path().join("other-peers.json");
    std::fs::write(&path, other.to_string()).unwrap();
    let out = nginx_t(&conf_for(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "other peers: {stderr}");
    assert!(stderr.contains("[warn]"), "{stderr}");
    assert!(
        stderr.contains("unknown to the policy") && stderr.contains("127.0.0.1:18082"),
        "{stderr}"
    );
    assert!(
        stderr.contains("out of distribution") && stderr.contains("127.0.0.1:9"),
        "{stderr}"
    );
    // The good per-peer policy passes too.
    let path = dir.path().join("pp-good.json");
    std::fs::write(&path, pp.to_string()).unwrap();
    let out = nginx_t(&conf_for(&path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = nginx_t(&conf_for(&dir.path().join("missing.json")));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.json"));
}

/// Directive misuse is reported by `nginx -t` with the word at fault.
#[test]
fn bad_directives_fail_nginx_t() {
    let cases = [
        ("deep_sched interval=0s;", "interval=0s"),
        ("deep_sched explore choose=random;", "choose=random"),
        ("deep_sched explore weights=0;", "weights=0"),
        ("deep_sched; deep_sched;", "duplicate"),
        ("keepalive 8; deep_sched;", "before \"keepalive\""),
        (
            "deep_sched; least_conn;",
            "replaced by another load balancing method",
        ),
        ("least_conn; deep_sched;", "another load balancing method"),
    ];
    for (directive, needle) in cases {
        let conf = full_config(
            &format!(
                "    upstream backend {{ server 127.0.0.1:1; {directive} }}\n\
                     server {{ listen 127.0.0.1:1; location / {{ proxy_pass http://backend; }} }}\n"
            ),
            1,
        );
        let out = nginx_t(&conf);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{directive}: accepted");
        assert!(stderr.contains(needle), "{directive}: {stderr}");
    }
}

/// With a policy the per-request choice defaults to p2c; an explicit
/// `choose=wrr` for a policy learned under p2c is accepted with a warning
/// that says why; the sample log records the choice and the propensity.
#[test]
fn a_policy_defaults_to_p2c_and_wrr_for_a_p2c_policy_warns() {
    let b = backends(3, 16, 2.0);
    let dir = TempDir::new("choose-default");
    let names = backend_names(&b);
    let mut learned = slow_peer_policy(&names, 300);
    learned["provenance"]["choose"] = json!("p2c");
    let path = dir.path().join("p2c.json");
    std::fs::write(&path, learned.to_string()).unwrap();
    let policy = path.display().to_string();
    let nginx_t = |conf: &str| harness::nginx_t(&conf.replace("{port}", "1"));

    let out = nginx_t(&full_config(&policy_http(&b, &policy, " choose=wrr"), 1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("[warn]") && stderr.contains("learned under choose=p2c"),
        "warns: {stderr}"
    );
    let out = nginx_t(&full_config(&policy_http(&b, &policy, ""), 1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("[warn]"),
        "{stderr}"
    );
    // A policy that does not say what it was learned under: no warning.
    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, slow_peer_policy(&names, 300).to_string()).unwrap();
    let conf = policy_http(&b, &unknown.display().to_string(), " choose=wrr");
    let out = nginx_t(&full_config(&conf, 1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("[warn]"));

    let log = dir.path().join("samples.jsonl");
    let extra = format!(" log={}", log.display());
    let nginx = Nginx::start(&full_config(&policy_http(&b, &policy, &extra), 2));
    assert_eq!(nginx.status()["agents"][0]["choose"], "p2c");
    let load = Load::start(nginx.port, 2, &[READ]);
    let line = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().nth(1).map(str::to_owned)
    })
    .expect("two sample lines");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    let sample: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(sample["choose"], "p2c");
    assert_eq!(sample["propensity"], 1.0);
    for p in sample["upstreams"][0]["peers"].as_array().unwrap() {
        assert!(p["inflight_start"].is_u64(), "{p}");
    }
}

/// Five policy swaps by reload under load: no failed request; a bad policy
/// is refused and the old workers keep serving.
#[test]
fn reload_swaps_policies_without_failed_requests() {
    let b = backends(3, 16, 2.0);
    let dir = TempDir::new("reload");
    let names = backend_names(&b);
    let conf_for =
        |path: &std::path::Path| full_config(&policy_http(&b, &path.display().to_string(), ""), 2);
    let first = dir.path().join("p0.json");
    std::fs::write(&first, slow_peer_policy(&names, 300).to_string()).unwrap();
    let nginx = Nginx::start(&conf_for(&first));
    let load = Load::start(nginx.port, 4, &[READ]);
    let started = Instant::now();
    for i in 1..=5 {
        std::thread::sleep(Duration::from_millis(1200));
        let p = dir.path().join(format!("p{i}.json"));
        std::fs::write(&p, slow_peer_policy(&names, 300 + 100 * i).to_string()).unwrap();
        nginx.reload_with(&conf_for(&p));
        let want = p.display().to_string();
        wait_for(Duration::from_secs(5), || {
            let st = nginx.status();
            (st["agents"][0]["policy"]["file"] == want.as_str()).then_some(())
        })
        .unwrap_or_else(|| panic!("policy {i} not in force:\n{}", nginx.error_log()));
    }
    // A bad policy: the reload is refused, the last good one stays.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"format\": \"deep_sched.policy\"").unwrap();
    nginx.reload_with(&conf_for(&bad));
    let refused = wait_for(Duration::from_secs(5), || {
        nginx.error_log().contains("bad.json").then_some(())
    });
    assert!(
        refused.is_some(),
        "error log names the bad policy:\n{}",
        nginx.error_log()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let st = nginx.status();
    assert!(st["agents"][0]["policy"]["file"]
        .as_str()
        .unwrap()
        .ends_with("p5.json"));
    while started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (sent, failed) = load.stop();
    assert!(sent > 200, "traffic flowed: {sent}");
    assert_eq!(failed, 0, "failed requests during reloads");
}

/// `choose=p2c`: a slow peer with equal weights gets clearly less traffic,
/// and a `down` peer none.
#[test]
fn p2c_avoids_a_loaded_peer_and_honours_down() {
    let b = backends(4, 4, 2.0);
    b[2].set_slow(25.0);
    let servers = server_lines(&b, &["", "", "", "down"]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched choose=p2c;\n    }}\n{}",
        proxy_server("        location / { proxy_pass http://backend; }")
    );
    let nginx = Nginx::start(&full_config(&http, 1));
    let load = Load::start(nginx.port, 6, &[READ]);
    std::thread::sleep(Duration::from_millis(2500));
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    let st = nginx.status();
    let n = peer_requests(&st);
    assert_eq!(n[3], 0, "down peer got traffic: {n:?}");
    assert!(
        (n[2] as f64) < 0.5 * (n[0].min(n[1]) as f64),
        "slow peer not avoided: {n:?}"
    );
    assert_eq!(st["agents"][0]["choose"], "p2c");
    let ewma = peer_field(&st, "latencyEwmaMsec");
    assert!(
        ewma[2] > 2.0 * ewma[0].max(ewma[1]).max(1.0),
        "the slow peer's latency average: {ewma:?}"
    );
}

/// `choose=p2c` counts a backend's requests in flight from every upstream
/// that names it: with 16 slow requests held at b1 through another upstream,
/// new requests go to the idle b2 (b1's in-flight count in this upstream is
/// 0, so without the other upstream's count the two would look alike).
#[test]
fn p2c_counts_in_flight_requests_of_other_upstreams() {
    let b = backends(2, 64, 2.0);
    let http = format!(
        "    upstream hold {{\n        server {};\n        deep_sched choose=p2c;\n    }}\n\
             upstream probe {{\n{}        deep_sched choose=p2c;\n    }}\n{}",
        b[0].addr(),
        server_lines(&b, &["", ""]),
        proxy_server(
            "        location /hold/ { proxy_pass http://hold/wrk2-api/; }\n\
                     location /wrk2-api/ { proxy_pass http://probe; }"
        )
    );
    let nginx = Nginx::start(&full_config(&http, 1));
    // both answer a few at the same speed first
    let warm = spread(&nginx, 6);
    b[0].set_slow(400.0);
    let hold = Load::start(nginx.port, 16, &["/hold/home-timeline/read"]);
    std::thread::sleep(Duration::from_millis(400));
    let s = spread(&nginx, 20);
    let (_, failed) = hold.stop();
    assert_eq!(failed, 0);
    assert_eq!(
        counts(&s, 2),
        vec![0, 20],
        "requests went to the busy b1 (warm-up spread {warm:?})"
    );
}

/// `zone`, `keepalive`, `backup`: nginx's features keep working, with both
/// per-request choices.
#[test]
fn zone_keepalive_and_backup_work() {
    for choose in ["wrr", "p2c"] {
        let b = backends(3, 8, 1.0);
        let servers = server_lines(&b, &["", "", "backup"]);
        let http = format!(
            "    upstream backend {{\n        zone backend 64k;\n{servers}        deep_sched explore interval=200ms choose={choose};\n        keepalive 8;\n    }}\n{}",
            proxy_server(
                "        proxy_http_version 1.1;\n\
                         proxy_set_header Connection \"\";\n\
                         location / { proxy_pass http://backend; }"
            )
        );
        let nginx = Nginx::start(&full_config(&http, 2));
        let s = spread(&nginx, 60);
        assert_eq!(
            s.get("b3"),
            None,
            "{choose}: backup used while primaries are up: {s:?}"
        );
        assert_eq!(counts(&s, 3)[0] + counts(&s, 3)[1], 60, "{choose}: {s:?}");
        assert!(
            counts(&s, 3)[0] > 0 && counts(&s, 3)[1] > 0,
            "{choose}: {s:?}"
        );
        b[0].set_mode(Mode::Refuse);
        b[1].set_mode(Mode::Refuse);
        std::thread::sleep(Duration::from_millis(100));
        let s = spread(&nginx, 10);
        assert_eq!(
            s.get("b3").copied(),
            Some(10),
            "{choose}: backup takes over: {s:?}"
        );
    }
}

/// Variables for `log_format`, and the Prometheus exposition.
#[test]
fn variables_and_prometheus() {
    let b = backends(3, 8, 1.0);
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    log_format ds '$deep_sched_peer $deep_sched_state';\n\
             upstream backend {{\n{servers}        deep_sched;\n    }}\n{}",
        proxy_server(
            "        location / { access_log logs/ds.log ds; proxy_pass http://backend; }"
        )
    );
    let nginx = Nginx::start(&full_config(&http, 1));
    let _ = spread(&nginx, 6);
    let lines = wait_for(Duration::from_secs(3), || {
        let l = nginx.lines("logs/ds.log");
        (l.len() == 6).then_some(l)
    })
    .expect("6 access log lines");
    let names = backend_names(&b);
    for l in &lines {
        let (peer, state) = l.split_once(' ').unwrap();
        assert!(names.contains(&peer.to_owned()), "{l}");
        assert_eq!(state, "-", "observe mode has no state: {l}");
    }
    let r = nginx.get("/deep_sched?format=prometheus");
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    let total: u64 = r
        .body
        .lines()
        .filter(|l| l.starts_with("deep_sched_peer_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 6, "{}", r.body);
}

/// Upstreams sharing a `log=` form one agent: one decision covers all of
/// them (the research's three request types over the same servers).
#[test]
fn upstreams_sharing_a_log_form_one_agent() {
    let b = backends(3, 8, 1.0);
    let servers = server_lines(&b, &["", "", ""]);
    let ds = "        deep_sched explore interval=300ms log=logs/social.jsonl;\n";
    let http = format!(
        "    upstream compose {{\n{servers}{ds}    }}\n\
             upstream home {{\n{servers}{ds}    }}\n\
             upstream user {{\n{servers}{ds}    }}\n{}",
        proxy_server(
            "        location /wrk2-api/post/compose { proxy_pass http://compose; }\n\
                     location /wrk2-api/home-timeline/read { proxy_pass http://home; }\n\
                     location /wrk2-api/user-timeline/read { proxy_pass http://user; }"
        )
    );
    let nginx = Nginx::start(&full_config(&http, 2));
    let load = Load::start(nginx.port, 2, &["/wrk2-api/user-timeline/read"]);
    let lines = wait_for(Duration::from_secs(8), || {
        let l = nginx.lines("logs/social.jsonl");
        (l.len() >= 4).then_some(l)
    })
    .expect("decisions logged");
    load.stop();
    let st = nginx.status();
    assert_eq!(st["agents"].as_array().unwrap().len(), 1, "one agent");
    let names: Vec<&str> = st["agents"][0]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["compose", "home", "user"]);
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["upstreams"].as_array().unwrap().len(), 3, "{l}");
        assert_eq!(v["weights"].as_array().unwrap().len(), 3, "{l}");
        // 3 upstream rps + 3 x 3 peers x 3 metrics.
        assert_eq!(v["features"].as_array().unwrap().len(), 3 + 27, "{l}");
    }
    // Only the user-timeline upstream saw traffic.
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let reqs = |u: usize| -> u64 {
        last["upstreams"][u]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(reqs(0) + reqs(1), 0);
    assert!(reqs(2) > 0);
}
