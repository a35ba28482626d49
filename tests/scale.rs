//! Many peers: no cap on the number of peers, and at 256 peers with two
//! workers the counters are exact and `choose=p2c` (table draws, read lock)
//! still honours `down`, `max_conns` and `backup` (issue #16).

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use serde_json::Value;

/// `n` server lines over the backends in turn, with `param(i)` appended.
fn many_servers(b: &[BackendHandle], n: usize, param: impl Fn(usize) -> &'static str) -> String {
    (0..n)
        .map(|i| format!("        server {} {};\n", b[i % b.len()].addr(), param(i)))
        .collect()
}

fn conf(servers: &str, directive: &str, workers: u32) -> String {
    full_config(
        &format!(
            "    upstream backend {{\n{servers}        {directive}\n        zone backend 4m;\n    }}\n\
             server {{\n\
                 listen 127.0.0.1:{{port}};\n\
                 proxy_next_upstream error timeout http_502;\n\
                 proxy_connect_timeout 2s;\n\
                 location / {{ proxy_pass http://backend; }}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n"
        ),
        workers,
    )
}

fn peers(st: &Value) -> &Vec<Value> {
    st["agents"][0]["upstreams"][0]["peers"].as_array().unwrap()
}

fn field(st: &Value, f: &str) -> Vec<u64> {
    peers(st).iter().map(|p| p[f].as_u64().unwrap()).collect()
}

/// 1,024 peers: accepted, balanced as round robin in observe mode, and the
/// status lists every one (the old limit was 64).
#[test]
fn a_thousand_peers_are_accepted_and_reported() {
    let b = backends(4, 4, 1.0);
    let servers = many_servers(&b, 1024, |_| "");
    let nginx = Nginx::start(&conf(&servers, "deep_sched;", 1));
    let sent = 2048;
    let s = spread(&nginx, sent);
    assert_eq!(
        s.keys().filter(|k| k.starts_with("status:")).count(),
        0,
        "{s:?}"
    );
    let st = nginx.status();
    assert_eq!(peers(&st).len(), 1024);
    let counts = field(&st, "requestCounter");
    assert_eq!(counts.iter().sum::<u64>(), sent as u64);
    // Round robin over equal weights: every peer exactly twice.
    assert!(counts.iter().all(|&c| c == 2), "{counts:?}");
}

/// Two workers, 256 peers, `choose=p2c`: peers 0..16 are `down`, peers
/// 16..32 have `max_conns=1`; one `backup`. Under concurrent load the
/// per-peer counters summed over both workers equal the requests sent,
/// down peers get nothing, a `max_conns=1` peer never holds two, and the
/// backup is used only when every primary refuses.
#[test]
fn p2c_at_256_peers_counts_exactly_and_honours_down_max_conns_backup() {
    let b = backends(16, 8, 5.0);
    let backup = backend::spawn(BackendConfig {
        name: "bk".into(),
        workers: 8,
        service: ServiceTimes::uniform(Delay::Fixed { ms: 1.0 }),
        ..BackendConfig::default()
    })
    .expect("backup backend");
    let mut servers = many_servers(&b, 256, |i| match i {
        0..16 => "down",
        16..32 => "max_conns=1",
        _ => "",
    });
    servers.push_str(&format!("        server {} backup;\n", backup.addr()));
    let nginx = Nginx::start(&conf(
        &servers,
        "deep_sched explore weights=1,3 interval=500ms choose=p2c;",
        2,
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let port = nginx.port;
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                while !stop.load(Ordering::Relaxed) {
                    let r = http_get(addr, READ);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 || r.header("X-Backend") == Some("bk") {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut most_at_capped = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(80));
        let inflight = field(&nginx.status(), "inflight");
        most_at_capped = most_at_capped.max(*inflight[16..32].iter().max().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "failed or sent to the backup while primaries serve"
    );
    assert!(sent > 500, "enough load: {sent}");
    std::thread::sleep(Duration::from_millis(200));
    let st = nginx.status();
    let counts = field(&st, "requestCounter");
    assert_eq!(peers(&st).len(), 256, "backups are not agent peers");
    assert_eq!(
        counts.iter().sum::<u64>(),
        sent,
        "counters summed over 2 workers"
    );
    assert!(
        counts[..16].iter().all(|&c| c == 0),
        "down peers: {:?}",
        &counts[..16]
    );
    assert!(
        most_at_capped <= 1,
        "a max_conns=1 peer held {most_at_capped}"
    );
    assert!(
        counts[16..32].iter().sum::<u64>() > 0,
        "max_conns=1 peers still serve"
    );
    assert!(
        counts[32..].iter().filter(|&&c| c > 0).count() > 150,
        "the load spreads over the peers"
    );

    // Every primary refuses: the backup answers.
    for h in &b {
        h.set_mode(Mode::Refuse);
    }
    let s = spread(&nginx, 20);
    assert_eq!(s.get("bk"), Some(&20), "{s:?}");
}
