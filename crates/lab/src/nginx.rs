//! The nginx of an experiment run: its configuration (rendered from the
//! templates in `nginx-conf/lab/`) and its process (started in the
//! foreground, stopped by PID on drop).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NGINX_TEMPLATE: &str = include_str!("../../../nginx-conf/lab/nginx.conf.tmpl");
const UPSTREAM_TEMPLATE: &str = include_str!("../../../nginx-conf/lab/upstream.conf.tmpl");
const LOCATION_TEMPLATE: &str = include_str!("../../../nginx-conf/lab/location.conf.tmpl");

/// Report name of [`Balancer::OnePool`].
pub const ONE_POOL: &str = "one_pool";

/// How an upstream picks its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balancer {
    /// nginx's default weighted round robin.
    RoundRobin,
    /// `least_conn`.
    LeastConn,
    /// `random two least_conn` (power of two choices).
    RandomTwo,
    /// `hash $request_id consistent` (ketama ring keyed per request).
    HashConsistent,
    /// `hash $request_uri consistent` (ketama ring, 160 points per weight,
    /// keyed by the URI: the key distribution study).
    HashUriConsistent,
    /// Not a balancer but the reference for one: every worker of the
    /// scenario in a single backend with one FIFO queue, so no request
    /// ever waits while a worker is idle. The upstream has one peer and
    /// nginx's default method.
    OnePool,
    /// `deep_sched explore weights=... interval=... [choose=p2c] log=...;`
    /// (data collection).
    DeepSchedExplore {
        /// Sample log to append to.
        log: PathBuf,
        /// The exploration set (`weights=`).
        weights: Vec<u32>,
        /// Decision interval, ms.
        interval_ms: u64,
        /// Explore under `choose=p2c`, the per-request choice the policy
        /// will be served with.
        p2c: bool,
    },
    /// `least_conn;` with each server's `weight=` proportional to its
    /// true (time-averaged) capacity ([`crate::heldout::true_capacity_weights`]):
    /// what an operator who knew the capacities exactly would configure.
    LeastConnWeighted {
        /// One weight per peer, in upstream order (1..=1000).
        weights: Vec<u32>,
    },
    /// nginx >= 1.31 `least_time header;` (EWMA of the time to the
    /// response header × (connections + 1) / weight; needs the upstream's
    /// `zone`, which the lab's template always has).
    LeastTime,
    /// `deep_sched choose=p2c;`: observe-only with the power of two
    /// choices over the configured (equal) weights; no policy, no
    /// learning: deep_sched's own per-request heuristic alone.
    DeepSchedEqualP2c,
    /// `deep_sched choose=p2c;` with each server's `weight=` proportional
    /// to its true capacity: the static capacity oracle under deep_sched's
    /// p2c (the learner's baseline with perfect capacity estimates).
    DeepSchedOracleP2c {
        /// One weight per peer, in upstream order (1..=1000).
        weights: Vec<u32>,
    },
    /// `deep_sched POLICY choose=p2c|wrr [log=...];`.
    DeepSched {
        /// Policy file.
        policy: PathBuf,
        /// Optional sample log of the decisions (for the state timeline).
        log: Option<PathBuf>,
        /// `choose=p2c` (the cheaper of two weighted draws) instead of
        /// smooth weighted round robin.
        p2c: bool,
    },
}

