//! The status page's Prometheus text, read by the Prometheus project's own
//! Python parser (`prometheus_client.parser`, installed by
//! `scripts/deps.sh`) after real traffic through a real nginx with two
//! workers: one family per name, every sample inside a declared family, and
//! the response-time histogram cumulative, in seconds, its `+Inf` bucket and
//! `_count` exactly the requests sent.

mod harness;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use harness::*;
use serde_json::Value;

/// Parses stdin with `text_string_to_metric_families` and prints the
/// families as JSON. Exits 3 when the parser is not installed; any parser
/// error is an uncaught exception (exit 1, traceback on stderr).
const PARSE: &str = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
families = [
    {
        "name": f.name,
        "type": f.type,
        "help": f.documentation,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
    for f in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families, allow_nan=False))
"#;

const DEPS: &str = "python3 with the prometheus_client package is needed: run scripts/deps.sh";

/// The families `prometheus_client` reads in `text`.
fn parse(text: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PARSE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{DEPS} (python3: {e})"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("python3 reads the exposition");
    let out = child.wait_with_output().expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(3), "{DEPS} ({stderr})");
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "prometheus_client failed on the exposition ({}): {stderr}\n{text}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("the parser script prints JSON")
}

#[test]
fn prometheus_client_reads_one_family_per_name_and_the_histogram() {
    // Three peers, fast to slow, so the histograms differ.
    let service_ms = [1.0, 12.0, 45.0];
    let b: Vec<BackendHandle> = service_ms
        .iter()
        .enumerate()
        .map(|(i, &ms)| {
            backend::spawn(BackendConfig {
                name: format!("b{}", i + 1),
                workers: 8,
                service: ServiceTimes::uniform(Delay::Fixed { ms }),
                seed: i as u64 + 1,
                ..BackendConfig::default()
            })
            .expect("start backend")
        })
        .collect();
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    upstream backend {{\n{servers}        deep_sched;\n    }}\n\
             server {{\n\
                 listen 127.0.0.1:{{port}};\n\
                 location / {{ proxy_pass http://backend; }}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n"
    );
    let nginx = Nginx::start(&full_config(&http, 2));

    const SENT: u64 = 60;
    let spread = spread(&nginx, SENT as usize);
    assert_eq!(spread.values().sum::<usize>(), SENT as usize, "{spread:?}");
    assert!(
        spread.keys().all(|k| !k.starts_with("status:")),
        "every request answered by a backend: {spread:?}\n{}",
        nginx.error_log()
    );

    let r = nginx.get("/deep_sched?format=prometheus");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let families = parse(&r.body);
    let text = &r.body;

    // One family per name, each declared (an undeclared or misplaced sample
    // comes back as an `untyped` family of its own) and documented.
    let mut names = BTreeMap::new();
    for f in &families {
        let name = f["name"].as_str().unwrap();
        *names.entry(name).or_insert(0) += 1;
        assert!(
            ["counter", "gauge", "histogram"].contains(&f["type"].as_str().unwrap()),
            "{name} is {}\n{text}",
            f["type"]
        );
        assert!(
            !f["help"].as_str().unwrap().is_empty(),
            "{name} has no HELP"
        );
    }
    let dup: Vec<_> = names.iter().filter(|(_, &n)| n > 1).collect();
    assert!(dup.is_empty(), "family names seen twice: {dup:?}\n{text}");
    for old in [
        "deep_sched_peer_response_msec",
        "deep_sched_peer_response_msec_total",
    ] {
        assert!(!names.contains_key(old), "{old} is gone\n{text}");
    }

    let family = |name: &str| {
        families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name}\n{text}"))
    };
    let hist = family("deep_sched_peer_response_seconds");
    assert_eq!(hist["type"], "histogram");

    // Per peer (the `server` label): buckets by le, _sum, _count.
    #[derive(Default, Debug)]
    struct Peer {
        buckets: Vec<(f64, f64)>,
        sum: Option<f64>,
        count: Option<f64>,
    }
    let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
    for s in hist["samples"].as_array().unwrap() {
        let (name, labels, value) = (s[0].as_str().unwrap(), &s[1], s[2].as_f64().unwrap());
        assert_eq!(labels["agent"], "upstream:backend", "{s}");
        assert_eq!(labels["upstream"], "backend", "{s}");
        let p = peers
            .entry(labels["server"].as_str().unwrap().to_owned())
            .or_default();
        match name {
            "deep_sched_peer_response_seconds_bucket" => {
                let le = labels["le"].as_str().unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                p.buckets.push((le, value));
            }
            "deep_sched_peer_response_seconds_sum" => assert!(p.sum.replace(value).is_none()),
            "deep_sched_peer_response_seconds_count" => assert!(p.count.replace(value).is_none()),
            other => panic!("unexpected sample {other}"),
        }
    }
    let expected: Vec<String> = b.iter().map(|b| b.addr().to_string()).collect();
    assert_eq!(
        peers.keys().cloned().collect::<Vec<_>>(),
        {
            let mut e = expected.clone();
            e.sort();
            e
        },
        "{text}"
    );

    // `deep_sched_peer_requests_total` per server, as the parser read it.
    let requests: BTreeMap<String, f64> = family("deep_sched_peer_requests")["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s[0], "deep_sched_peer_requests_total");
            (
                s[1]["server"].as_str().unwrap().to_owned(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect();

    let mut total = 0.0;
    for (server, p) in &peers {
        let les: Vec<f64> = p.buckets.iter().map(|b| b.0).collect();
        assert_eq!(les.len(), 30, "{server}: every bucket\n{text}");
        assert!(
            les.windows(2).all(|w| w[0] < w[1]),
            "{server}: le ascending {les:?}"
        );
        assert_eq!(les[0], 0.001, "{server}: le in seconds");
        assert_eq!(les[28], 10.0, "{server}: le in seconds");
        assert_eq!(*les.last().unwrap(), f64::INFINITY, "{server}: +Inf last");
        let counts: Vec<f64> = p.buckets.iter().map(|b| b.1).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{server}: cumulative buckets {counts:?}"
        );
        let count = p.count.expect("_count");
        let sum = p.sum.expect("_sum");
        assert_eq!(*counts.last().unwrap(), count, "{server}: +Inf == _count");
        assert_eq!(
            Some(&count),
            requests.get(server),
            "{server}: _count == requests"
        );
        assert!(count > 0.0, "{server}: round robin reaches every peer");
        total += count;

        // Units: the slowest peer's tries took at least 45 ms each, so none
        // is in a bucket up to 40 ms and the sum is at least 45 ms a try.
        let i = expected.iter().position(|e| e == server).unwrap();
        if service_ms[i] >= 45.0 {
            let at_40ms = p.buckets.iter().find(|b| b.0 == 0.04).unwrap().1;
            assert_eq!(at_40ms, 0.0, "{server}: {counts:?}");
            assert!(sum >= 0.045 * count, "{server}: _sum {sum} s for {count}");
            assert!(sum < 10.0 * count, "{server}: _sum {sum} s for {count}");
        }
    }
    assert_eq!(
        total, SENT as f64,
        "+Inf over the peers == requests sent\n{text}"
    );

    // The JSON keeps the percentiles; the histogram is Prometheus-only.
    let st = nginx.status();
    for p in st["agents"][0]["upstreams"][0]["peers"].as_array().unwrap() {
        assert!(p["requestMsecs"]["p99"].is_number(), "{p}");
        assert_eq!(
            p["requestCounter"].as_f64(),
            peers[p["server"].as_str().unwrap()].count,
            "{p}"
        );
    }
}
