//! A small Docker helper for the container tests: the `docker` CLI through
//! `std::process::Command` (bounded in time), a [`Lab`] that owns one
//! network and its containers and removes them on drop, and a [`Load`] of
//! client threads on the host that counts every failed request.
//!
//! Everything a test creates carries the label `deep-sched.test` (value: the
//! run id), so `scripts/container-clean.sh` finds leftovers of a run that was
//! killed before its guards ran. Nothing is pulled: the image is built from
//! `build/` on the local base image by `scripts/container-build.sh`.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::{http_get, root, Response, TempDir};

/// The prefix of the Compose projects (and their image tags) of these tests;
/// `scripts/container-clean.sh` removes leftovers by it.
pub const COMPOSE_PREFIX: &str = "dst-compose-";

/// The label every container and network of these tests carries.
pub const LABEL: &str = "deep-sched.test";
/// The image the tests run (built from `build/`, never pulled).
pub const IMAGE: &str = "deep-sched/nginx:test";

/// The output of a finished `docker` command.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args`, killing it after `timeout`; stdout and stderr are
/// drained by threads so that a chatty command cannot block on a full pipe.
pub fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Result<Out, String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command_bounded(cmd, timeout)
}

/// [`run_bounded`] for a prepared `Command` (working directory, environment).
pub fn run_command_bounded(mut cmd: Command, timeout: Duration) -> Result<Out, String> {
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no answer within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Out {
        ok: status.success(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// `docker args` within 60 s; `Err` (with its stderr) unless it succeeded.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = run_bounded("docker", args, Duration::from_secs(60))?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(format!(
            "docker {} failed: {}",
            args.join(" "),
            out.stderr.trim()
        ))
    }
}

/// `docker args`, panicking with the command and its error when it fails.
pub fn must(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Why the container tests cannot run here, if they cannot: no Docker
/// engine, or no host-built outputs to put in the image.
pub fn skip_reason() -> Option<String> {
    match run_bounded(
        "docker",
        &["version", "--format", "{{.Server.Version}}"],
        Duration::from_secs(20),
    ) {
        Err(e) => return Some(format!("no docker CLI or engine: {e}")),
        Ok(o) if !o.ok => return Some(format!("Docker engine not reachable: {}", o.stderr.trim())),
        Ok(_) => {}
    }
    let missing: Vec<&str> = [
        "build/sbin/nginx",
        "build/modules/ngx_http_deep_sched_module.so",
        "build/bin/deep-sched-backend",
    ]
    .into_iter()
    .filter(|p| !root().join(p).exists())
    .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} missing: run scripts/build.sh first",
            missing.join(", ")
        ));
    }
    None
}

