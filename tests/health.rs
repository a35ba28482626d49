//! Active health checks (`deep_sched_check`) through the real nginx with
//! several workers: a failing peer goes out within `fall x interval` and
//! comes back within `rise x interval`; a hung check is out after
//! `timeout`; a dead peer is out before client requests reach it; refused,
//! reset and garbage answers are logged once per transition; the health
//! survives `nginx -s reload`; bad directives are refused by `nginx -t`.
//!
//! Intervals are 200 ms so the file runs in seconds. Time bounds allow for
//! the checker's tick (a fifth of the interval) and the status polling.

mod harness;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 300;
const FALL: u64 = 3;
const RISE: u64 = 2;
/// Slack on every time bound: a checker tick (40 ms), the status poll
/// (20 ms) and a loaded 2-core machine's scheduling.
const SLACK_MS: u64 = 400;

fn check_line() -> String {
    format!(
        "deep_sched_check uri=/health interval={INTERVAL_MS}ms timeout={TIMEOUT_MS}ms \
         fall={FALL} rise={RISE};"
    )
}

/// An http body: upstream `app` (with a zone) and a server without retries
/// (`proxy_next_upstream off`: a request that reaches a dead peer fails).
fn http(servers: &str, directives: &str) -> String {
    format!(
        "    upstream app {{\n\
                 zone app 64k;\n\
                 {directives}\n\
         {servers}\
             }}\n\
             server {{\n\
                 listen 127.0.0.1:{{port}};\n\
                 proxy_next_upstream off;\n\
                 proxy_connect_timeout 2s;\n\
                 proxy_read_timeout 5s;\n\
                 location / {{ proxy_pass http://app; }}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n"
    )
}

/// The `health` object of `server` on the status page (`Null` if absent).
fn health(nginx: &Nginx, server: &str) -> serde_json::Value {
    let s = nginx.status();
    for a in s["agents"].as_array().into_iter().flatten() {
        for u in a["upstreams"].as_array().into_iter().flatten() {
            for p in u["peers"].as_array().into_iter().flatten() {
                if p["server"] == server {
                    return p["health"].clone();
                }
            }
        }
    }
    serde_json::Value::Null
}

fn state(nginx: &Nginx, server: &str) -> String {
    health(nginx, server)["state"]
        .as_str()
        .unwrap_or("absent")
        .to_owned()
}

