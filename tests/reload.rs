//! End-to-end tests of the module across reloads and nginx's process
//! roles, in a real nginx (`build/sbin/nginx`) with emulated backends on
//! 127.0.0.1:
//! - a reload that keeps the zone (same layout) and shortens `interval=`
//!   brings the next decision within the *new* interval;
//! - only worker processes decide: the cache manager and loader, which run
//!   every module's `init_process` too, never do;
//! - `master_process off`: a reload (to a new layout, or keeping the zone)
//!   keeps the one process alive, answering on the connections it has, and
//!   deciding for the new cycle;
//! - the status page names the process that made the last decision.

mod harness;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

/// One upstream `backend` with `directive`, everything proxied to it.
fn one_upstream(b: &[BackendHandle], directive: &str) -> String {
    let servers = server_lines(b, &[]);
    format!(
        "    upstream backend {{\n{servers}        {directive}\n    }}\n{}",
        proxy_server("        location / { proxy_pass http://backend; }")
    )
}

/// `/proc/<pid>/cmdline` with NULs as spaces ("" if the process is gone).
/// nginx rewrites its argv, so this reads e.g. `nginx: worker process`.
fn cmdline(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// State letter and parent pid from `/proc/<pid>/stat`.
fn stat(pid: u64) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Live children of `parent` with their command lines.
fn children(parent: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if let Some((state, ppid)) = stat(pid) {
            if ppid == parent && state != 'Z' {
                out.push((pid, cmdline(pid)));
            }
        }
    }
    out.sort();
    out
}

/// Pids of `nginx`'s worker processes.
fn workers(nginx: &Nginx) -> Vec<u64> {
    children(nginx.pid() as u64)
        .into_iter()
        .filter(|(_, c)| c.contains("worker process"))
        .map(|(p, _)| p)
        .collect()
}

/// Parsed sample log lines.
fn samples(nginx: &Nginx, rel: &str) -> Vec<Value> {
    nginx
        .lines(rel)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad sample line {l:?}: {e}")))
        .collect()
}

fn time_ms(v: &Value) -> u64 {
    v["time_ms"].as_u64().expect("time_ms")
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Error log lines that must never appear.
fn bad_log_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("[alert]")
                || l.contains("[emerg]")
                || l.contains("[crit]")
                || l.contains("signal 11")
                || l.contains("exited on signal")
                || l.contains("panicked")
        })
        .collect()
}