/// Builds [`IMAGE`] once per test binary (the base image only when absent).
pub fn image() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = root().join("scripts/container-build.sh");
        let out = run_bounded(
            script.to_str().expect("UTF-8 path"),
            &[IMAGE],
            Duration::from_secs(600),
        )?;
        if out.ok {
            Ok(())
        } else {
            Err(format!(
                "scripts/container-build.sh {IMAGE} failed:\n{}{}",
                out.stdout, out.stderr
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    IMAGE
}

/// One test's network and containers, removed on drop (even when the test
/// panics). Names are `dst-<run>-<name>`, unique per test and process.
pub struct Lab {
    pub id: String,
    pub network: String,
    containers: Mutex<Vec<String>>,
}

impl Lab {
    pub fn new(test: &str) -> Lab {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!(
            "{}-{}-{:x}{}",
            test,
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let network = format!("dst-{id}");
        let label = format!("{LABEL}={id}");
        must(&["network", "create", "--label", &label, &network]);
        Lab {
            id,
            network,
            containers: Mutex::new(Vec::new()),
        }
    }

    fn label(&self) -> String {
        format!("{LABEL}={}", self.id)
    }

    fn remember(&self, name: &str) {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_owned());
    }

    /// Starts an emulated backend `name` (its `X-Backend` header) with
    /// `extra` flags; returns its container name and its address.
    pub fn backend(&self, name: &str, extra: &[&str]) -> Backend {
        let container = format!("dst-{}-{name}", self.id);
        self.remember(&container);
        let label = self.label();
        let mut args = vec![
            "run",
            "-d",
            "--init",
            "--name",
            &container,
            "--label",
            &label,
            "--network",
            &self.network,
            image(),
            "deep-sched-backend",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            name,
            "--workers",
            "16",
            "--service",
            "fixed:2",
        ];
        args.extend_from_slice(extra);
        must(&args);
        let ip = must(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container,
        ])
        .trim()
        .to_owned();
        assert!(!ip.is_empty(), "{container} has no address");
        Backend {
            container,
            addr: format!("{ip}:8080"),
        }
    }

    /// Creates nginx from the image with `files` (container path, content)
    /// copied in before it starts, publishes its port 8080 on 127.0.0.1 only,
    /// and waits until `/deep_sched` answers.
    pub fn nginx(&self, files: &[(&str, String)]) -> NginxContainer {
        let container = format!("dst-{}-nginx", self.id);
        self.remember(&container);
        let label = self.label();
        must(&[
            "create",
            "--init",
            "--name",
            &container,
            "--label",
            &label,
            "--network",
            &self.network,
            "-p",
            "127.0.0.1::8080",
            image(),
        ]);
        let n = NginxContainer {
            container,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        for (path, content) in files {
            n.put(path, content);
        }
        must(&["start", &n.container]);
        let port = must(&["port", &n.container, "8080/tcp"]);
        let addr: SocketAddr = port
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no 127.0.0.1 port for {}: {port:?}", n.container));
        let n = NginxContainer {
            container: n.container,
            addr,
        };
        let ready = crate::harness::wait_for(Duration::from_secs(20), || {
            (n.get("/deep_sched").status == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "nginx did not answer in 20 s:\n{}",
            n.logs()
        );
        n
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.containers.lock().unwrap_or_else(|e| e.into_inner()));
        if !names.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(names.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// A backend container.
pub struct Backend {
    pub container: String,
    /// `ip:8080` on the lab's network: the peer name nginx reports.
    pub addr: String,
}

/// The nginx container.
pub struct NginxContainer {
    pub container: String,
    /// Its published port on the host.
    pub addr: SocketAddr,
}

impl NginxContainer {
    pub fn get(&self, path: &str) -> Response {
        http_get(self.addr, path)
    }

    /// The status document.
    pub fn status(&self) -> serde_json::Value {
        let r = self.get("/deep_sched");
        assert_eq!(r.status, 200, "status: {r:?}");
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", r.body))
    }

    /// Writes `content` to `path` inside the container (`docker cp`).
    pub fn put(&self, path: &str, content: &str) {
        let dir = TempDir::new("docker-cp");
        let file = dir
            .path()
            .join(Path::new(path).file_name().expect("a file path"));
        std::fs::write(&file, content).expect("write temp file");
        must(&[
            "cp",
            file.to_str().expect("UTF-8 path"),
            &format!("{}:{path}", self.container),
        ]);
    }

    /// `docker exec CONTAINER args` (bounded), success or not.
    pub fn exec(&self, args: &[&str]) -> Out {
        let mut all = vec!["exec", self.container.as_str()];
        all.extend_from_slice(args);
        run_bounded("docker", &all, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything nginx wrote to the container's stdout and stderr.
    pub fn logs(&self) -> String {
        match run_bounded(
            "docker",
            &["logs", &self.container],
            Duration::from_secs(30),
        ) {
            Ok(o) => o.stdout + &o.stderr,
            Err(e) => e,
        }
    }

    /// The sample log at `path` in the container, one JSON value per line.
    pub fn samples(&self, path: &str) -> Vec<serde_json::Value> {
        let o = self.exec(&["cat", path]);
        o.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadSummary {
    pub ok: u64,
    /// One line per failed request: its status (0: no response) and why.
    pub failed: Vec<String>,
    /// Responses per `X-Backend`.
    pub by_backend: std::collections::BTreeMap<String, u64>,
}

/// Closed-loop client threads on the host sending GET `path` (idempotent,
/// so nginx may retry it) until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadSummary>>,
    pub sent: Arc<AtomicU64>,
}

impl Load {
    /// `threads` clients, each pausing `pause` between requests.
    pub fn start(addr: SocketAddr, path: &str, threads: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                let sent = sent.clone();
                let path = path.to_owned();
                std::thread::spawn(move || {
                    let mut s = LoadSummary::default();
                    while !stop.load(Ordering::Relaxed) {
                        let r = http_get(addr, &path);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if r.status == 200 {
                            s.ok += 1;
                            let b = r.header("X-Backend").unwrap_or("?").to_owned();
                            *s.by_backend.entry(b).or_insert(0) += 1;
                        } else {
                            s.failed.push(format!("{}: {}", r.status, r.body.trim()));
                        }
                        std::thread::sleep(pause);
                    }
                    s
                })
            })
            .collect();
        Load {
            stop,
            threads,
            sent,
        }
    }

    /// Waits until at least `n` more requests were sent (at most `timeout`).
    pub fn wait_requests(&self, n: u64, timeout: Duration) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        let done = crate::harness::wait_for(timeout, || {
            (self.sent.load(Ordering::Relaxed) >= target).then_some(())
        });
        assert!(
            done.is_some(),
            "load sent fewer than {n} requests in {timeout:?}"
        );
    }

    /// Stops the clients and adds up what they saw.
    pub fn stop(self) -> LoadSummary {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadSummary::default();
        for t in self.threads {
            let s = t.join().expect("load thread");
            total.ok += s.ok;
            total.failed.extend(s.failed);
            for (b, n) in s.by_backend {
                *total.by_backend.entry(b).or_insert(0) += n;
            }
        }
        total
    }
}

/// Milliseconds since the Unix epoch (the clock the sample log uses; the
/// containers share the host's kernel clock).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Compose implementation: Debian's `docker-compose` (1.29) or the
/// `docker compose` plugin (v2).
#[derive(Clone, Copy, Debug)]
pub struct ComposeCli {
    pub program: &'static str,
    pub prefix: &'static [&'static str],
}

impl ComposeCli {
    pub fn name(&self) -> String {
        std::iter::once(self.program)
            .chain(self.prefix.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The Compose implementations that answer `version` here (none, one or both).
pub fn compose_clis() -> Vec<ComposeCli> {
    [
        ComposeCli {
            program: "docker-compose",
            prefix: &[],
        },
        ComposeCli {
            program: "docker",
            prefix: &["compose"],
        },
    ]
    .into_iter()
    .filter(|c| {
        let mut args = c.prefix.to_vec();
        args.push("version");
        run_bounded(c.program, &args, Duration::from_secs(20)).is_ok_and(|o| o.ok)
    })
    .collect()
}

/// The names of the Docker networks whose IPAM config has `subnet`.
pub fn networks_with_subnet(subnet: &str) -> Vec<String> {
    let ids = must(&["network", "ls", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec![
        "network",
        "inspect",
        "-f",
        "{{.Name}}{{range .IPAM.Config}} {{.Subnet}}{{end}}",
    ];
    args.extend(ids);
    // A network removed between `ls` and `inspect` makes inspect fail: retry.
    let out = docker(&args).or_else(|_| docker(&args)).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            words.any(|w| w == subnet).then(|| name.to_owned())
        })
        .collect()
}

/// A Compose project of the repository's `compose.yaml`, run from the
/// repository root as the documentation says, under a name of its own
/// (`-p dst-compose-...`), with its own image tag (`DEEP_SCHED_IMAGE`) and
/// published port (`DEEP_SCHED_PORT`). `down -v` and the tag's removal run on
/// drop, also when the test panics.
pub struct ComposeProject {
    pub cli: ComposeCli,
    pub project: String,
    /// `deep-sched/nginx:<project>`: absent before `up`, so `up` has to build it.
    pub image: String,
    pub port: u16,
    down: AtomicBool,
}

impl ComposeProject {
    pub fn new(cli: ComposeCli, test: &str, port: u16) -> ComposeProject {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let project = format!("{COMPOSE_PREFIX}{test}-{}-{nanos:x}", std::process::id());
        ComposeProject {
            cli,
            image: format!("deep-sched/nginx:{project}"),
            project,
            port,
            down: AtomicBool::new(false),
        }
    }

    /// `<compose> -p <project> args` in the repository root, within `timeout`.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Out {
        run_command_bounded(self.command(args), timeout).unwrap_or_else(|e| panic!("{e}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.cli.program);
        cmd.args(self.cli.prefix)
            .args(["-p", &self.project])
            .args(args)
            .current_dir(root())
            // The repository's compose.yaml, found as `docker-compose` finds it.
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env("DEEP_SCHED_IMAGE", &self.image)
            .env("DEEP_SCHED_PORT", self.port.to_string());
        cmd
    }

    /// The container id of `service`.
    pub fn container(&self, service: &str) -> String {
        let out = self.run(&["ps", "-q", service], Duration::from_secs(60));
        let id = out.stdout.trim().to_owned();
        assert!(
            out.ok && !id.is_empty(),
            "{} ps -q {service}: {}{}",
            self.cli.name(),
            out.stdout,
            out.stderr
        );
        id
    }

    /// `down -v` (containers, network, volumes) and the image tag; `Err`
    /// with the output when something is left.
    pub fn down(&self) -> Result<(), String> {
        if self.down.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        // Not `run`: this also runs in `drop`, where a panic would abort.
        let out = run_command_bounded(
            self.command(&["down", "-v", "--remove-orphans", "-t", "2"]),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| Out {
            ok: false,
            stdout: String::new(),
            stderr: e,
        });
        let _ = docker(&["rmi", &self.image]);
        let label = format!("label=com.docker.compose.project={}", self.project);
        let left = docker(&["ps", "-aq", "--filter", &label]).unwrap_or_default()
            + &docker(&["network", "ls", "-q", "--filter", &label]).unwrap_or_default();
        if out.ok && left.trim().is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} -p {} down -v: ok={} left {:?}\n{}{}",
                self.cli.name(),
                self.project,
                out.ok,
                left.trim(),
                out.stdout,
                out.stderr
            ))
        }
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
    }
}