/// Polls every 20 ms until `server`'s state is `want`; returns how long it
/// took, or panics after `limit`.
fn wait_state(nginx: &Nginx, server: &str, want: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let s = state(nginx, server);
        if s == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{server} still {s} after {limit:?} (want {want}):\n{}\n{}",
            health(nginx, server),
            nginx.error_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Error-log lines mentioning `needle`.
fn log_lines(nginx: &Nginx, needle: &str) -> Vec<String> {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[test]
fn failing_health_takes_a_peer_out_and_rise_brings_it_back() {
    let b = backends(2, 8, 1.0);
    let (a1, a2) = (b[0].addr().to_string(), b[1].addr().to_string());
    let conf = full_config(
        &http(
            &server_lines(&b, &[]),
            &format!("deep_sched;\n{}", check_line()),
        ),
        2,
    );
    let nginx = Nginx::start(&conf);
    wait_state(&nginx, &a1, "up", Duration::from_secs(5));
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    let both = spread(&nginx, 20);
    assert!(both.get("b2").copied().unwrap_or(0) > 0, "{both:?}");

    b[1].control().set_health(HealthMode::Status(500));
    let out = wait_state(&nginx, &a2, "down", Duration::from_secs(5));
    eprintln!("500 on /health: down after {} ms", ms(out));
    assert!(
        ms(out) <= FALL * INTERVAL_MS + SLACK_MS,
        "out after {out:?}, fall x interval = {} ms",
        FALL * INTERVAL_MS
    );
    let h = health(&nginx, &a2);
    assert_eq!(h["lastError"], "status");
    assert_eq!(h["lastStatus"], 500);
    assert!(h["consecutiveFails"].as_u64().unwrap() >= FALL, "{h}");
    let during = spread(&nginx, 40);
    assert_eq!(
        during.get("b1"),
        Some(&40),
        "every request to b1: {during:?}"
    );

    // More failed checks: still one log line for the transition.
    std::thread::sleep(Duration::from_millis(4 * INTERVAL_MS));
    let down_lines = log_lines(&nginx, &format!("peer {a2} of upstream \"app\" is down"));
    assert_eq!(down_lines.len(), 1, "{down_lines:?}");
    assert!(down_lines[0].contains("[warn]"), "{down_lines:?}");
    assert!(down_lines[0].contains("answered 500"), "{down_lines:?}");

    b[1].control().set_health(HealthMode::Status(200));
    let back = wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    eprintln!("200 again: up after {} ms", ms(back));
    assert!(
        ms(back) <= RISE * INTERVAL_MS + SLACK_MS,
        "back after {back:?}, rise x interval = {} ms",
        RISE * INTERVAL_MS
    );
    let after = spread(&nginx, 40);
    assert!(after.get("b2").copied().unwrap_or(0) > 0, "{after:?}");
    assert_eq!(
        log_lines(&nginx, &format!("peer {a2} of upstream \"app\" is up")).len(),
        2,
        "one line for the first pass, one for the return"
    );
}

#[test]
fn a_hung_check_is_out_after_its_timeout() {
    let b = backends(2, 8, 1.0);
    let a2 = b[1].addr().to_string();
    // fall=1: one hung check takes it out, so the time is the timeout's.
    let conf = full_config(
        &http(
            &server_lines(&b, &[]),
            &format!(
                "deep_sched choose=p2c;\ndeep_sched_check uri=/health interval={INTERVAL_MS}ms \
                 timeout={TIMEOUT_MS}ms fall=1 rise=1;"
            ),
        ),
        2,
    );
    let nginx = Nginx::start(&conf);
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    b[1].control().set_health(HealthMode::Hang);
    let out = wait_state(&nginx, &a2, "down", Duration::from_secs(5));
    eprintln!("hung /health: down after {} ms", ms(out));
    assert!(
        ms(out) <= INTERVAL_MS + TIMEOUT_MS + SLACK_MS,
        "out after {out:?}"
    );
    let h = health(&nginx, &a2);
    assert_eq!(h["lastError"], "timeout", "{h}");
    let took = h["lastLatencyMsec"].as_u64().unwrap();
    assert!(
        (TIMEOUT_MS..TIMEOUT_MS + SLACK_MS).contains(&took),
        "the check took {took} ms"
    );
    // The requests themselves still work at b2; p2c skips it anyway.
    let during = spread(&nginx, 30);
    assert_eq!(during.get("b1"), Some(&30), "{during:?}");
    let lines = log_lines(&nginx, &format!("peer {a2} of upstream \"app\" is down"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no answer within 300ms"), "{lines:?}");
}

/// A peer nothing listens on. With checks, no client request reaches it
/// (no retries: one that did would fail); without, some do.
#[test]
fn a_dead_peer_is_out_before_client_requests_reach_it() {
    let b = backends(1, 8, 1.0);
    let dead = format!("127.0.0.1:{}", free_port());
    let servers = format!("{}        server {dead};\n", server_lines(&b, &[]));
    let conf = full_config(
        &http(&servers, &format!("deep_sched;\n{}", check_line())),
        2,
    );
    let nginx = Nginx::start(&conf);
    let out = wait_state(&nginx, &dead, "down", Duration::from_secs(3));
    eprintln!("dead peer: down {} ms after nginx listened", ms(out));
    let r = spread(&nginx, 60);
    assert_eq!(r.get("b1"), Some(&60), "client errors with checks: {r:?}");
    let connect_errors = log_lines(&nginx, "while connecting to upstream");
    assert!(connect_errors.is_empty(), "{connect_errors:?}");
    let h = health(&nginx, &dead);
    assert_eq!(h["lastError"], "refused", "{h}");
    let down = log_lines(&nginx, &format!("peer {dead} of upstream \"app\" is down"));
    assert_eq!(down.len(), 1, "{down:?}");
    assert!(down[0].contains("connection refused"), "{down:?}");
    drop(nginx);

    // Control: the same without checks sends clients to the dead peer.
    let conf = full_config(&http(&servers, "deep_sched;"), 2);
    let nginx = Nginx::start(&conf);
    let r = spread(&nginx, 60);
    assert!(r.get("b1").copied().unwrap_or(0) < 60, "{r:?}");
}

/// A raw TCP target run by the test: `answer` gets each accepted stream.
struct RawTarget {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawTarget {
    fn start(answer: fn(std::net::TcpStream)) -> RawTarget {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        answer(stream)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawTarget {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn refused_reset_and_garbage_targets_are_down_and_logged_once() {
    let b = backends(1, 8, 1.0);
    let garbage = RawTarget::start(|mut s| {
        let mut buf = [0u8; 512];
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
    });
    // Closes without reading the request: a reset (or, if the request had
    // not arrived yet, a close before any status line).
    let reset = RawTarget::start(drop);
    let refused = format!("127.0.0.1:{}", free_port());
    let servers = format!(
        "{}        server {};\n        server {};\n        server {refused};\n",
        server_lines(&b, &[]),
        garbage.addr,
        reset.addr
    );
    let conf = full_config(
        &http(&servers, &format!("deep_sched;\n{}", check_line())),
        3,
    );
    let nginx = Nginx::start(&conf);
    for (addr, errors, reason) in [
        (
            &garbage.addr,
            &["garbage"][..],
            "answered garbage: expected \"HTTP/1.\"",
        ),
        (&reset.addr, &["reset", "closed"][..], ""),
        (&refused, &["refused"][..], "connection refused"),
    ] {
        wait_state(&nginx, addr, "down", Duration::from_secs(3));
        // Let several more checks fail.
        let t0 = Instant::now();
        while health(&nginx, addr)["checks"].as_u64().unwrap_or(0) < 6 {
            assert!(t0.elapsed() < Duration::from_secs(5), "checks stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
        let h = health(&nginx, addr);
        let e = h["lastError"].as_str().unwrap_or("none");
        assert!(errors.contains(&e), "{addr}: {h}");
        let lines = log_lines(&nginx, &format!("peer {addr} of upstream \"app\" is down"));
        assert_eq!(lines.len(), 1, "once per transition: {lines:?}");
        assert!(lines[0].contains(reason), "{lines:?}");
    }
    let r = spread(&nginx, 40);
    assert_eq!(r.get("b1"), Some(&40), "{r:?}");
    // nginx's own per-connection errors of the checks stay out of the log.
    for noise in [
        "connect() to",
        "recv() failed",
        "[error]",
        "[crit]",
        "[alert]",
    ] {
        let lines = log_lines(&nginx, noise);
        assert!(lines.is_empty(), "{noise}: {lines:?}");
    }
}

#[test]
fn health_survives_reload_and_checks_go_on() {
    let b = backends(3, 8, 1.0);
    let a2 = b[1].addr().to_string();
    let two = full_config(
        &http(
            &server_lines(&b[..2], &[]),
            &format!("deep_sched;\n{}", check_line()),
        ),
        2,
    );
    let nginx = Nginx::start(&two);
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    b[1].control().set_health(HealthMode::Status(503));
    wait_state(&nginx, &a2, "down", Duration::from_secs(5));

    // Same configuration (the zone is kept), then a third peer (a new
    // zone: the health of the peers that remain is carried over).
    for (conf, peers) in [
        (two.clone(), 2),
        (
            full_config(
                &http(
                    &server_lines(&b, &[]),
                    &format!("deep_sched;\n{}", check_line()),
                ),
                2,
            ),
            3,
        ),
    ] {
        let before = nginx.status()["agents"][0]["upstreams"][0]["peers"]
            .as_array()
            .map(Vec::len);
        nginx.reload_with(&conf);
        // Until the new workers answer the status page (a new peer count,
        // or new worker pids for the same configuration).
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        loop {
            let n = nginx.status()["agents"][0]["upstreams"][0]["peers"]
                .as_array()
                .map(Vec::len);
            if n == Some(peers)
                && (peers != before.unwrap_or(0) || t0.elapsed() > Duration::from_millis(300))
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "reload not applied");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(state(&nginx, &a2), "down", "after reload to {peers} peers");
        let r = spread(&nginx, 30);
        assert_eq!(r.get("b2"), None, "{r:?}");
    }
    // The checks go on in the new workers: b2 comes back.
    b[1].control().set_health(HealthMode::Status(200));
    let back = wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    eprintln!("after two reloads: up {} ms after answering 200", ms(back));
    wait_state(
        &nginx,
        &b[2].addr().to_string(),
        "up",
        Duration::from_secs(5),
    );
    let r = spread(&nginx, 60);
    assert!(r.get("b2").copied().unwrap_or(0) > 0, "{r:?}");
    assert!(r.get("b3").copied().unwrap_or(0) > 0, "{r:?}");
    // Retired workers waited for their checks in flight: no socket left.
    let alerts = log_lines(&nginx, "[alert]");
    assert!(alerts.is_empty(), "{alerts:?}");
}

fn checker_pid(nginx: &Nginx) -> u64 {
    nginx.status()["agents"][0]["checkerPid"]
        .as_u64()
        .unwrap_or(0)
}

/// The checking worker is killed: another takes the lease over and the
/// checks go on.
#[test]
fn another_worker_takes_over_when_the_checker_dies() {
    let b = backends(2, 8, 1.0);
    let a2 = b[1].addr().to_string();
    let conf = full_config(
        &http(
            &server_lines(&b, &[]),
            &format!("deep_sched;\n{}", check_line()),
        ),
        2,
    );
    let nginx = Nginx::start(&conf);
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    let first = checker_pid(&nginx);
    assert!(first > 0, "{}", nginx.status());
    let killed = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(first.to_string())
        .status()
        .expect("kill");
    assert!(killed.success());
    let t0 = Instant::now();
    b[1].control().set_health(HealthMode::Status(500));
    let out = wait_state(&nginx, &a2, "down", Duration::from_secs(5));
    let second = checker_pid(&nginx);
    eprintln!(
        "checker {first} killed: {second} checks; b2 down {} ms after",
        ms(t0.elapsed().max(out))
    );
    assert!(second > 0 && second != first, "{first} -> {second}");
}

/// A peer back from the checks' exclusion ramps up under `slow_start=`.
#[test]
fn a_peer_back_from_the_checks_starts_its_slow_start() {
    let b = backends(2, 8, 1.0);
    let a2 = b[1].addr().to_string();
    let conf = full_config(
        &http(
            &server_lines(&b, &[]),
            &format!(
                "deep_sched explore weights=1 choose=p2c slow_start=20s;\n{}",
                check_line()
            ),
        ),
        2,
    );
    let nginx = Nginx::start(&conf);
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    let factor = |n: &Nginx| {
        n.status()["agents"][0]["upstreams"][0]["peers"][1]["slowStartFactor"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(factor(&nginx), 1.0, "no ramp after the first pass");
    b[1].control().set_health(HealthMode::Status(500));
    wait_state(&nginx, &a2, "down", Duration::from_secs(5));
    b[1].control().set_health(HealthMode::Status(200));
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    let f = factor(&nginx);
    assert!(f < 0.3, "slow start factor {f} right after coming back");
}

/// One worker checks (of three): each peer sees about one check per
/// interval, not one per worker.
#[test]
fn one_worker_checks_at_a_time() {
    let b = backends(1, 8, 1.0);
    let a1 = b[0].addr().to_string();
    let conf = full_config(
        &http(
            &server_lines(&b, &[]),
            &format!(
                "deep_sched interval=200ms log=logs/samples.jsonl;\n{}",
                check_line()
            ),
        ),
        3,
    );
    let nginx = Nginx::start(&conf);
    wait_state(&nginx, &a1, "up", Duration::from_secs(5));
    let n0 = b[0].control().health_requests();
    std::thread::sleep(Duration::from_secs(2));
    let n = b[0].control().health_requests() - n0;
    let per_interval = 2000 / INTERVAL_MS;
    eprintln!("{n} checks in 2 s at interval {INTERVAL_MS} ms, 3 workers");
    assert!(
        n >= per_interval / 2 && n <= per_interval + 3,
        "{n} checks in 2 s (one checker: about {per_interval})"
    );
    // The sample log carries the health, for the learner.
    let lines = nginx.lines("logs/samples.jsonl");
    let last: serde_json::Value = serde_json::from_str(lines.last().expect("samples")).unwrap();
    let h = &last["upstreams"][0]["peers"][0]["health"];
    assert_eq!(h["state"], "up", "{last}");
    assert!(h["passes"].as_u64().unwrap() >= 1, "{h}");
    assert!(h["error"].is_null(), "{h}");
    let record: deep_sched_core::samples::SampleRecord =
        serde_json::from_str(lines.last().unwrap()).expect("the learner's reader loads it");
    assert_eq!(
        record.upstreams[0].peers[0]
            .health
            .as_ref()
            .map(|h| h.state.as_str()),
        Some("up")
    );
}

fn refused(conf: &str) -> String {
    let out = nginx_t(conf);
    assert!(!out.status.success(), "nginx -t accepted:\n{conf}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_check_directives_fail_nginx_t() {
    let servers = "        server 127.0.0.1:9;\n";
    let with = |directives: &str| full_config(&http(servers, directives), 1).replace("{port}", "1");

    let ok = nginx_t(&with(&format!("deep_sched;\n{}", check_line())));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ok = nginx_t(&with(
        "deep_sched explore;\ndeep_sched_check type=tcp tls port=8080;",
    ));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    for (line, wants) in [
        (
            "deep_sched_check interval=0;",
            &["\"interval\"", "\"0\""][..],
        ),
        (
            "deep_sched_check interval=10ms;",
            &["\"interval\"", "\"10ms\""],
        ),
        (
            "deep_sched_check timeout=soon;",
            &["\"timeout\"", "\"soon\""],
        ),
        ("deep_sched_check fall=0;", &["\"fall\"", "\"0\""]),
        ("deep_sched_check rise=1000;", &["\"rise\"", "\"1000\""]),
        (
            "deep_sched_check status=200-600;",
            &["\"status\"", "\"200-600\""],
        ),
        (
            "deep_sched_check status=399-200;",
            &["\"status\"", "\"399-200\""],
        ),
        ("deep_sched_check port=70000;", &["\"port\"", "\"70000\""]),
        ("deep_sched_check type=udp;", &["\"type\"", "\"udp\""]),
        (
            "deep_sched_check uri=health;",
            &["\"uri\"", "\"health\"", "path"],
        ),
        ("deep_sched_check uri=http://x/;", &["\"uri\"", "path"]),
        ("deep_sched_check bogus=1;", &["\"bogus=1\""]),
        ("deep_sched_check tls tls;", &["\"tls\"", "twice"]),
        ("deep_sched_check ssl;", &["\"ssl\""]),
        (
            "deep_sched_check type=tcp uri=/x;",
            &["\"uri=/x\"", "type=http"],
        ),
        ("deep_sched_check;\ndeep_sched_check;", &["duplicate"]),
    ] {
        let err = refused(&with(&format!("deep_sched;\n{line}")));
        assert!(err.contains("\"deep_sched_check\""), "{line}: {err}");
        for w in wants {
            assert!(err.contains(w), "{line}: want {w} in {err}");
        }
    }

    // Without a zone.
    let conf = full_config(
        &format!(
            "upstream app {{ deep_sched; {} {servers} }}\n\
             server {{ listen 127.0.0.1:1; location / {{ proxy_pass http://app; }} }}\n",
            check_line()
        ),
        1,
    );
    let err = refused(&conf);
    assert!(
        err.contains("\"deep_sched_check\" in upstream \"app\" needs a \"zone\""),
        "{err}"
    );
    // Without deep_sched.
    let err = refused(&with(&check_line()));
    assert!(
        err.contains("\"deep_sched_check\" in upstream \"app\" needs \"deep_sched\""),
        "{err}"
    );
}

/// `tls`: the check shakes hands, then judges the answer; a peer that
/// does not speak TLS is down with the reason.
#[test]
fn tls_checks_shake_hands_and_judge_the_answer() {
    let dir = TempDir::new("tls-check");
    let (key, crt) = (dir.path().join("key.pem"), dir.path().join("crt.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ports = [free_port(), free_port()];
    let tls_servers: String = ports
        .iter()
        .zip([200, 500])
        .enumerate()
        .map(|(i, (p, code))| {
            format!(
                "    server {{ listen 127.0.0.1:{p} ssl; ssl_certificate {crt}; \
                 ssl_certificate_key {key}; add_header X-Backend tls{i} always;\n\
                 \x20       location = /health {{ return {code}; }}\n\
                 \x20       location / {{ return 200 \"tls{i}\"; }} }}\n",
                crt = crt.display(),
                key = key.display()
            )
        })
        .collect();
    let plain = backends(1, 8, 1.0);
    let plain_addr = plain[0].addr().to_string();
    let peers = [
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
        plain_addr.clone(),
    ];
    let body = format!(
        "{tls_servers}\
             upstream app {{\n\
                 zone app 64k;\n\
                 deep_sched;\n\
                 deep_sched_check tls uri=/health interval={INTERVAL_MS}ms timeout={TIMEOUT_MS}ms \
                 fall=1 rise=1;\n\
                 server {};\n server {};\n server {};\n\
             }}\n\
             server {{\n\
                 listen 127.0.0.1:{{port}};\n\
                 proxy_next_upstream off;\n\
                 location / {{ proxy_pass https://app; }}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n",
        peers[0], peers[1], peers[2]
    );
    let nginx = Nginx::start(&full_config(&body, 2));
    wait_state(&nginx, &peers[0], "up", Duration::from_secs(5));
    wait_state(&nginx, &peers[1], "down", Duration::from_secs(5));
    wait_state(&nginx, &peers[2], "down", Duration::from_secs(5));
    let h = health(&nginx, &peers[1]);
    assert_eq!(
        (h["lastError"].as_str(), h["lastStatus"].as_u64()),
        (Some("status"), Some(500)),
        "{h}"
    );
    let h = health(&nginx, &peers[2]);
    assert_eq!(h["lastError"], "tls", "{h}");
    let lines = log_lines(
        &nginx,
        &format!("peer {plain_addr} of upstream \"app\" is down"),
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("TLS handshake failed"), "{lines:?}");
    let r = spread(&nginx, 30);
    assert_eq!(r.get("tls0"), Some(&30), "{r:?}");
    for noise in ["SSL_do_handshake", "[error]", "[crit]", "[alert]"] {
        let lines = log_lines(&nginx, noise);
        assert!(lines.is_empty(), "{noise}: {lines:?}");
    }
}

/// `master_process off`: a reload makes a new cycle in the same process,
/// which nginx gives no connections of its own (it serves no new client
/// after such a reload either). Its checks then cannot connect: that is
/// not the peers' failure, so no peer is marked down, and the process
/// lives on with a check in flight from the old cycle.
#[test]
fn single_process_reload_marks_no_peer_down() {
    let b = backends(3, 8, 1.0);
    let a2 = b[1].addr().to_string();
    let single = |n: usize| {
        full_config(
            &http(
                &server_lines(&b[..n], &[]),
                &format!("deep_sched;\n{}", check_line()),
            ),
            1,
        )
        .replace("master_process on;", "master_process off;")
    };
    let nginx = Nginx::start(&single(2));
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    wait_state(
        &nginx,
        &b[0].addr().to_string(),
        "up",
        Duration::from_secs(5),
    );
    // A hung check is in flight at the reload.
    b[1].control().set_health(HealthMode::Hang);
    std::thread::sleep(Duration::from_millis(INTERVAL_MS));
    for n in [3, 2] {
        nginx.reload_with(&single(n));
        std::thread::sleep(Duration::from_millis(5 * INTERVAL_MS));
    }
    let alive = std::process::Command::new("kill")
        .arg("-0")
        .arg(nginx.pid().to_string())
        .status()
        .expect("kill -0");
    assert!(alive.success(), "nginx died:\n{}", nginx.error_log());
    let log = nginx.error_log();
    assert!(log.matches("reconfiguring").count() >= 2, "{log}");
    for peer in [&b[0], &b[2]] {
        let down = log_lines(
            &nginx,
            &format!("peer {} of upstream \"app\" is down", peer.addr()),
        );
        assert!(down.is_empty(), "{down:?}");
    }
    for noise in ["[crit]", "[alert]", "[emerg]"] {
        let lines = log_lines(&nginx, noise);
        assert!(lines.is_empty(), "{noise}: {lines:?}");
    }
}

/// Round robin with `backup` servers: a checked-down primary is skipped
/// for the other primaries; when every primary is down, the backups serve
/// (and backups are not checked).
#[test]
fn down_primaries_fall_back_to_backups() {
    for mode in ["deep_sched;", "deep_sched explore weights=1 choose=p2c;"] {
        fall_back_to_backups(mode);
    }
}

fn fall_back_to_backups(mode: &str) {
    let b = backends(3, 8, 1.0);
    let servers = server_lines(&b, &["", "", "backup"]);
    let conf = full_config(&http(&servers, &format!("{mode}\n{}", check_line())), 2);
    let nginx = Nginx::start(&conf);
    let (a1, a2) = (b[0].addr().to_string(), b[1].addr().to_string());
    wait_state(&nginx, &a1, "up", Duration::from_secs(5));
    wait_state(&nginx, &a2, "up", Duration::from_secs(5));
    assert_eq!(
        b[2].control().health_requests(),
        0,
        "backups are not checked"
    );

    b[0].control().set_health(HealthMode::Status(500));
    wait_state(&nginx, &a1, "down", Duration::from_secs(5));
    let r = spread(&nginx, 30);
    assert_eq!(r.get("b2"), Some(&30), "{mode} the other primary: {r:?}");

    b[1].control().set_health(HealthMode::Status(500));
    wait_state(&nginx, &a2, "down", Duration::from_secs(5));
    let r = spread(&nginx, 30);
    assert_eq!(r.get("b3"), Some(&30), "{mode} the backup: {r:?}");

    b[0].control().set_health(HealthMode::Status(200));
    wait_state(&nginx, &a1, "up", Duration::from_secs(5));
    let r = spread(&nginx, 30);
    assert_eq!(r.get("b1"), Some(&30), "{mode} the primary back: {r:?}");
}