impl Balancer {
    /// Short name used in reports and file names.
    pub fn name(&self) -> &'static str {
        match self {
            Balancer::RoundRobin => "round_robin",
            Balancer::LeastConn => "least_conn",
            Balancer::RandomTwo => "random_two_least_conn",
            Balancer::HashConsistent => "hash_consistent",
            Balancer::HashUriConsistent => "nginx_hash_uri_consistent",
            Balancer::OnePool => ONE_POOL,
            Balancer::LeastConnWeighted { .. } => "least_conn_capacity",
            Balancer::LeastTime => "least_time",
            Balancer::DeepSchedEqualP2c => "deep_sched_equal_p2c",
            Balancer::DeepSchedOracleP2c { .. } => "deep_sched_oracle_p2c",
            Balancer::DeepSchedExplore { .. } => "deep_sched_explore",
            Balancer::DeepSched { p2c: false, .. } => "deep_sched",
            Balancer::DeepSched { p2c: true, .. } => "deep_sched_p2c",
        }
    }

    /// The directive inside `upstream { }` (empty for round robin).
    pub fn directive(&self) -> String {
        match self {
            Balancer::RoundRobin => "# round robin (default)".to_string(),
            Balancer::LeastConn | Balancer::LeastConnWeighted { .. } => "least_conn;".to_string(),
            Balancer::LeastTime => "least_time header;".to_string(),
            Balancer::DeepSchedEqualP2c | Balancer::DeepSchedOracleP2c { .. } => {
                "deep_sched choose=p2c;".to_string()
            }
            Balancer::RandomTwo => "random two least_conn;".to_string(),
            Balancer::HashConsistent => "hash $request_id consistent;".to_string(),
            Balancer::HashUriConsistent => "hash $request_uri consistent;".to_string(),
            Balancer::OnePool => "# one peer holding every worker: nothing to balance".to_string(),
            Balancer::DeepSchedExplore {
                log,
                weights,
                interval_ms,
                p2c,
            } => format!(
                "deep_sched explore weights={} interval={interval_ms}ms{} log={};",
                weights
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                if *p2c { " choose=p2c" } else { "" },
                log.display()
            ),
            Balancer::DeepSched { policy, log, p2c } => {
                // Always explicit: with a policy the module's default is p2c.
                let choose = if *p2c { " choose=p2c" } else { " choose=wrr" };
                match log {
                    Some(log) => format!(
                        "deep_sched {}{choose} log={};",
                        policy.display(),
                        log.display()
                    ),
                    None => format!("deep_sched {}{choose};", policy.display()),
                }
            }
        }
    }

    /// Whether a report counts it among nginx's built-in balancers (the
    /// ones deep_sched is measured against): neither deep_sched nor the
    /// one-pool reference.
    pub fn is_builtin_name(name: &str) -> bool {
        !name.starts_with("deep_sched") && name != ONE_POOL
    }

    /// Whether it needs the deep_sched module.
    pub fn needs_module(&self) -> bool {
        matches!(
            self,
            Balancer::DeepSchedExplore { .. }
                | Balancer::DeepSched { .. }
                | Balancer::DeepSchedEqualP2c
                | Balancer::DeepSchedOracleP2c { .. }
        )
    }

    /// Whether it needs nginx >= 1.31 (`least_time` became open source
    /// there).
    pub fn needs_least_time(&self) -> bool {
        matches!(self, Balancer::LeastTime)
    }

    /// The servers' `weight=` values, in upstream order, when it sets them
    /// (`None`: nginx's default weight 1 for every server).
    pub fn server_weights(&self) -> Option<&[u32]> {
        match self {
            Balancer::LeastConnWeighted { weights } | Balancer::DeepSchedOracleP2c { weights } => {
                Some(weights)
            }
            _ => None,
        }
    }
}

/// One `upstream` block and the locations routed to it.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// Upstream name.
    pub name: String,
    /// Location matches (`/`, `= /wrk2-api/post/compose`, ...).
    pub locations: Vec<String>,
    /// Peer addresses, in order.
    pub peers: Vec<SocketAddr>,
}

/// Everything needed to render one nginx configuration.
#[derive(Debug, Clone)]
pub struct NginxConf {
    /// Prefix directory (config, pid, logs, temp files).
    pub prefix: PathBuf,
    /// Port nginx listens on, on 127.0.0.1.
    pub port: u16,
    /// `worker_processes`.
    pub worker_processes: usize,
    /// Absolute path of `ngx_http_deep_sched_module.so`, if loaded.
    pub module: Option<PathBuf>,
    /// The upstreams (all with the same balancer).
    pub upstreams: Vec<UpstreamSpec>,
    /// Balancer of every upstream.
    pub balancer: Balancer,
}

fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    pairs.iter().fold(template.to_string(), |s, (k, v)| {
        s.replace(&format!("{{{{{k}}}}}"), v)
    })
}