/// A reload that keeps the zone (same agents, upstreams and peers) but
/// shortens `interval=` from 1 h to 1 s: the next decision, due in an hour
/// under the old interval, comes within the new one.
#[test]
fn shorter_interval_after_reload_is_honoured_at_once() {
    let b = backends(3, 8, 1.0);
    let conf = |interval: &str| {
        full_config(
            &one_upstream(
                &b,
                &format!("deep_sched interval={interval} log=logs/samples.jsonl;"),
            ),
            2,
        )
    };
    let nginx = Nginx::start(&conf("1h"));
    let s = spread(&nginx, 30);
    assert_eq!(s.values().sum::<usize>(), 30);
    assert!(!s.keys().any(|k| k.starts_with("status:")), "{s:?}");

    let st = nginx.status();
    let a = &st["agents"][0];
    assert_eq!(a["intervalMsec"], 3_600_000, "{st}");
    // (`decisions` counts the zone's initial publication of the configured
    // weights too, so it is not 0 here; the last decision's time and pid
    // are.)
    assert_eq!(
        a["lastDecisionMsec"], 0,
        "no decision within the first hour: {st}"
    );
    assert_eq!(a["lastDecisionPid"], 0, "no decision, no pid: {st}");
    let decisions_before = a["decisions"].as_u64().unwrap();
    let requests_before: u64 = a["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requestCounter"].as_u64().unwrap())
        .sum();
    assert!(requests_before >= 30, "{st}");
    let before = nginx.lines("logs/samples.jsonl").len();
    assert_eq!(before, 0, "no decision logged under interval=1h");

    let reloaded = Instant::now();
    let reloaded_wall = wall_ms();
    nginx.reload_with(&conf("1s"));
    let load = Load::start(nginx.port, 2, &[READ]);

    // The new configuration is in force...
    let st = wait_for(Duration::from_secs(5), || {
        let st = nginx.status();
        (st["agents"][0]["intervalMsec"] == 1000).then_some(st)
    })
    .unwrap_or_else(|| panic!("intervalMsec 1000 after reload:\n{}", nginx.error_log()));
    // ...on the same zone: the counters were kept.
    let kept: u64 = st["agents"][0]["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requestCounter"].as_u64().unwrap())
        .sum();
    assert!(
        kept >= requests_before,
        "the zone was reused, counters kept: {kept} < {requests_before} ({st})"
    );

    // Three decisions within 5 s of the reload (without the cap: none for
    // an hour).
    let got = wait_for(
        Duration::from_secs(5).saturating_sub(reloaded.elapsed()),
        || {
            let n = nginx.lines("logs/samples.jsonl").len();
            (n >= before + 3).then_some(n)
        },
    );
    let elapsed = reloaded.elapsed();
    let (sent, failed) = load.stop();
    let lines = samples(&nginx, "logs/samples.jsonl");
    assert!(
        got.is_some(),
        "only {} decisions logged {elapsed:?} after reloading to interval=1s \
         (the next decision stayed an hour away?)\nstatus: {}\nerror log:\n{}",
        lines.len() - before,
        nginx.status(),
        nginx.error_log()
    );
    eprintln!(
        "{} decisions {elapsed:?} after the reload; {sent} requests sent",
        lines.len() - before
    );
    assert_eq!(failed, 0, "failed requests across the reload");
    // The first one came about one new interval after the reload.
    let first = time_ms(&lines[before]);
    assert!(
        first >= reloaded_wall && first <= reloaded_wall + 2500,
        "first decision {} ms after the reload",
        first as i64 - reloaded_wall as i64
    );
    for w in lines[before..].windows(2) {
        let gap = time_ms(&w[1]) as i64 - time_ms(&w[0]) as i64;
        assert!(gap >= 800, "decisions {gap} ms apart with interval=1s");
    }

    // The status names a worker of this nginx as the decider.
    let st = nginx.status();
    let a = &st["agents"][0];
    assert!(
        a["decisions"].as_u64().unwrap() >= decisions_before + 3,
        "decisions counted on the kept zone: {st}"
    );
    let pid = a["lastDecisionPid"].as_u64().unwrap();
    assert!(pid > 0, "lastDecisionPid after decisions: {st}");
    assert!(
        cmdline(pid).contains("worker process")
            && stat(pid).is_some_and(|(_, pp)| pp == nginx.pid() as u64),
        "lastDecisionPid {pid} is not a worker of {}: {:?}",
        nginx.pid(),
        cmdline(pid)
    );
    let bad = bad_log_lines(&nginx.error_log()).join("\n");
    assert!(bad.is_empty(), "error log:\n{bad}");
}

