//! A tiny harness for end-to-end tests: one call starts nginx (from
//! `build/`, made by `scripts/build.sh`) with a generated configuration in a
//! private prefix on 127.0.0.1, and dropping it stops nginx by PID and
//! removes the prefix. Backends come from the lab's emulator, in process.
#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use deep_sched_lab::backend::{
    self, BackendConfig, BackendHandle, HealthMode, Mode, ServiceTimes,
};
pub use deep_sched_lab::dist::Delay;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `build/sbin/nginx`, or a panic telling how to make it.
pub fn nginx_bin() -> PathBuf {
    let p = root().join("build/sbin/nginx");
    assert!(
        p.exists(),
        "{} is missing: run scripts/build.sh first",
        p.display()
    );
    p
}

/// `build/modules/ngx_http_deep_sched_module.so`, or the module named by
/// `DEEP_SCHED_MODULE_SO` (to run the same tests against another build,
/// e.g. an older release for before/after numbers).
pub fn module_so() -> PathBuf {
    let p = std::env::var_os("DEEP_SCHED_MODULE_SO")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("build/modules/ngx_http_deep_sched_module.so"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build.sh first",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests
/// that start their server right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A private directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("deep-sched-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).expect("create temp prefix");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("DEEP_SCHED_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Wraps an `http { ... }` body into a whole configuration loading the
/// module from `build/modules/`.
pub fn full_config(http_body: &str, workers: u32) -> String {
    config_for(&module_so(), http_body, workers)
}

/// Wraps an `http { ... }` body into a whole configuration loading the
/// module `so`.
pub fn config_for(so: &Path, http_body: &str, workers: u32) -> String {
    format!(
        "load_module {so};\n\
         worker_processes {workers};\n\
         daemon off;\n\
         master_process on;\n\
         error_log logs/error.log info;\n\
         pid logs/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
             access_log off;\n\
             client_body_temp_path logs/tmp_body;\n\
             proxy_temp_path logs/tmp_proxy;\n\
             fastcgi_temp_path logs/tmp_fcgi;\n\
             uwsgi_temp_path logs/tmp_uwsgi;\n\
             scgi_temp_path logs/tmp_scgi;\n\
         {http_body}\n\
         }}\n",
        so = so.display()
    )
}

/// Runs `nginx -t` on a configuration (nothing is started).
pub fn nginx_t(conf: &str) -> Output {
    let dir = TempDir::new("t");
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("logs/error.log"))
        .output()
        .expect("run nginx -t")
}