impl NginxConf {
    /// The configuration text.
    pub fn render(&self) -> String {
        let prefix = self.prefix.display().to_string();
        let upstreams: String = self
            .upstreams
            .iter()
            .map(|u| {
                let weights = self.balancer.server_weights();
                let servers: String = u
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let weight = match weights.and_then(|w| w.get(i)) {
                            Some(w) => format!(" weight={w}"),
                            None => String::new(),
                        };
                        format!("        server {p}{weight} max_fails=1 fail_timeout=2s;\n")
                    })
                    .collect();
                fill(
                    UPSTREAM_TEMPLATE,
                    &[
                        ("name", &u.name),
                        ("servers", servers.trim_end_matches('\n')),
                        ("balancer", &self.balancer.directive()),
                    ],
                )
            })
            .collect();
        let locations: String = self
            .upstreams
            .iter()
            .flat_map(|u| {
                u.locations
                    .iter()
                    .map(move |m| fill(LOCATION_TEMPLATE, &[("match", m), ("upstream", &u.name)]))
            })
            .collect();
        let load_module = match &self.module {
            Some(m) => format!("load_module {};", m.display()),
            None => "# no dynamic module".to_string(),
        };
        fill(
            NGINX_TEMPLATE,
            &[
                ("load_module", &load_module),
                ("worker_processes", &self.worker_processes.to_string()),
                ("prefix", &prefix),
                ("port", &self.port.to_string()),
                ("upstreams", &upstreams),
                ("locations", locations.trim_end_matches('\n')),
            ],
        )
    }
}

/// Errors starting or running nginx.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    /// File-system trouble in the prefix.
    #[error("nginx prefix {path}: {source}")]
    Prefix {
        /// Path concerned.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The binary could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// nginx binary.
        binary: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// nginx exited or never listened.
    #[error("nginx ({binary}, config {config}) did not start: {reason}\n{log}")]
    NotReady {
        /// nginx binary.
        binary: PathBuf,
        /// Config file.
        config: PathBuf,
        /// What happened.
        reason: String,
        /// Tail of its error log.
        log: String,
    },
}

/// Masters started by this process and not yet stopped, so a signal
/// handler can stop them when the runner itself is interrupted.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends `SIGTERM` to every nginx master this process started and has not
/// stopped (for the runner's SIGINT/SIGTERM handler; nginx's master then
/// stops its workers).
pub fn terminate_all() {
    let pids = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
}