/// With a `proxy_cache_path`, the cache manager and cache loader run the
/// module's `init_process` too; they must not decide: one decision per
/// interval, always made by a worker.
#[test]
fn only_workers_decide_with_cache_helpers_running() {
    let b = backends(3, 8, 1.0);
    let http = format!(
        "    proxy_cache_path {{prefix}}/cache levels=1:2 keys_zone=c:1m;\n{}",
        one_upstream(&b, "deep_sched interval=300ms log=logs/samples.jsonl;")
    );
    let nginx = Nginx::start(&full_config(&http, 2));
    let started = Instant::now();
    let load = Load::start(nginx.port, 4, &[READ]);

    // Not vacuous: the helpers exist and are this master's children.
    let kids = wait_for(Duration::from_secs(3), || {
        let k = children(nginx.pid() as u64);
        let n_workers = k
            .iter()
            .filter(|(_, c)| c.contains("worker process"))
            .count();
        let manager = k.iter().any(|(_, c)| c.contains("cache manager"));
        (n_workers == 2 && manager).then_some(k)
    })
    .unwrap_or_else(|| {
        panic!(
            "2 workers and a cache manager under master {}: {:?}",
            nginx.pid(),
            children(nginx.pid() as u64)
        )
    });
    eprintln!("children of the master: {kids:?}");
    let helpers: Vec<u64> = kids
        .iter()
        .filter(|(_, c)| c.contains("cache manager") || c.contains("cache loader"))
        .map(|(p, _)| *p)
        .collect();
    let worker_pids: BTreeSet<u64> = kids
        .iter()
        .filter(|(_, c)| c.contains("worker process"))
        .map(|(p, _)| *p)
        .collect();

    // Poll the decider several times per interval for ~3 s.
    let mut seen = BTreeSet::new();
    let mut polls = 0;
    while started.elapsed() < Duration::from_millis(3200) {
        let st = nginx.status();
        let pid = st["agents"][0]["lastDecisionPid"].as_u64().unwrap();
        polls += 1;
        if pid != 0 {
            assert!(
                !helpers.contains(&pid),
                "decision made by a cache helper {pid} ({:?})",
                cmdline(pid)
            );
            let cmd = cmdline(pid);
            assert!(
                worker_pids.contains(&pid) && cmd.contains("worker process"),
                "lastDecisionPid {pid} is not one of the workers {worker_pids:?}: {cmd:?}"
            );
            seen.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    let (sent, failed) = load.stop();
    assert_eq!(failed, 0);
    assert!(sent > 50, "traffic flowed: {sent}");
    assert!(!seen.is_empty(), "no decision seen in {polls} polls");

    // The helpers are still there (nothing crashed them).
    for h in &helpers {
        let c = cmdline(*h);
        assert!(c.contains("cache"), "helper {h} gone: {c:?}");
    }

    let lines = samples(&nginx, "logs/samples.jsonl");
    let times: Vec<u64> = lines.iter().map(time_ms).collect();
    let expect = elapsed.as_millis() as usize / 300;
    eprintln!(
        "{} decisions in {elapsed:?} (about {expect} expected), by {seen:?}, {polls} polls",
        times.len()
    );
    assert!(
        times.len() + 3 >= expect && times.len() <= expect + 1,
        "about {expect} decisions in {elapsed:?}, got {}: {times:?}",
        times.len()
    );
    for w in times.windows(2) {
        let gap = w[1] as i64 - w[0] as i64;
        assert!(
            gap >= 200,
            "two decisions {gap} ms apart with interval=300ms: {times:?}"
        );
    }
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one decision per sequence number: {seqs:?}"
    );
    let bad = bad_log_lines(&nginx.error_log()).join("\n");
    assert!(bad.is_empty(), "error log:\n{bad}");
}

/// A client on one persistent HTTP/1.1 connection. In single-process mode
/// (`master_process off`) nginx never runs `init_process` for the cycle a
/// reload makes, so that cycle has no connections and every connection
/// accepted after the reload is closed ("worker_connections are not
/// enough", stock nginx 1.28, with or without this module): only
/// connections opened before the reload are served, by the old cycle.
struct KeepAlive {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(port: u16) -> std::io::Result<KeepAlive> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    fn fill(&mut self) -> std::io::Result<()> {
        use std::io::Read;
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(l);
            }
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// `GET path` on the connection: status and body.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::Write;
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        let status_line = self.line()?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v == "close",
                _ => {}
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let size =
                    usize::from_str_radix(self.line()?.split(';').next().unwrap().trim(), 16)
                        .unwrap_or(0);
                if size == 0 {
                    // Trailers end with an empty line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                body.extend(self.take(size)?);
                self.take(2)?;
            }
            body
        } else {
            self.take(length.unwrap_or(0))?
        };
        if close {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("nginx closed the connection after {status}"),
            ));
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `concurrency` clients, each on its own persistent connection, cycling
/// through `paths`, then, once [`KeepAliveLoad::switch`]ed, through
/// `later`, until stopped. A client stops at its first failure (counted):
/// no new connection could be served after a single-process reload anyway.
struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    switched: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl KeepAliveLoad {
    fn start(port: u16, concurrency: usize, paths: &[&str], later: &[&str]) -> KeepAliveLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let switched = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let later: Vec<String> = later.iter().map(|p| p.to_string()).collect();
        let mut conns: Vec<KeepAlive> = (0..concurrency)
            .map(|_| KeepAlive::connect(port).expect("connect to nginx"))
            .collect();
        let threads = conns
            .drain(..)
            .enumerate()
            .map(|(c, mut conn)| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let switched = switched.clone();
                let (paths, later) = (paths.clone(), later.clone());
                std::thread::spawn(move || {
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let list = if switched.load(Ordering::Relaxed) {
                            &later
                        } else {
                            &paths
                        };
                        let path = &list[i % list.len()];
                        i += 1;
                        let r = conn.get(path);
                        sent.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok((200, _)) => {}
                            Ok((status, body)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("client {c}: {path}: {status} {body}");
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                eprintln!("client {c}: {path}: {e}");
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        KeepAliveLoad {
            stop,
            switched,
            sent,
            failed,
            threads,
        }
    }

    /// From the next request on, the clients use the `later` paths (the
    /// requests in flight complete as they are).
    fn switch(&self) {
        self.switched.store(true, Ordering::Relaxed);
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.counts()
    }
}

impl Drop for KeepAliveLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Panics, with what is known, if nginx's process is gone (a crashed
/// single process is a zombie of the test until the harness reaps it).
fn assert_alive(nginx: &Nginx, when: &str) {
    let pid = nginx.pid() as u64;
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rfind(')').map(|i| &s[i + 1..]).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("?");
    if state == "Z" || state == "X" || state == "?" {
        // The last field of /proc/PID/stat is the wait status.
        let code: i64 = fields.last().and_then(|c| c.parse().ok()).unwrap_or(-1);
        let how = if code >= 0 && code & 0x7f != 0 {
            format!("killed by signal {}", code & 0x7f)
        } else {
            format!("exited with status {}", (code >> 8) & 0xff)
        };
        panic!(
            "nginx {pid} is gone {when}: {how} (state {state})\nerror log:\n{}",
            nginx.error_log()
        );
    }
}

/// `http { }` body for the single-process tests: `backend` (the peers
/// `backend_peers`) with a sample log, and, when `second_peers` is given,
/// an upstream `second` with an agent of its own serving `/second/`
/// (otherwise `/second/` goes to `backend` too).
fn single_http(
    backend_peers: &[BackendHandle],
    second_peers: Option<&[BackendHandle]>,
    interval: &str,
) -> String {
    let second = match second_peers {
        Some(p) => format!(
            "    upstream second {{\n{}        deep_sched interval={interval} log=logs/second.jsonl;\n    }}\n",
            server_lines(p, &[])
        ),
        None => String::new(),
    };
    let second_target = if second_peers.is_some() {
        "second"
    } else {
        "backend"
    };
    format!(
        "    keepalive_requests 1000000;\n\
             keepalive_timeout 60s;\n\
             upstream backend {{\n{}        deep_sched interval={interval} log=logs/samples.jsonl;\n    }}\n{second}{}",
        server_lines(backend_peers, &[]),
        proxy_server(&format!(
            "        location /second/ {{ proxy_pass http://{second_target}/; }}\n\
                     location / {{ proxy_pass http://backend; }}"
        ))
    )
}

fn single(http: &str) -> String {
    let c = full_config(http, 1).replace("master_process on;", "master_process off;");
    assert!(c.contains("master_process off;"));
    c
}

const SECOND_READ: &str = "/second/wrk2-api/home-timeline/read";

/// Sample lines of `rel` whose first upstream has `peers` peers.
fn layout_lines(nginx: &Nginx, rel: &str, peers: usize) -> Vec<Value> {
    samples(nginx, rel)
        .into_iter()
        .filter(|l| l["upstreams"][0]["peers"].as_array().map(Vec::len) == Some(peers))
        .collect()
}

/// How long after `reloaded` the first decision over `peers` peers was
/// logged (`logs/samples.jsonl`), waiting at most `within`; panics with
/// the error log if none came, or if nginx died meanwhile.
fn first_decision_with(
    nginx: &Nginx,
    peers: usize,
    reloaded: Instant,
    within: Duration,
) -> Duration {
    wait_for(within, || {
        assert_alive(nginx, "after the reload");
        (!layout_lines(nginx, "logs/samples.jsonl", peers).is_empty()).then(|| reloaded.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "no decision for the new layout within {within:?} of the reload\nerror log:\n{}",
            nginx.error_log()
        )
    })
}

/// Stops `load` and checks the single process survived, no request on a
/// connection opened before the reload failed, and more than 50 were
/// answered after it.
fn stop_and_check_after_reload(nginx: &Nginx, load: KeepAliveLoad, sent_before: u64) {
    let (sent, failed) = load.stop();
    assert_alive(nginx, "after the run");
    eprintln!(
        "{} requests after the reload, {failed} failed",
        sent - sent_before
    );
    assert_eq!(
        failed, 0,
        "failed requests on connections opened before the reload"
    );
    assert!(
        sent - sent_before > 50,
        "requests answered after the reload: {}",
        sent - sent_before
    );
}

fn assert_one_per_interval(lines: &[Value], min_gap_ms: i64, what: &str) {
    for w in lines.windows(2) {
        let gap = time_ms(&w[1]) as i64 - time_ms(&w[0]) as i64;
        assert!(gap >= min_gap_ms, "{what}: decisions {gap} ms apart");
        let (a, b) = (w[0]["seq"].as_u64().unwrap(), w[1]["seq"].as_u64().unwrap());
        assert_eq!(b, a + 1, "{what}: sequence numbers {a} then {b}");
    }
}

/// `master_process off`: a reload to another layout (a 4th peer, a second
/// upstream with an agent of its own) under traffic keeps the single
/// process alive, answers every request, and the new cycle's agents decide,
/// once per interval, from about one old interval after the reload.
///
/// What can be asked of nginx after a single-process reload: stock nginx
/// never runs `init_process` for the new cycle, so that cycle has no
/// connections: it accepts none (every new connection is closed,
/// "worker_connections are not enough") and opens none to an upstream (a
/// proxied request gets a 500), with or without this module. So the
/// traffic runs on persistent connections opened before the reload: the
/// proxied requests in flight at the reload (slow backends) complete, and
/// from then on the clients ask the status page, served by the old cycle.
/// The new layout is seen in the sample logs, written by the new cycle's
/// timers.
#[test]
fn single_process_reload_to_a_new_layout_keeps_deciding() {
    let b = backends(4, 16, 150.0);
    let nginx = Nginx::start(&single(&single_http(&b[..3], None, "300ms")));
    let pid = nginx.pid() as u64;
    assert!(
        children(pid).is_empty(),
        "single-process mode has no children: {:?}",
        children(pid)
    );
    let load = KeepAliveLoad::start(nginx.port, 6, &[READ, SECOND_READ], &["/deep_sched"]);
    wait_for(Duration::from_secs(3), || {
        (nginx.lines("logs/samples.jsonl").len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("decisions before the reload:\n{}", nginx.error_log()));
    let st = nginx.status();
    assert_eq!(st["agents"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(
        st["agents"][0]["lastDecisionPid"].as_u64().unwrap(),
        pid,
        "the single process decides: {st}"
    );
    let before = samples(&nginx, "logs/samples.jsonl");
    assert!(before
        .iter()
        .all(|l| l["upstreams"][0]["peers"].as_array().unwrap().len() == 3));
    assert_one_per_interval(&before, 200, "before the reload");

    let (sent_before, failed_before) = load.counts();
    assert_eq!(failed_before, 0, "failed requests before the reload");
    assert!(sent_before > 0);
    // The 6 proxied requests in flight (150 ms each) finish after the
    // reload, on the old cycle's configuration.
    load.switch();
    let reloaded = Instant::now();
    nginx.reload_with(&single(&single_http(&b, Some(&b[..2]), "300ms")));

    // The new cycle's agents decide: the 4-peer layout appears in the log.
    let resumed = first_decision_with(&nginx, 4, reloaded, Duration::from_secs(3));
    eprintln!("first decision for the new layout {resumed:?} after the reload");
    while reloaded.elapsed() < Duration::from_millis(3200) {
        assert_alive(&nginx, "under traffic after the reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_and_check_after_reload(&nginx, load, sent_before);
    assert!(
        resumed <= Duration::from_millis(1500),
        "decisions resumed {resumed:?} after the reload (about 600 ms expected)"
    );

    let main_new = layout_lines(&nginx, "logs/samples.jsonl", 4);
    let second_new = layout_lines(&nginx, "logs/second.jsonl", 2);
    eprintln!(
        "new layout: {} decisions of backend, {} of second",
        main_new.len(),
        second_new.len()
    );
    // ~3.2 s after the reload, less about one old interval: ~9 each.
    for (lines, what) in [(&main_new, "backend (4 peers)"), (&second_new, "second")] {
        assert!(
            lines.len() >= 5,
            "{what}: {} decisions after the reload",
            lines.len()
        );
        assert!(
            lines.len() <= 12,
            "{what}: {} decisions in 3.2 s",
            lines.len()
        );
        assert_one_per_interval(lines, 200, what);
        assert_eq!(
            lines[0]["upstreams"].as_array().unwrap().len(),
            1,
            "{what}: one upstream per agent"
        );
    }
    // The old cycle stopped deciding once the new one took over.
    let old_after = samples(&nginx, "logs/samples.jsonl")
        .iter()
        .filter(|l| {
            l["upstreams"][0]["peers"].as_array().unwrap().len() == 3
                && time_ms(l) > time_ms(&main_new[0])
        })
        .count();
    assert_eq!(
        old_after, 0,
        "the old cycle kept deciding after the new one started"
    );
    let bad = bad_log_lines(&nginx.error_log()).join("\n");
    assert!(bad.is_empty(), "error log:\n{bad}");
}

/// `master_process off`, same layout (the zone is kept), shorter interval:
/// the process survives a reload under traffic (as above) and decides at
/// the new interval for the new cycle.
#[test]
fn single_process_reload_keeping_the_zone_keeps_deciding() {
    let b = backends(3, 16, 150.0);
    let nginx = Nginx::start(&single(&single_http(&b, None, "400ms")));
    let load = KeepAliveLoad::start(nginx.port, 6, &[READ], &["/deep_sched"]);
    wait_for(Duration::from_secs(3), || {
        (nginx.lines("logs/samples.jsonl").len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("decisions before the reload:\n{}", nginx.error_log()));
    let (sent_before, _) = load.counts();
    let before = nginx.lines("logs/samples.jsonl").len();
    let reloaded_wall = wall_ms();
    let reloaded = Instant::now();
    load.switch();
    nginx.reload_with(&single(&single_http(&b, None, "200ms")));
    while reloaded.elapsed() < Duration::from_millis(3000) {
        assert_alive(&nginx, "after the reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_and_check_after_reload(&nginx, load, sent_before);
    let lines = samples(&nginx, "logs/samples.jsonl");
    // The same zone: the sequence goes on across the reload.
    assert_one_per_interval(&lines, 150, "across the reload");
    let after: Vec<&Value> = lines[before..]
        .iter()
        .filter(|l| time_ms(l) >= reloaded_wall + 1000)
        .collect();
    // The last 2 s at 200 ms: about 10 (5 at the old interval).
    assert!(
        after.len() >= 7,
        "{} decisions in the last 2 s: the new interval (200ms) is not in force",
        after.len()
    );
    let bad = bad_log_lines(&nginx.error_log()).join("\n");
    assert!(bad.is_empty(), "error log:\n{bad}");
}

/// `lastDecisionPid` is 0 before the first decision and the deciding
/// worker's pid after it.
#[test]
fn status_names_the_deciding_process() {
    let b = backends(3, 8, 1.0);
    let nginx = Nginx::start(&full_config(
        &one_upstream(&b, "deep_sched interval=1s log=logs/samples.jsonl;"),
        2,
    ));
    let st = nginx.status();
    let a = &st["agents"][0];
    if nginx.lines("logs/samples.jsonl").is_empty() && a["lastDecisionMsec"] == 0 {
        assert_eq!(a["lastDecisionPid"], 0, "no decision yet: {st}");
    }
    let _ = spread(&nginx, 10);
    // A decision is published before its sample line is written.
    wait_for(Duration::from_secs(4), || {
        (!nginx.lines("logs/samples.jsonl").is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("a decision within 4 s:\n{}", nginx.error_log()));
    let st = nginx.status();
    let a = &st["agents"][0];
    let pid = a["lastDecisionPid"]
        .as_u64()
        .expect("lastDecisionPid is a number");
    assert!(pid > 0, "lastDecisionPid after the first decision: {st}");
    assert!(a["lastDecisionMsec"].as_u64().unwrap() > 0, "{st}");
    let w = workers(&nginx);
    assert!(
        w.contains(&pid),
        "lastDecisionPid {pid} is one of the workers {w:?}: {:?}",
        cmdline(pid)
    );
}

/// `master_process off`, a reload from `interval=1h` to `300ms` with a new
/// layout: the old cycle's timer, due in an hour, is fired at once so the
/// new cycle's agents start deciding within about one new interval (they
/// waited for the old hour before).
#[test]
fn single_process_reload_from_a_long_interval_resumes_at_once() {
    let b = backends(4, 8, 1.0);
    let nginx = Nginx::start(&single(&single_http(&b[..3], None, "1h")));
    // Let the process settle, then reload to the new layout and interval.
    std::thread::sleep(Duration::from_millis(300));
    let reloaded = Instant::now();
    nginx.reload_with(&single(&single_http(&b, None, "300ms")));
    let resumed = first_decision_with(&nginx, 4, reloaded, Duration::from_secs(5));
    eprintln!("first decision of the new cycle {resumed:?} after the reload");
    assert!(
        resumed <= Duration::from_millis(1500),
        "decisions resumed {resumed:?} after the reload (about 300 ms expected)"
    );
    let bad = bad_log_lines(&nginx.error_log()).join("\n");
    assert!(bad.is_empty(), "error log:\n{bad}");
}
