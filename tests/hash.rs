//! `choose=hash key=EXPR balance=FACTOR` through the real nginx with two
//! workers (issue #15, part 2): a key goes to the peer the core's ring says,
//! weights (configured or published) change the shares, a failed peer's
//! keys walk on to the next peer, a hot key on slow peers is spread within
//! the bound, and bad `key=` / `balance=` fail `nginx -t`.

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deep_sched_core::choose::PeerLoad;
use deep_sched_core::hash::{Balance, HashFn, Ring};
use harness::*;
use serde_json::Value;

fn conf(servers: &str, directive: &str) -> String {
    full_config(
        &format!(
            "    upstream backend {{\n{servers}        {directive}\n        zone backend 1m;\n    }}\n{}",
            proxy_server("        location / { proxy_pass http://backend; }")
        ),
        2,
    )
}

fn names(b: &[BackendHandle]) -> Vec<String> {
    b.iter().map(|h| h.addr().to_string()).collect()
}

/// The core's ring over the backends' addresses (nginx's peer names).
fn ring(b: &[BackendHandle], weights: &[u32]) -> Ring {
    let names = names(b);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut r = Ring::new(HashFn::Xxh3, &refs);
    r.rebuild(|i| weights[i]);
    r
}

fn uri(k: usize) -> String {
    format!("{READ}?user={k}")
}

/// Sends each key once (sequentially: loads stay even) and returns the
/// backend index that answered each.
fn route(nginx: &Nginx, keys: impl Iterator<Item = usize>) -> Vec<(usize, usize)> {
    keys.map(|k| {
        let r = nginx.get(&uri(k));
        assert_eq!(r.status, 200, "key {k}: {}", r.body);
        let b = r.header("X-Backend").expect("X-Backend");
        (k, b[1..].parse::<usize>().unwrap() - 1)
    })
    .collect()
}

fn owner(r: &Ring, k: usize) -> usize {
    r.owner(HashFn::Xxh3.key(uri(k).as_bytes())).unwrap()
}

#[test]
fn same_key_same_backend_as_the_core_ring_says() {
    let b = backends(4, 8, 0.5);
    let nginx = Nginx::start(&conf(
        &server_lines(&b, &[]),
        "deep_sched choose=hash key=$request_uri;",
    ));
    let r = ring(&b, &[1; 4]);
    let mut per_backend = [0usize; 4];
    // Three rounds over 200 keys: new connections land on either worker.
    for round in 0..3 {
        for (k, got) in route(&nginx, 0..200) {
            assert_eq!(got, owner(&r, k), "round {round}, key {k}");
            if round == 0 {
                per_backend[got] += 1;
            }
        }
    }
    assert!(
        per_backend.iter().all(|&c| c >= 20),
        "keys spread: {per_backend:?}"
    );
    let st = nginx.status();
    assert_eq!(st["agents"][0]["choose"], "hash");
}

/// An empty key (no such cookie) is balanced by round robin, as nginx's
/// `hash` does, instead of pinning every such request to one peer.
#[test]
fn an_empty_key_is_round_robin() {
    let b = backends(3, 8, 0.5);
    let nginx = Nginx::start(&conf(
        &server_lines(&b, &[]),
        "deep_sched choose=hash key=$cookie_session balance=off;",
    ));
    let s = spread(&nginx, 30);
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(s.values().all(|&c| c == 10), "{s:?}");
}

#[test]
fn configured_weights_set_the_shares() {
    let b = backends(3, 8, 0.5);
    let weights = [1, 1, 6];
    let nginx = Nginx::start(&conf(
        &server_lines(&b, &["weight=1", "weight=1", "weight=6"]),
        "deep_sched choose=hash key=$request_uri balance=off;",
    ));
    let r = ring(&b, &weights);
    let routed = route(&nginx, 0..400);
    let mut count = [0usize; 3];
    for &(k, got) in &routed {
        assert_eq!(got, owner(&r, k), "key {k}");
        count[got] += 1;
    }
    // 6/8 of the ring: well above half, the others well below.
    assert!(
        count[2] > 240 && count[0] < 100 && count[1] < 100,
        "{count:?}"
    );
}