/// A running nginx.
pub struct Nginx {
    pub dir: TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx with `conf` (a whole configuration; `{port}` in it is
    /// replaced by the listening port) and waits until it accepts.
    pub fn start(conf_template: &str) -> Nginx {
        Nginx::start_binary(&nginx_bin(), conf_template)
    }

    /// As [`Nginx::start`], with another nginx binary (e.g. the
    /// distribution's `/usr/sbin/nginx`).
    pub fn start_binary(bin: &Path, conf_template: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let conf = conf_template
            .replace("{port}", &port.to_string())
            .replace("{prefix}", &dir.path().display().to_string());
        std::fs::write(dir.path().join("nginx.conf"), &conf).expect("write nginx.conf");
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("logs/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "nginx exited with {status} before listening:\n{}",
                    n.error_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port} within 10 s:\n{}",
                n.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Rewrites the configuration (same port) and sends SIGHUP.
    pub fn reload_with(&self, conf_template: &str) {
        let conf = conf_template.replace("{port}", &self.port.to_string());
        std::fs::write(self.dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
        self.signal("HUP");
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// `GET path` through nginx.
    pub fn get(&self, path: &str) -> Response {
        http_get(SocketAddr::from(([127, 0, 0, 1], self.port)), path)
    }

    /// The status page as JSON (needs a `location = /deep_sched { deep_sched_status; }`).
    pub fn status(&self) -> serde_json::Value {
        let r = self.get("/deep_sched");
        assert_eq!(r.status, 200, "status page: {}", r.body);
        serde_json::from_str(&r.body).expect("status JSON")
    }

    /// Lines of a file under the prefix.
    pub fn lines(&self, rel: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(rel))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fast shutdown (TERM), then KILL if it lingers.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A response from [`http_get`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.0 GET (status 0 when the connection failed): the tests
/// need nothing more, and keeping it here avoids a client dependency whose
/// pooling would hide connection-level behaviour under test.
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    http_request(addr, "GET", path, "")
}

/// A minimal HTTP/1.0 request with a body (sent with Content-Length when
/// not empty), as [`http_get`].
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    let fail = |why: String| Response {
        status: 0,
        headers: vec![],
        body: why,
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return fail("connect failed".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{length}\r\n{body}");
    if s.write_all(request.as_bytes()).is_err() {
        return fail("write failed".into());
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        return fail(format!("read failed: {e}"));
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return fail(format!("no header end in {text:?}"));
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Starts `n` emulated backends with `workers` each and a fixed service time.
pub fn backends(n: usize, workers: usize, service_ms: f64) -> Vec<BackendHandle> {
    (0..n)
        .map(|i| {
            backend::spawn(BackendConfig {
                name: format!("b{}", i + 1),
                workers,
                service: ServiceTimes::uniform(Delay::Fixed { ms: service_ms }),
                seed: i as u64 + 1,
                ..BackendConfig::default()
            })
            .expect("start backend")
        })
        .collect()
}

/// `server` lines for the backends, with optional per-server parameters.
pub fn server_lines(backends: &[BackendHandle], params: &[&str]) -> String {
    backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "        server {}{}{};\n",
                b.addr(),
                if params.get(i).is_some_and(|p| !p.is_empty()) {
                    " "
                } else {
                    ""
                },
                params.get(i).copied().unwrap_or("")
            )
        })
        .collect()
}

/// A `server` block on `{port}` proxying `locations`, with retries on
/// errors and the status page at `/deep_sched`.
pub fn proxy_server(locations: &str) -> String {
    format!(
        "    server {{\n\
                 listen 127.0.0.1:{{port}};\n\
                 proxy_next_upstream error timeout http_502;\n\
                 proxy_connect_timeout 2s;\n\
                 proxy_read_timeout 10s;\n\
         {locations}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n"
    )
}

/// The path every test request uses (a read endpoint of the emulator).
pub const READ: &str = "/wrk2-api/home-timeline/read";

/// Sends `n` sequential GETs and counts responses per `X-Backend` name
/// (key `"status:<code>"` for responses without one).
pub fn spread(nginx: &Nginx, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = nginx.get(READ);
        let key = match r.header("X-Backend") {
            Some(b) if r.status == 200 => b.to_owned(),
            _ => format!("status:{}", r.status),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps `concurrency` clients sending GETs (one connection each) until
/// stopped or dropped; counts what was sent and what failed.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Clients cycle through `paths`.
    pub fn start(port: u16, concurrency: usize, paths: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let threads = (0..concurrency)
            .map(|c| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let paths = paths.clone();
                std::thread::spawn(move || {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let path = &paths[i % paths.len()];
                        i += 1;
                        let r = http_get(addr, path);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.status != 200 {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed request {path}: {} {}", r.status, r.body);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            threads,
        }
    }

    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A per-peer policy (format version 2) in the shape `deep-sched learn
/// --kind per-peer` writes, with two states: a peer near the pool's median
/// latency and load keeps its baseline weight, a peer ten times slower than
/// the median (and busier) gets a tenth of it. Peers are not named: it
/// serves any upstream "backend".
pub fn per_peer_policy() -> serde_json::Value {
    serde_json::json!({
        "format": "deep_sched.policy",
        "version": 2,
        "kind": "per_peer",
        "interval_ms": 500,
        "agent": { "upstreams": [ { "name": "backend", "peers": [] } ] },
        "peer_features": ["latency_ratio", "load_ratio", "error_rate"],
        "standardization": { "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0] },
        "gmm": {
            "covariance": "diag",
            "weights": [0.8, 0.2],
            "means": [[0.0, 0.0, 0.0], [2.5, 1.5, 0.0]],
            "covariances": [[0.4, 1.0, 0.01], [1.0, 2.0, 0.01]]
        },
        "multipliers": [1.0, 0.1],
        "default_multiplier": 1.0,
        "ood_log_likelihood": null,
        "baseline": { "source": "configured" },
        "provenance": { "learner": "hand-written test policy (per-peer)" }
    })
}