/// A running nginx (master in the foreground); stopped on drop.
pub struct NginxProcess {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
    /// Prefix directory.
    pub prefix: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The version `nginx -v` prints (`nginx version: nginx/1.31.4`) as
/// numbers, from that text.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split("nginx/").nth(1)?.split_whitespace().next()?;
    let mut it = v.split('.').map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Whether an nginx of `version` has open-source `least_time` (1.31 and
/// later).
pub fn has_least_time(version: (u32, u32, u32)) -> bool {
    version >= (1, 31, 0)
}

/// A port on 127.0.0.1 that was free a moment ago (bound to :0 and
/// released; nginx cannot be handed a socket, so a short race remains).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NginxProcess {
    /// Writes the configuration into its prefix, starts `binary` and waits
    /// (at most 10 s) until it accepts connections.
    pub fn start(binary: &Path, conf: &NginxConf) -> Result<NginxProcess, NginxError> {
        let prefix_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NginxError::Prefix { path, source }
        };
        for sub in ["", "tmp", "logs"] {
            let d = conf.prefix.join(sub);
            std::fs::create_dir_all(&d).map_err(prefix_err(&d))?;
        }
        let config = conf.prefix.join("nginx.conf");
        std::fs::write(&config, conf.render()).map_err(prefix_err(&config))?;
        let error_log = conf.prefix.join("error.log");
        let _ = std::fs::remove_file(&error_log);
        let child = Command::new(binary)
            .arg("-p")
            .arg(&conf.prefix)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| NginxError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        let mut nginx = NginxProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], conf.port)),
            prefix: conf.prefix.clone(),
        };
        let not_ready = |reason: String| NginxError::NotReady {
            binary: binary.to_path_buf(),
            config: config.clone(),
            reason,
            log: tail(&error_log, 20),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(not_ready(format!("exited with {status}")));
            }
            if TcpStream::connect_timeout(&nginx.addr, Duration::from_millis(200)).is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                return Err(not_ready("not listening after 10 s".to_string()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `SIGTERM` (fast shutdown: the master stops its workers) and
    /// waits up to 5 s, then `SIGKILL`.
    pub fn stop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != self.child.id());
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The tail of its error log.
    pub fn error_log_tail(&self, lines: usize) -> String {
        tail(&self.prefix.join("error.log"), lines)
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(balancer: Balancer) -> NginxConf {
        NginxConf {
            prefix: PathBuf::from("/tmp/lab-x"),
            port: 18080,
            worker_processes: 2,
            module: None,
            upstreams: vec![UpstreamSpec {
                name: "social".into(),
                locations: vec!["/".into()],
                peers: vec![
                    "127.0.0.1:1".parse().unwrap(),
                    "127.0.0.1:2".parse().unwrap(),
                ],
            }],
            balancer,
        }
    }

    #[test]
    fn renders_every_placeholder() {
        for b in [
            Balancer::RoundRobin,
            Balancer::LeastConn,
            Balancer::RandomTwo,
            Balancer::HashConsistent,
            Balancer::HashUriConsistent,
            Balancer::OnePool,
        ] {
            let text = conf(b.clone()).render();
            let unfilled = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains("{{"));
            assert!(!unfilled, "{text}");
            assert!(text.contains("listen 127.0.0.1:18080;"));
            assert!(text.contains("server 127.0.0.1:2 max_fails=1 fail_timeout=2s;"));
            assert!(text.contains("proxy_pass http://social;"));
            // the balancer must come before keepalive
            let bal = text.find(&b.directive()).unwrap();
            assert!(bal < text.find("keepalive 64;").unwrap());
        }
    }

    #[test]
    fn only_nginx_methods_count_as_builtins() {
        for b in builtin_names() {
            assert!(Balancer::is_builtin_name(b), "{b}");
        }
        for other in [
            "deep_sched",
            "deep_sched_p2c",
            "deep_sched_explore",
            ONE_POOL,
        ] {
            assert!(!Balancer::is_builtin_name(other), "{other}");
        }
        assert_eq!(Balancer::OnePool.name(), ONE_POOL);
        assert!(!Balancer::OnePool.needs_module());
    }

    fn builtin_names() -> [&'static str; 4] {
        [
            Balancer::RoundRobin.name(),
            Balancer::LeastConn.name(),
            Balancer::RandomTwo.name(),
            Balancer::HashConsistent.name(),
        ]
    }

    #[test]
    fn held_out_balancers_render_their_directives_and_weights() {
        let weights = vec![1000, 250];
        let cases = [
            (
                Balancer::LeastConnWeighted {
                    weights: weights.clone(),
                },
                "least_conn_capacity",
                "least_conn;",
                true,
            ),
            (
                Balancer::LeastTime,
                "least_time",
                "least_time header;",
                false,
            ),
            (
                Balancer::DeepSchedEqualP2c,
                "deep_sched_equal_p2c",
                "deep_sched choose=p2c;",
                false,
            ),
            (
                Balancer::DeepSchedOracleP2c {
                    weights: weights.clone(),
                },
                "deep_sched_oracle_p2c",
                "deep_sched choose=p2c;",
                true,
            ),
        ];
        for (b, name, directive, weighted) in cases {
            assert_eq!(b.name(), name);
            assert_eq!(b.directive(), directive);
            let text = conf(b.clone()).render();
            assert!(text.contains(&format!("        {directive}\n")), "{text}");
            // least_time needs the shared zone: the template always has it
            assert!(text.contains("zone social 256k;"), "{text}");
            if weighted {
                assert!(
                    text.contains("server 127.0.0.1:1 weight=1000 max_fails=1 fail_timeout=2s;"),
                    "{text}"
                );
                assert!(
                    text.contains("server 127.0.0.1:2 weight=250 max_fails=1 fail_timeout=2s;"),
                    "{text}"
                );
                assert_eq!(b.server_weights(), Some(&weights[..]));
            } else {
                assert!(!text.contains("weight="), "{text}");
                assert_eq!(b.server_weights(), None);
            }
            assert_eq!(b.needs_least_time(), name == "least_time");
            assert_eq!(b.needs_module(), name.starts_with("deep_sched"));
        }
        for b in [
            Balancer::RoundRobin,
            Balancer::LeastConn,
            Balancer::RandomTwo,
            Balancer::OnePool,
        ] {
            assert!(!conf(b).render().contains("weight="));
        }
        // the oracle and equal-weight p2c are deep_sched, not built-ins
        assert!(!Balancer::is_builtin_name("deep_sched_equal_p2c"));
        assert!(!Balancer::is_builtin_name("deep_sched_oracle_p2c"));
        assert!(Balancer::is_builtin_name("least_time"));
    }

    #[test]
    fn deep_sched_directives_are_what_the_module_parses() {
        use deep_sched_core::directive::{parse, ChooseArg, ModeArg};
        let words = |b: &Balancer| {
            let d = b.directive();
            let d = d.strip_prefix("deep_sched").unwrap().trim_end_matches(';');
            d.split_whitespace().map(str::to_string).collect::<Vec<_>>()
        };
        let parsed = |b: &Balancer| {
            let w = words(b);
            parse(&w.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
        };
        // equal weights and the oracle: observe-only under p2c (the
        // configured weights, no policy, no learning)
        for b in [
            Balancer::DeepSchedEqualP2c,
            Balancer::DeepSchedOracleP2c {
                weights: vec![3, 1],
            },
        ] {
            let a = parsed(&b);
            assert_eq!(a.mode, ModeArg::Observe);
            assert_eq!((a.choose, a.choose_given), (ChooseArg::P2c, true));
        }
        for p2c in [true, false] {
            let a = parsed(&Balancer::DeepSched {
                policy: "/p.json".into(),
                log: None,
                p2c,
            });
            assert_eq!(a.mode, ModeArg::Policy("/p.json".into()));
            let want = if p2c { ChooseArg::P2c } else { ChooseArg::Wrr };
            assert_eq!((a.choose, a.choose_given), (want, true));
        }
        let a = parsed(&Balancer::DeepSchedExplore {
            log: "/s.jsonl".into(),
            weights: vec![1, 3],
            interval_ms: 1000,
            p2c: true,
        });
        assert_eq!(a.mode, ModeArg::Explore);
        assert_eq!(a.weights, vec![1, 3]);
    }

    #[test]
    fn least_time_needs_nginx_1_31() {
        assert_eq!(
            parse_version("nginx version: nginx/1.31.4\n"),
            Some((1, 31, 4))
        );
        assert_eq!(
            parse_version("nginx version: nginx/1.28.0"),
            Some((1, 28, 0))
        );
        assert_eq!(parse_version("nginx version: nginx/2.0"), Some((2, 0, 0)));
        for bad in ["", "nginx version: openresty", "nginx/x.y", "nginx/1"] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
        assert!(has_least_time((1, 31, 0)) && has_least_time((1, 31, 4)));
        assert!(has_least_time((2, 0, 0)));
        assert!(!has_least_time((1, 30, 9)) && !has_least_time((1, 28, 0)));
    }

    #[test]
    fn deep_sched_directives() {
        let b = Balancer::DeepSchedExplore {
            log: "/tmp/s.jsonl".into(),
            weights: vec![1, 3, 5],
            interval_ms: 1000,
            p2c: false,
        };
        assert_eq!(
            b.directive(),
            "deep_sched explore weights=1,3,5 interval=1000ms log=/tmp/s.jsonl;"
        );
        let e = Balancer::DeepSchedExplore {
            log: "/tmp/s.jsonl".into(),
            weights: vec![1, 3],
            interval_ms: 1000,
            p2c: true,
        };
        assert_eq!(
            e.directive(),
            "deep_sched explore weights=1,3 interval=1000ms choose=p2c log=/tmp/s.jsonl;"
        );
        assert!(b.needs_module() && !Balancer::LeastConn.needs_module());
        let p = Balancer::DeepSched {
            policy: "/p.json".into(),
            log: Some("/d.jsonl".into()),
            p2c: true,
        };
        assert_eq!(p.directive(), "deep_sched /p.json choose=p2c log=/d.jsonl;");
        assert_eq!(p.name(), "deep_sched_p2c");
        let w = Balancer::DeepSched {
            policy: "/p.json".into(),
            log: None,
            p2c: false,
        };
        assert_eq!(w.directive(), "deep_sched /p.json choose=wrr;");
        let mut c = conf(b);
        c.module = Some("/m/ngx_http_deep_sched_module.so".into());
        assert!(c
            .render()
            .contains("load_module /m/ngx_http_deep_sched_module.so;"));
    }
}