/// Under `explore` the ring follows the weights each decision publishes:
/// between two status reads that show the same decision, every key goes
/// where the ring of the published weights says.
#[test]
fn published_weights_rebuild_the_ring() {
    let b = backends(3, 8, 0.5);
    let nginx = Nginx::start(&conf(
        &server_lines(&b, &[]),
        "deep_sched explore weights=1,8 interval=2s choose=hash key=$request_uri balance=off;",
    ));
    let published = |st: &Value| -> (u64, Vec<u32>) {
        let a = &st["agents"][0];
        let w = a["upstreams"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["weight"].as_u64().unwrap() as u32)
            .collect();
        (a["decisions"].as_u64().unwrap(), w)
    };
    let mut checked = Vec::new();
    for attempt in 0..12 {
        let (d0, w0) = published(&nginx.status());
        if d0 == 0 {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let routed = route(&nginx, attempt * 100..attempt * 100 + 100);
        let (d1, _) = published(&nginx.status());
        if d1 != d0 {
            continue; // a decision in between: try again
        }
        let r = ring(&b, &w0);
        for &(k, got) in &routed {
            assert_eq!(got, owner(&r, k), "weights {w0:?}, key {k}");
        }
        if !checked.contains(&w0) {
            checked.push(w0);
        }
        if checked.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert!(
        checked.len() >= 2,
        "saw routing under two different published weight sets: {checked:?}"
    );
}

/// A refusing peer's keys walk on to the next peer on the ring (nginx's
/// retry, then `max_fails` marks it failed); the others' keys stay.
#[test]
fn a_failed_peers_keys_move_to_the_next_peer_only() {
    let b = backends(4, 8, 0.5);
    let nginx = Nginx::start(&conf(
        &server_lines(&b, &["max_fails=1 fail_timeout=30s"; 4]),
        "deep_sched choose=hash key=$request_uri;",
    ));
    let r = ring(&b, &[1; 4]);
    b[1].set_mode(Mode::Refuse);
    let mut loads = vec![
        PeerLoad {
            eligible: true,
            ..PeerLoad::default()
        };
        4
    ];
    loads[1].eligible = false;
    let mut moved = 0;
    for (k, got) in route(&nginx, 0..200) {
        let h = HashFn::Xxh3.key(uri(k).as_bytes());
        let want = r.pick(h, &loads, Balance::Off).unwrap();
        assert_eq!(got, want, "key {k} (owner {})", owner(&r, k));
        if owner(&r, k) == 1 {
            moved += 1;
        }
    }
    assert!(moved > 10, "the refusing peer owned keys: {moved}");
}

/// A hot key on slow peers: with `balance=1.25` and 12 clients no backend
/// ever holds more than ⌈1.25 · 12 / 4⌉ = 4 requests and the load spreads;
/// with `balance=off` the key's owner takes every request.
#[test]
fn a_hot_key_is_spread_within_the_bound() {
    let run = |balance: &str| -> (BTreeMap<usize, u64>, usize) {
        let b = backends(4, 32, 40.0);
        let nginx = Nginx::start(&conf(
            &server_lines(&b, &[]),
            &format!("deep_sched choose=hash key=$request_uri balance={balance};"),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..12)
            .map(|_| {
                let stop = stop.clone();
                let port = nginx.port;
                std::thread::spawn(move || {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    let mut failed = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if http_get(addr, &uri(7)).status != 200 {
                            failed += 1;
                        }
                    }
                    failed
                })
            })
            .collect();
        let mut most = 0;
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(25));
            for h in &b {
                let s = h.stats();
                most = most.max(s.in_service + s.queued);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let failed: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(failed, 0, "balance={balance}");
        let counts = b
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.stats().count))
            .collect();
        (counts, most)
    };
    let (bounded, most) = run("1.25");
    let total: u64 = bounded.values().sum();
    let top = *bounded.values().max().unwrap();
    eprintln!("balance=1.25: {bounded:?}, most at once {most}");
    assert!(total > 100, "{bounded:?}");
    assert!(most <= 4, "a backend held {most} > the bound 4");
    assert!(
        bounded.values().filter(|&&c| c > 0).count() >= 3,
        "{bounded:?}"
    );
    assert!((top as f64) < 0.5 * total as f64, "{bounded:?}");

    let (plain, most_plain) = run("off");
    eprintln!("balance=off: {plain:?}, most at once {most_plain}");
    assert_eq!(
        plain.values().filter(|&&c| c > 0).count(),
        1,
        "plain consistent hashing: one backend for one key: {plain:?}"
    );
    assert!(most_plain > 4, "{most_plain}");
}

#[test]
fn bad_key_and_balance_fail_nginx_t() {
    let servers = "        server 127.0.0.1:1;\n        server 127.0.0.1:2;\n";
    let t = |directive: &str, extra: &str| {
        let out = nginx_t(&full_config(
            &format!(
                "    upstream backend {{\n{servers}        {directive}\n    }}\n{extra}\
                 server {{ listen 127.0.0.1:1; location / {{ proxy_pass http://backend; }} }}\n"
            ),
            1,
        ));
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases = [
        (
            "deep_sched choose=hash key=$no_such_variable;",
            "invalid parameter \"key=$no_such_variable\" in \"deep_sched\": unknown variable \"$no_such_variable\" (upstream \"backend\")",
        ),
        (
            "deep_sched choose=hash key=${host}$nope;",
            "invalid parameter \"key=${host}$nope\" in \"deep_sched\": unknown variable \"$nope\"",
        ),
        (
            "deep_sched choose=hash key=$request_uri balance=0.5;",
            "invalid parameter \"balance=0.5\" in \"deep_sched\": the factor must be at least 1",
        ),
        (
            "deep_sched choose=hash key=$request_uri balance=much;",
            "invalid parameter \"balance=much\" in \"deep_sched\": expected a factor",
        ),
        (
            "deep_sched choose=hash;",
            "invalid parameter \"choose=hash\" in \"deep_sched\": needs \"key=\"",
        ),
        (
            "deep_sched choose=hash key=${uri;",
            "invalid parameter \"key=${uri\" in \"deep_sched\": \"${\" is not closed",
        ),
        (
            "deep_sched choose=hash key=plain;",
            "invalid parameter \"key=plain\" in \"deep_sched\": the key names no variable",
        ),
        (
            "deep_sched key=$request_uri;",
            "invalid parameter \"key=$request_uri\" in \"deep_sched\": only valid with \"choose=hash\"",
        ),
    ];
    for (directive, needle) in cases {
        let (status, stderr) = t(directive, "");
        assert!(!status.success(), "{directive}: accepted");
        assert!(status.code().is_some(), "{directive}: crashed: {stderr}");
        assert!(stderr.contains(needle), "{directive}: {stderr}");
    }
    // Known variables pass: built-in, prefixed ($cookie_, $arg_, $http_),
    // and one a `map` after the upstream defines.
    for (directive, extra) in [
        ("deep_sched choose=hash key=$cookie_session;", ""),
        (
            "deep_sched choose=hash key=$http_x_user$arg_id balance=2;",
            "",
        ),
        (
            "deep_sched choose=hash key=$tenant balance=off;",
            "    map $host $tenant { default $host; }\n",
        ),
    ] {
        let (status, stderr) = t(directive, extra);
        assert!(status.success(), "{directive}: {stderr}");
    }
}
