//! Experiment runner: scenarios × balancers, interleaved and repeated,
//! against emulated backends behind a real nginx.
//!
//! One run = fresh backends (in this process, on 127.0.0.1:0) + a fresh
//! nginx with one balancer + one open-loop load run; the backends' own
//! service-time p99 of that run is its *floor*. Balancers are interleaved
//! (rep 1: all balancers, rep 2: all balancers, ...) so slow drifts of the
//! shared machine hit every balancer alike; each rep uses its own arrival
//! seed, the same for every balancer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::{
    self, BackendConfig, BackendStats, Degradation, Endpoint, ServiceTimes, SlowSchedule,
};
use crate::dist::Delay;
use crate::load::{self, LoadConfig, LoadSummary, TypeSummary};
use crate::nginx::{free_port, Balancer, NginxConf, NginxProcess, UpstreamSpec};
use crate::percentiles::{new_histogram, Percentiles};
use crate::schedule::{DayNight, GenLoad, LoadPlan, DAY_NIGHT_FRACTIONS};

/// One emulated backend of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct BackendSpec {
    /// Workers (concurrency).
    pub workers: usize,
    /// Service times.
    pub service: ServiceTimes,
    /// Noisy-neighbour schedule.
    pub slow: Option<SlowSchedule>,
    /// A degrading peer, its ramp given relative to each run's length.
    pub degrade: Option<DegradeSpec>,
}

/// A peer whose service times grow linearly from ×1 at `from` × the run's
/// length to ×`factor` at `to` × the run's length (see
/// [`Degradation`]); relative so that a 30 s evaluation run and a 120 s
/// exploration run both see the whole ramp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DegradeSpec {
    /// Multiplier at the end of the ramp.
    pub factor: f64,
    /// Start of the ramp, fraction of the run (0..=1).
    pub from: f64,
    /// End of the ramp, fraction of the run (`from..=1`).
    pub to: f64,
}

impl DegradeSpec {
    /// The backend's [`Degradation`] in a run of `duration`.
    pub fn for_run(&self, duration: Duration) -> Degradation {
        let from = self.from.clamp(0.0, 1.0);
        let to = self.to.clamp(from, 1.0);
        Degradation {
            factor: self.factor,
            start: duration.mul_f64(from),
            ramp: duration.mul_f64(to - from),
        }
    }
}

/// What load a scenario sends.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// Poisson at `load` × capacity, spread over the three endpoints.
    Rate {
        /// Fraction of the backends' total capacity.
        load: f64,
    },
    /// `gen_load` with its default ranges, times and rates scaled.
    GenLoad {
        /// Multiplies run/back-off lengths.
        time_scale: f64,
        /// Multiplies rates (default 1000–2000 per type).
        rate_scale: f64,
    },
    /// Day/night profile peaking at `peak_load` × capacity.
    DayNight {
        /// Fraction of capacity at load fraction 1.
        peak_load: f64,
        /// Steps per day.
        breakpoints: usize,
    },
}

/// How nginx routes the request types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One upstream `social` for everything.
    Single,
    /// One upstream per request type over the same backends (the
    /// research's setup, one 27-state agent).
    PerType,
}

/// Something that happens during a run.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Backend `peer` stops listening at `at` × the run's length.
    PeerDies {
        /// Index of the backend.
        peer: usize,
        /// Fraction of the run.
        at: f64,
    },
}

/// An experiment scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `S1` .. `S6`, or `G<seed>` for a generated one
    /// ([`crate::generate`]).
    pub id: String,
    /// One line.
    pub title: String,
    /// The request types sent (in equal parts).
    pub endpoints: &'static [Endpoint],
    /// First backend port ([`Scenario::peer_ports`]).
    pub port_base: u16,
    /// The backends.
    pub backends: Vec<BackendSpec>,
    /// The load.
    pub workload: Workload,
    /// Upstream layout.
    pub layout: Layout,
    /// Optional event.
    pub event: Option<Event>,
}

fn exp10() -> ServiceTimes {
    ServiceTimes::uniform(Delay::Exponential { mean_ms: 10.0 })
}

fn backends(workers: &[usize], service: ServiceTimes) -> Vec<BackendSpec> {
    workers
        .iter()
        .map(|&workers| BackendSpec {
            workers,
            service,
            slow: None,
            degrade: None,
        })
        .collect()
}

impl Scenario {
    /// The six scenarios of the lab.
    pub fn all() -> Vec<Scenario> {
        let mut noisy = backends(&[8, 8, 8], exp10());
        noisy[2].slow = Some(SlowSchedule {
            factor: 5.0,
            period: Duration::from_secs(15),
            slow_for: Duration::from_secs(5),
        });
        vec![
            Scenario {
                id: "S1".into(),
                endpoints: &Endpoint::ALL,
                port_base: 19110,
                title: "homogeneous: 3 x 8 workers, exponential 10 ms, 70% load".into(),
                backends: backends(&[8, 8, 8], exp10()),
                workload: Workload::Rate { load: 0.7 },
                layout: Layout::Single,
                event: None,
            },
            Scenario {
                id: "S2".into(),
                endpoints: &Endpoint::ALL,
                port_base: 19120,
                title: "heterogeneous capacity: 8/8/3 workers, exponential 10 ms, 70% load".into(),
                backends: backends(&[8, 8, 3], exp10()),
                workload: Workload::Rate { load: 0.7 },
                layout: Layout::Single,
                event: None,
            },
            Scenario {
                id: "S3".into(),
                endpoints: &Endpoint::ALL,
                port_base: 19130,
                title: "noisy neighbour: peer 3 five times slower 5 s of every 15 s, 55% load"
                    .into(),
                backends: noisy,
                workload: Workload::Rate { load: 0.55 },
                layout: Layout::Single,
                event: None,
            },
            Scenario {
                id: "S4".into(),
                endpoints: &Endpoint::ALL,
                port_base: 19140,
                title: "peer failure: peer 3 stops listening at 40% of the run, 55% load".into(),
                backends: backends(&[8, 8, 8], exp10()),
                workload: Workload::Rate { load: 0.55 },
                layout: Layout::Single,
                event: Some(Event::PeerDies { peer: 2, at: 0.4 }),
            },
            Scenario {
                id: "S5".into(),
                endpoints: &Endpoint::ALL,
                port_base: 19150,
                title:
                    "the research's setup: one upstream per request type over 3 backends, gen_load"
                        .into(),
                backends: backends(&[8, 8, 8], ServiceTimes::default()),
                workload: Workload::GenLoad {
                    time_scale: 0.05,
                    rate_scale: 0.33,
                },
                layout: Layout::PerType,
                event: None,
            },
            Scenario {
                id: "S6".into(),
                endpoints: &Endpoint::ALL,
                port_base: 19160,
                title: "day/night profile over 8/8/3 workers, peak 85% load".into(),
                backends: backends(&[8, 8, 3], exp10()),
                workload: Workload::DayNight {
                    peak_load: 0.85,
                    breakpoints: 24,
                },
                layout: Layout::Single,
                event: None,
            },
        ]
    }

    /// Fixed backend ports of the scenario: `port_base + i` for backend
    /// `i`; `port_base` is `19100 + 10·k` for `Sk` (S1: 19110-19112, ...,
    /// S6: 19160-19162) and in 19200..19999 for a generated scenario. They
    /// must stay the same across the runs of a scenario because a learned
    /// policy names its peers by address.
    pub fn peer_ports(&self) -> Vec<u16> {
        (0..self.backends.len() as u16)
            .map(|i| self.port_base.saturating_add(i))
            .collect()
    }

    /// The one-pool reference of the scenario: a single backend holding
    /// every worker, with the same service times, so requests share one
    /// FIFO queue. That is what a perfect balancer over the scenario's
    /// backends would achieve (no request waits while a worker elsewhere
    /// is idle); a balancer that does not reorder requests cannot do better
    /// on p99 in practice. `None` where one backend cannot stand for the
    /// scenario: backends with different service times or a noisy
    /// neighbour (S3), or an event that hits one peer (S4).
    pub fn one_pool(&self) -> Option<Vec<BackendSpec>> {
        let first = self.backends.first()?;
        (self.floor_is_fixed() && self.event.is_none()).then(|| {
            vec![BackendSpec {
                workers: self.backends.iter().map(|b| b.workers).sum(),
                service: first.service,
                slow: None,
                degrade: None,
            }]
        })
    }

    /// Whether every backend has the same service times all the time (no
    /// noisy or degrading peer). The floor, the service time's p99, then does not
    /// depend on where a balancer sends requests, and no balancer's p99
    /// can be below it: every request takes at least its own service time.
    pub fn floor_is_fixed(&self) -> bool {
        let Some(first) = self.backends.first() else {
            return false;
        };
        self.backends
            .iter()
            .all(|b| b.service == first.service && b.slow.is_none() && b.degrade.is_none())
    }

    /// The backends a run of `balancer` uses: the scenario's, or for
    /// [`Balancer::OnePool`] its one-pool reference.
    pub fn backends_for(&self, balancer: &Balancer) -> Result<Vec<BackendSpec>, ExperimentError> {
        match balancer {
            Balancer::OnePool => self.one_pool().ok_or_else(|| ExperimentError::NoOnePool {
                scenario: self.id.to_string(),
            }),
            _ => Ok(self.backends.clone()),
        }
    }

    /// The scenario called `id` (case-insensitive): `S1`..`S6`, or
    /// `G<seed>` for the scenario generated from `seed`
    /// ([`crate::generate::generate`]).
    pub fn by_id(id: &str) -> Option<Scenario> {
        if let Some(seed) = id
            .strip_prefix('G')
            .or_else(|| id.strip_prefix('g'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            return Some(crate::generate::generate(seed).scenario());
        }
        Scenario::all()
            .into_iter()
            .find(|s| s.id.eq_ignore_ascii_case(id))
    }

    /// Requests per second the backends can serve with the scenario's
    /// endpoints in equal parts and nominal service times (no noisy or
    /// degrading slowdown): `Σ_peers workers / mean service time`, the mean
    /// taken over the endpoints.
    pub fn capacity_rps(&self) -> f64 {
        let n = self.endpoints.len().max(1) as f64;
        self.backends
            .iter()
            .map(|b| {
                let mean_ms = self
                    .endpoints
                    .iter()
                    .map(|e| b.service.of(*e).mean_ms())
                    .sum::<f64>()
                    / n;
                b.workers as f64 * 1000.0 / mean_ms
            })
            .sum()
    }

    /// The load plan of one run of `duration` with arrival seed `seed`.
    pub fn plan(&self, duration: Duration, seed: u64) -> LoadPlan {
        let paths: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.path().to_string())
            .collect();
        match self.workload {
            Workload::Rate { load } => {
                LoadPlan::constant(load * self.capacity_rps(), duration, &paths)
            }
            Workload::GenLoad {
                time_scale,
                rate_scale,
            } => GenLoad {
                duration_s: duration.as_secs_f64(),
                time_scale,
                rate_scale,
                paths,
                seed,
                ..GenLoad::default()
            }
            .plan(),
            Workload::DayNight {
                peak_load,
                breakpoints,
            } => DayNight {
                fractions: DAY_NIGHT_FRACTIONS.to_vec(),
                breakpoints,
                cycles: 1,
                duration_s: duration.as_secs_f64(),
                max_rps: peak_load * self.capacity_rps(),
                paths,
            }
            .plan(),
        }
    }

    /// The upstreams over the given backend addresses.
    pub fn upstreams(&self, peers: &[std::net::SocketAddr]) -> Vec<UpstreamSpec> {
        match self.layout {
            Layout::Single => vec![UpstreamSpec {
                name: "social".into(),
                locations: vec!["/".into()],
                peers: peers.to_vec(),
            }],
            Layout::PerType => self
                .endpoints
                .iter()
                .map(|e| UpstreamSpec {
                    name: e.label().to_string(),
                    locations: vec![format!("= {}", e.path())],
                    peers: peers.to_vec(),
                })
                .collect(),
        }
    }

    fn describe_endpoints(&self) -> String {
        match self.endpoints.len() {
            1 => format!("one endpoint ({})", self.endpoints[0].label()),
            3 => "the three endpoints".to_string(),
            n => format!("{n} endpoints"),
        }
    }

    /// Human description of the load (for the report).
    pub fn describe_load(&self) -> String {
        let cap = self.capacity_rps();
        match self.workload {
            Workload::Rate { load } => format!(
                "Poisson, {:.0} req/s = {:.0}% of capacity {cap:.0} req/s, {} in equal parts",
                load * cap,
                load * 100.0,
                self.describe_endpoints()
            ),
            Workload::GenLoad { time_scale, rate_scale } => format!(
                "gen_load per endpoint: busy {:.1}-{:.0} s at {:.0}-{:.0} req/s (shape exponential/normal/fixed/zipf), back-off {:.1}-{:.0} s; capacity {cap:.0} req/s",
                30.0 * time_scale, 600.0 * time_scale, 1000.0 * rate_scale, 2000.0 * rate_scale,
                10.0 * time_scale, 100.0 * time_scale
            ),
            Workload::DayNight { peak_load, breakpoints } => format!(
                "day/night profile, {breakpoints} steps, peak {:.0} req/s = {:.0}% of capacity {cap:.0} req/s",
                peak_load * cap, peak_load * 100.0
            ),
        }
    }
}

/// Settings of an experiment (all scenarios share them).
#[derive(Debug, Clone)]
pub struct Settings {
    /// nginx binary.
    pub nginx: PathBuf,
    /// deep_sched module, if it is to be evaluated.
    pub module: Option<PathBuf>,
    /// `deep-sched` learner binary (needed with `module` unless `policy`).
    pub learner: Option<PathBuf>,
    /// A policy to evaluate as is, instead of exploring and learning one.
    pub policy: Option<PathBuf>,
    /// Length of one evaluation run.
    pub duration: Duration,
    /// Length of the exploration run.
    pub explore: Duration,
    /// Explore under `choose=p2c` (the default) rather than smooth weighted
    /// round robin: the samples then show each weight vector with the
    /// per-request choice the policy is served with, and a bad vector does
    /// not overload a weak peer for the whole interval.
    pub explore_p2c: bool,
    /// The exploration set (`weights=`). The lab's default, 1 and 3, gives
    /// 7 distinct weight ratios over three peers instead of 1,3,5's 25, so
    /// a three-minute exploration tries each about 25 times rather than 7:
    /// enough for the learner's test against equal weights to see a real
    /// gain.
    pub explore_weights: Vec<u32>,
    /// Decision interval of the exploration runs, ms; the learned policy
    /// takes the samples' interval, so it is also the interval it is
    /// served with. Default [`EXPLORE_INTERVAL_MS`].
    pub explore_interval_ms: u64,
    /// Repetitions per balancer.
    pub reps: usize,
    /// nginx `worker_processes`.
    pub worker_processes: usize,
    /// Scratch directory (nginx prefixes, sample logs).
    pub work_dir: PathBuf,
    /// Where `SCENARIO/report.md` goes.
    pub results_dir: PathBuf,
    /// Base seed.
    pub seed: u64,
    /// Balancers to evaluate by name (empty: all available).
    pub only: Vec<String>,
    /// Extra arguments for `deep-sched learn` (e.g. `--states auto`).
    pub learn_args: Vec<String>,
}

/// Errors of the experiment runner.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A backend did not start.
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    /// nginx did not start.
    #[error(transparent)]
    Nginx(#[from] crate::nginx::NginxError),
    /// The load generator failed.
    #[error(transparent)]
    Load(#[from] load::LoadError),
    /// Learning the policy failed.
    #[error("learning the policy for {scenario}: `{command}`: {reason}")]
    Learn {
        /// Scenario id.
        scenario: String,
        /// Command line.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// The exploration run left no samples where they were asked for.
    #[error("exploration of {scenario}: nginx wrote no samples to {path} (files in that directory: {found})")]
    NoSamples {
        /// Scenario id.
        scenario: String,
        /// The `log=` path.
        path: PathBuf,
        /// What is there instead.
        found: String,
    },
    /// A one-pool run was asked of a scenario that has no one-pool
    /// reference.
    #[error(
        "{scenario} has no one-pool reference (its backends differ, or an event hits one of them)"
    )]
    NoOnePool {
        /// Scenario id.
        scenario: String,
    },
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExperimentError + '_ {
    move |source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Balancer name.
    pub balancer: String,
    /// Repetition (0-based).
    pub rep: usize,
    /// Load generator summary (timeline kept for plots, not in summary.json).
    pub load: LoadSummary,
    /// Each backend's own measurements.
    pub backends: Vec<BackendStats>,
    /// Service time of all backends together: its p99 is the floor.
    pub floor: Percentiles,
    /// Decision log of deep_sched during this run, if any.
    pub decisions: Option<PathBuf>,
}

impl RunResult {
    /// Share of answered requests per backend name.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let total: u64 = self.load.peers.values().sum();
        self.backends
            .iter()
            .map(|b| {
                let n = self.load.peers.get(&b.backend).copied().unwrap_or(0);
                (b.backend.clone(), n as f64 / total.max(1) as f64)
            })
            .collect()
    }
}

/// Runs one balancer once, its backends on `ports` (one per backend; empty:
/// any free ports).
pub fn run_once(
    scenario: &Scenario,
    settings: &Settings,
    balancer: &Balancer,
    rep: usize,
    duration: Duration,
    ports: &[u16],
) -> Result<RunResult, ExperimentError> {
    let seed = settings.seed.wrapping_add(1000 * rep as u64);
    let specs = scenario.backends_for(balancer)?;
    let pool = matches!(balancer, Balancer::OnePool);
    // the pool is not a policy's peer set: any free port
    let ports = if pool { &[][..] } else { ports };
    let handles = specs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            backend::spawn(BackendConfig {
                name: if pool {
                    "pool".to_string()
                } else {
                    format!("b{}", i + 1)
                },
                listen: std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    ports.get(i).copied().unwrap_or(0),
                )),
                workers: b.workers,
                service: b.service,
                slow: b.slow,
                degrade: b.degrade.map(|d| d.for_run(duration)),
                seed: seed.wrapping_add(i as u64),
                ..BackendConfig::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let peers: Vec<_> = handles.iter().map(|h| h.addr()).collect();
    let port = free_port().map_err(io_err(&settings.work_dir))?;
    let prefix = settings
        .work_dir
        .join(&scenario.id)
        .join(format!("{}-{rep}", balancer.name()));
    let conf = NginxConf {
        prefix,
        port,
        worker_processes: settings.worker_processes,
        module: if balancer.needs_module() {
            settings.module.clone()
        } else {
            None
        },
        upstreams: scenario.upstreams(&peers),
        balancer: balancer.clone(),
    };
    let mut nginx = NginxProcess::start(&settings.nginx, &conf)?;
    let plan = scenario.plan(duration, seed);
    let config = LoadConfig {
        progress: false,
        seed,
        timeout: Duration::from_secs(10),
        ..LoadConfig::new(format!("http://{}", nginx.addr), plan)
    };
    let summary = std::thread::scope(|s| {
        if let Some(Event::PeerDies { peer, at }) = scenario.event {
            if let Some(control) = handles.get(peer).map(|h| h.control().clone()) {
                s.spawn(move || {
                    std::thread::sleep(duration.mul_f64(at));
                    control.set_mode(backend::Mode::Refuse);
                });
            }
        }
        load::run_blocking(config)
    })?;
    nginx.stop();
    let mut merged = new_histogram();
    let backends = handles
        .iter()
        .map(|h| {
            merged
                .add(h.control().service_histogram())
                .expect("same bounds");
            h.stats()
        })
        .collect();
    let decisions = match balancer {
        Balancer::DeepSched { log: Some(l), .. } => written_log(l),
        _ => None,
    };
    Ok(RunResult {
        balancer: balancer.name().to_string(),
        rep,
        load: summary,
        backends,
        floor: Percentiles::of(&merged),
        decisions,
    })
}

/// nginx's four built-in balancers that every experiment evaluates (plus
/// deep_sched when the module and the learner are given, its policy
/// learned by [`explore_and_learn`], and the one-pool reference where the
/// scenario has one).
pub fn builtin_balancers() -> Vec<Balancer> {
    vec![
        Balancer::RoundRobin,
        Balancer::LeastConn,
        Balancer::RandomTwo,
        Balancer::HashConsistent,
    ]
}

/// Default decision interval of the exploration runs, ms.
pub const EXPLORE_INTERVAL_MS: u64 = 1000;

/// Exploration run (`deep_sched explore`) of `settings.explore`; returns
/// the sample log (`WORK/SCENARIO/explore.samples.jsonl`) and the run.
pub fn explore(
    scenario: &Scenario,
    settings: &Settings,
) -> Result<(PathBuf, RunResult), ExperimentError> {
    let dir = log_dir(scenario, settings)?;
    let samples = dir.join("explore.samples.jsonl");
    let _ = std::fs::remove_file(&samples);
    let balancer = Balancer::DeepSchedExplore {
        log: samples.clone(),
        interval_ms: settings.explore_interval_ms,
        weights: settings.explore_weights.clone(),
        p2c: settings.explore_p2c,
    };
    eprintln!("{}: exploring for {:?} ...", scenario.id, settings.explore);
    // its own arrival seed, unlike any evaluation repetition
    let run = run_once(
        scenario,
        settings,
        &balancer,
        9999,
        settings.explore,
        &scenario.peer_ports(),
    )?;
    let Some(samples) = written_log(&samples) else {
        let found = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| format!("{:?}", e.file_name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        return Err(ExperimentError::NoSamples {
            scenario: scenario.id.to_string(),
            path: samples,
            found,
        });
    };
    Ok((samples, run))
}

/// The log nginx wrote for `log=PATH`, if it is there and not empty.
pub fn written_log(path: &Path) -> Option<PathBuf> {
    std::fs::metadata(path)
        .is_ok_and(|m| m.len() > 0)
        .then(|| path.to_path_buf())
}

/// Exploration run and `deep-sched learn` on its samples; returns the
/// policy path. The learner's output goes to `RESULTS/SCENARIO/learn.txt`.
pub fn explore_and_learn(
    scenario: &Scenario,
    settings: &Settings,
    learner: &Path,
) -> Result<PathBuf, ExperimentError> {
    let dir = log_dir(scenario, settings)?;
    let (samples, _) = explore(scenario, settings)?;
    let policy = dir.join("policy.json");
    let mut cmd = Command::new(learner);
    cmd.arg("learn")
        .arg("--samples")
        .arg(&samples)
        .arg("--out")
        .arg(&policy)
        .arg("--seed")
        .arg(settings.seed.to_string())
        .args(&settings.learn_args);
    // the log is committed: no backtraces with this machine's paths
    cmd.env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0");
    let command = format!("{cmd:?}");
    eprintln!("{}: learning: {command}", scenario.id);
    let out = cmd.output().map_err(|e| ExperimentError::Learn {
        scenario: scenario.id.to_string(),
        command: command.clone(),
        reason: e.to_string(),
    })?;
    let results = settings.results_dir.join(&scenario.id);
    std::fs::create_dir_all(&results).map_err(io_err(&results))?;
    let log = results.join("learn.txt");
    let text = format!(
        "$ deep-sched learn --samples explore.samples.jsonl --out policy.json --seed {} {}\n{}{}",
        settings.seed,
        settings.learn_args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    // the report is committed: no paths of this machine in it
    .replace(&format!("{}/", dir.display()), "");
    std::fs::write(&log, text).map_err(io_err(&log))?;
    if !out.status.success() {
        return Err(ExperimentError::Learn {
            scenario: scenario.id.to_string(),
            command,
            reason: format!("exited with {}; see {}", out.status, log.display()),
        });
    }
    // keep the learned policy next to the report (small JSON)
    let kept = results.join("policy.json");
    std::fs::copy(&policy, &kept).map_err(io_err(&kept))?;
    Ok(policy)
}

/// `WORK/SCENARIO`, where the sample logs go, writable by everybody: when
/// nginx starts as root its workers run as an unprivileged user and may
/// be the ones that create the logs.
fn log_dir(scenario: &Scenario, settings: &Settings) -> Result<PathBuf, ExperimentError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = settings.work_dir.join(&scenario.id);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io_err(&dir))?;
    // the parents must be searchable too
    std::fs::set_permissions(&settings.work_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(&settings.work_dir))?;
    Ok(dir)
}

/// Runs every balancer `settings.reps` times, interleaved.
pub fn run_scenario(
    scenario: &Scenario,
    settings: &Settings,
) -> Result<Vec<RunResult>, ExperimentError> {
    log_dir(scenario, settings)?;
    let mut balancers = builtin_balancers();
    let policy = match (&settings.module, &settings.policy, &settings.learner) {
        (Some(_), Some(given), _) => Some(given.clone()),
        (Some(_), None, Some(learner)) => Some(explore_and_learn(scenario, settings, learner)?),
        _ => None,
    };
    if let Some(policy) = policy {
        for p2c in [false, true] {
            balancers.push(Balancer::DeepSched {
                policy: policy.clone(),
                log: None,
                p2c,
            });
        }
    }
    if scenario.one_pool().is_some() {
        balancers.push(Balancer::OnePool);
    }
    if !settings.only.is_empty() {
        balancers.retain(|b| settings.only.iter().any(|n| n == b.name()));
    }
    let mut results = Vec::new();
    for rep in 0..settings.reps {
        for b in &balancers {
            let b = match b {
                Balancer::DeepSched { policy, p2c, .. } => Balancer::DeepSched {
                    policy: policy.clone(),
                    log: Some(
                        settings
                            .work_dir
                            .join(&scenario.id)
                            .join(format!("{}-{rep}.decisions.jsonl", b.name())),
                    ),
                    p2c: *p2c,
                },
                other => other.clone(),
            };
            eprintln!(
                "{}: rep {}/{} {} ({:?})",
                scenario.id,
                rep + 1,
                settings.reps,
                b.name(),
                settings.duration
            );
            let r = run_once(
                scenario,
                settings,
                &b,
                rep,
                settings.duration,
                &scenario.peer_ports(),
            )?;
            eprintln!(
                "{}:   p99 {:.1} ms (floor {:.1}), {:.0} req/s, {} errors",
                scenario.id,
                r.load.total.latency.p99_ms,
                r.floor.p99_ms,
                r.load.total.rps,
                r.load.total.errors.total()
            );
            results.push(r);
        }
    }
    Ok(results)
}

/// Median of `xs` (mean of the two middle values for an even count; 0 for
/// none).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One balancer's medians over its repetitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalancerSummary {
    /// Balancer name.
    pub balancer: String,
    /// Repetitions.
    pub runs: usize,
    /// Medians of the client-side latency percentiles, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p90_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Each repetition's p99, ms (the spread).
    pub p99_runs_ms: Vec<f64>,
    /// Median of the backends' service-time p99, ms (the floor).
    pub floor_p99_ms: f64,
    /// Median answered requests per second.
    pub rps: f64,
    /// Median failed requests.
    pub errors: f64,
    /// Failures by kind, summed over the repetitions.
    pub errors_by_kind: load::Errors,
    /// Median share per backend.
    pub shares: BTreeMap<String, f64>,
    /// Per request type: median p99, ms.
    pub type_p99_ms: BTreeMap<String, f64>,
}

/// Medians per balancer, in the order the balancers first appear.
pub fn summarise(results: &[RunResult]) -> Vec<BalancerSummary> {
    let mut order: Vec<&str> = Vec::new();
    for r in results {
        if !order.contains(&r.balancer.as_str()) {
            order.push(&r.balancer);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.balancer == name).collect();
            let m = |f: &dyn Fn(&RunResult) -> f64| {
                median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let total = |r: &RunResult| -> TypeSummary { r.load.total.clone() };
            let mut errors_by_kind = load::Errors::default();
            for r in &runs {
                errors_by_kind.add(&r.load.total.errors);
            }
            let backends: Vec<String> = runs
                .first()
                .map(|r| r.backends.iter().map(|b| b.backend.clone()).collect())
                .unwrap_or_default();
            let shares = backends
                .iter()
                .map(|b| (b.clone(), m(&|r| r.shares().get(b).copied().unwrap_or(0.0))))
                .collect();
            let types: Vec<String> = runs
                .first()
                .map(|r| r.load.types.keys().cloned().collect())
                .unwrap_or_default();
            let type_p99_ms = types
                .iter()
                .map(|t| {
                    (
                        t.clone(),
                        m(&|r| r.load.types.get(t).map_or(0.0, |x| x.latency.p99_ms)),
                    )
                })
                .collect();
            BalancerSummary {
                balancer: name.to_string(),
                runs: runs.len(),
                p50_ms: m(&|r| total(r).latency.p50_ms),
                p90_ms: m(&|r| total(r).latency.p90_ms),
                p99_ms: m(&|r| total(r).latency.p99_ms),
                p999_ms: m(&|r| total(r).latency.p999_ms),
                p99_runs_ms: runs.iter().map(|r| r.load.total.latency.p99_ms).collect(),
                floor_p99_ms: m(&|r| r.floor.p99_ms),
                rps: m(&|r| r.load.total.rps),
                errors: m(&|r| r.load.total.errors.total() as f64),
                errors_by_kind,
                shares,
                type_p99_ms,
            }
        })
        .collect()
}

/// Default scratch directory for a run: `$TMPDIR/deep-sched-lab-PID`.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("deep-sched-lab-{}", std::process::id()))
}

/// Population standard deviation of `counts`: `sqrt(Σ (c - mean)² / n)`.
pub fn std_dev(counts: &[u64]) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    let n = counts.len() as f64;
    let mean = counts.iter().sum::<u64>() as f64 / n;
    (counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// The consistent-hashing study: `requests` requests through nginx to
/// `n` idle backends for each `n` in `peers` and each balancer; returns the
/// standard deviation of the per-peer counts.
pub fn distribution(
    settings: &Settings,
    balancers: &[Balancer],
    peers: std::ops::RangeInclusive<usize>,
    requests: u64,
) -> Result<crate::report::DistributionTable, ExperimentError> {
    use crate::schedule::{Arrivals, Phase, Stream};
    let rps = 2000.0;
    let duration_s = requests as f64 / rps;
    let mut table = crate::report::DistributionTable::new();
    for b in balancers {
        for n in peers.clone() {
            let handles = (0..n)
                .map(|i| {
                    backend::spawn(BackendConfig {
                        name: format!("b{}", i + 1),
                        workers: 256,
                        service: ServiceTimes::uniform(Delay::Fixed { ms: 0.5 }),
                        ..BackendConfig::default()
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let addrs: Vec<_> = handles.iter().map(|h| h.addr()).collect();
            let conf = NginxConf {
                prefix: settings
                    .work_dir
                    .join("distribution")
                    .join(format!("{}-{n}", b.name())),
                port: free_port().map_err(io_err(&settings.work_dir))?,
                worker_processes: settings.worker_processes,
                module: None,
                upstreams: vec![UpstreamSpec {
                    name: "social".into(),
                    locations: vec!["/".into()],
                    peers: addrs,
                }],
                balancer: b.clone(),
            };
            let nginx = NginxProcess::start(&settings.nginx, &conf)?;
            // Evenly spaced arrivals, half a period early so exactly
            // `requests` fall inside the run.
            let plan = LoadPlan {
                duration_s,
                streams: vec![Stream {
                    label: "home".into(),
                    path: Endpoint::HomeTimeline.path().into(),
                    phases: vec![Phase {
                        start_s: -0.5 / rps,
                        duration_s: duration_s + 0.25 / rps,
                        rps,
                        arrivals: Arrivals::Fixed,
                    }],
                }],
            };
            let summary = load::run_blocking(LoadConfig {
                progress: false,
                ..LoadConfig::new(format!("http://{}", nginx.addr), plan)
            })?;
            drop(nginx);
            if summary.total.errors.total() > 0 {
                eprintln!(
                    "distribution: {} N={n}: {} failed requests ({:?})",
                    b.name(),
                    summary.total.errors.total(),
                    summary.total.errors
                );
            }
            let counts: Vec<u64> = handles.iter().map(|h| h.stats().count).collect();
            eprintln!("distribution: {} N={n}: {counts:?}", b.name());
            table
                .entry(b.name().to_string())
                .or_default()
                .insert(n, std_dev(&counts));
        }
    }
    Ok(table)
}

/// The key distribution study's keys: `count` distinct request URIs.
pub fn study_keys(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{}?user={i}", Endpoint::HomeTimeline.path()))
        .collect()
}

/// Per key, the index of the peer plain consistent hashing by `hash` maps
/// it to on a ring of `peers` (names) of weight 1 (160 points each, as
/// nginx's ketama).
pub fn ring_owners(
    hash: deep_sched_core::hash::HashFn,
    peers: &[&str],
    keys: &[String],
) -> Vec<usize> {
    let mut ring = deep_sched_core::hash::Ring::new(hash, peers);
    ring.rebuild(|_| 1);
    keys.iter()
        .map(|k| ring.owner(hash.key(k.as_bytes())).unwrap_or(usize::MAX))
        .collect()
}

/// The row of one hash function in the key study, from its key → peer
/// maps: `full[n]` over peers `0..n` (n = 1..=max+1) and `without_first[n]`
/// over peers `1..n` (peer 0 removed), both indexed by peer number in the
/// full list.
pub fn key_row(
    full: &KeyMaps,
    without_first: &KeyMaps,
    peers: std::ops::RangeInclusive<usize>,
) -> BTreeMap<usize, crate::report::KeyCell> {
    let moved = |a: &[usize], b: &[usize]| {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len().max(1) as f64
    };
    peers
        .filter_map(|n| {
            let map = full.get(&n)?;
            let mut counts = vec![0u64; n];
            for &p in map {
                if let Some(c) = counts.get_mut(p) {
                    *c += 1;
                }
            }
            let total = map.len().max(1) as f64;
            let cell = crate::report::KeyCell {
                share_sd_pct: std_dev(&counts) / total * 100.0,
                moved_add_pct: full.get(&(n + 1)).map(|b| moved(map, b) * 100.0),
                moved_remove_pct: without_first.get(&n).map(|b| moved(map, b) * 100.0),
            };
            Some((n, cell))
        })
        .collect()
}

/// Key → peer index maps by number of peers (see [`key_row`]).
pub type KeyMaps = BTreeMap<usize, Vec<usize>>;

/// One keep-alive HTTP/1.1 GET on `stream`; returns the `X-Backend`
/// header of the answer (the lab's backends name themselves there).
fn backend_of(stream: &mut std::net::TcpStream, path: &str) -> std::io::Result<String> {
    use std::io::{BufRead, Read, Write};
    // One write (several small ones meet Nagle and delayed ACKs: 40 ms each).
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n").as_bytes())?;
    let mut reader = std::io::BufReader::new(&mut *stream);
    let mut backend = None;
    let mut length = 0usize;
    let mut status = String::new();
    reader.read_line(&mut status)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed in the header"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("x-backend") {
                backend = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if reader.buffer().is_empty() {
        backend.ok_or_else(|| std::io::Error::other(format!("no X-Backend in {status:?}")))
    } else {
        Err(std::io::Error::other("unexpected bytes after the body"))
    }
}

/// The key study: `keys` distinct request URIs over N = `peers` peers of
/// weight 1, for each of the core's hash functions (computed in process,
/// on the module's ring) and for nginx's `hash $request_uri consistent`
/// (measured through the real nginx: every key sent once, sequentially,
/// the answering backend read from `X-Backend`). Per function and N: the
/// standard deviation of the per-peer share, and the keys that move when a
/// peer is added (N → N+1) or the first peer removed (N → N−1).
pub fn key_distribution(
    settings: &Settings,
    peers: std::ops::RangeInclusive<usize>,
    keys: usize,
) -> Result<crate::report::KeyTable, ExperimentError> {
    let keys = study_keys(keys);
    let max = *peers.end() + 1;
    let handles = (0..max)
        .map(|i| {
            backend::spawn(BackendConfig {
                name: format!("b{}", i + 1),
                workers: 8,
                service: ServiceTimes::uniform(Delay::Fixed { ms: 0.0 }),
                ..BackendConfig::default()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<String> = handles.iter().map(|h| h.addr().to_string()).collect();
    let mut table = crate::report::KeyTable::new();
    // The maps each function gives: over peers 0..n, and over 1..n.
    let mut maps: Vec<(String, KeyMaps, KeyMaps)> = Vec::new();
    for h in deep_sched_core::hash::HashFn::ALL {
        let (mut full, mut rest) = (BTreeMap::new(), BTreeMap::new());
        for n in 1..=max {
            let names: Vec<&str> = addrs[..n].iter().map(String::as_str).collect();
            full.insert(n, ring_owners(h, &names, &keys));
            let names: Vec<&str> = addrs[1..n].iter().map(String::as_str).collect();
            if n >= 2 {
                let m = ring_owners(h, &names, &keys);
                rest.insert(n, m.into_iter().map(|p| p + 1).collect());
            }
        }
        maps.push((format!("deep_sched ring, {}", h.name()), full, rest));
    }
    let nginx_map = |first: usize, n: usize| -> Result<Vec<usize>, ExperimentError> {
        let b = Balancer::HashUriConsistent;
        let conf = NginxConf {
            prefix: settings
                .work_dir
                .join("distribution")
                .join(format!("{}-{first}-{n}", b.name())),
            port: free_port().map_err(io_err(&settings.work_dir))?,
            worker_processes: settings.worker_processes,
            module: None,
            upstreams: vec![UpstreamSpec {
                name: "social".into(),
                locations: vec!["/".into()],
                peers: handles[first..n].iter().map(|h| h.addr()).collect(),
            }],
            balancer: b,
        };
        let nginx = NginxProcess::start(&settings.nginx, &conf)?;
        let connect = || -> std::io::Result<std::net::TcpStream> {
            let s = std::net::TcpStream::connect(nginx.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(s)
        };
        let mut stream = connect().map_err(io_err(&conf.prefix))?;
        let mut map = Vec::with_capacity(keys.len());
        for k in &keys {
            let name = match backend_of(&mut stream, k) {
                Ok(n) => n,
                // nginx closes a keep-alive connection after
                // `keepalive_requests`: reconnect once.
                Err(_) => {
                    stream = connect().map_err(io_err(&conf.prefix))?;
                    backend_of(&mut stream, k).map_err(io_err(&conf.prefix))?
                }
            };
            let i = name
                .strip_prefix('b')
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&i| (1..=max).contains(&i))
                .ok_or_else(|| {
                    io_err(&conf.prefix)(std::io::Error::other(format!("unknown backend {name:?}")))
                })?;
            map.push(i - 1);
        }
        eprintln!("distribution: nginx hash $request_uri consistent, peers {first}..{n}: done");
        Ok(map)
    };
    let (mut full, mut rest) = (BTreeMap::new(), BTreeMap::new());
    for n in peers.clone() {
        full.insert(n, nginx_map(0, n)?);
        rest.insert(n, nginx_map(1, n)?);
    }
    full.insert(max, nginx_map(0, max)?);
    maps.push((
        "nginx hash $request_uri consistent (ketama)".into(),
        full,
        rest,
    ));
    for (name, full, rest) in maps {
        table.insert(name, key_row(&full, &rest, peers.clone()));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_row_counts_shares_and_moves() {
        // 4 keys: over 2 peers 2+2; with a third peer one key moves to it;
        // without peer 0 its two keys move to peer 1.
        let full = BTreeMap::from([(2, vec![0, 1, 0, 1]), (3, vec![0, 1, 2, 1])]);
        let rest = BTreeMap::from([(2, vec![1, 1, 1, 1])]);
        let row = key_row(&full, &rest, 2..=2);
        let c = &row[&2];
        assert_eq!(c.share_sd_pct, 0.0);
        assert_eq!(c.moved_add_pct, Some(25.0));
        assert_eq!(c.moved_remove_pct, Some(50.0));
        let skewed = BTreeMap::from([(2, vec![0, 0, 0, 1])]);
        // shares 75 % / 25 %: 25 points from the mean of 50.
        assert_eq!(
            key_row(&skewed, &BTreeMap::new(), 2..=2)[&2].share_sd_pct,
            25.0
        );
    }

    #[test]
    fn ring_owners_move_only_the_removed_peers_keys() {
        let keys = study_keys(2000);
        let peers = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        for h in deep_sched_core::hash::HashFn::ALL {
            let all = ring_owners(h, &peers, &keys);
            let rest: Vec<usize> = ring_owners(h, &peers[1..], &keys)
                .into_iter()
                .map(|p| p + 1)
                .collect();
            for (a, b) in all.iter().zip(&rest) {
                assert!(a == b || *a == 0, "{h:?}: {a} → {b}");
            }
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn written_log_needs_the_exact_non_empty_file() {
        let dir = std::env::temp_dir().join(format!("lab-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let want = dir.join("x.jsonl");
        assert_eq!(written_log(&want), None);
        std::fs::write(dir.join("x.jsonlgarbage"), "{}\n").unwrap();
        assert_eq!(written_log(&want), None, "a prefixed name is not the log");
        std::fs::write(&want, "").unwrap();
        assert_eq!(written_log(&want), None, "empty");
        std::fs::write(&want, "{}\n").unwrap();
        assert_eq!(written_log(&want), Some(want.clone()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn std_dev_is_the_population_one() {
        assert_eq!(std_dev(&[5, 5, 5]), 0.0);
        // mean 5, squared deviations 9 + 1 + 1 + 9 = 20, / 4 = 5
        assert!((std_dev(&[2, 4, 6, 8]) - 5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn capacities_follow_workers_and_service_times() {
        let s1 = Scenario::by_id("s1").unwrap();
        assert!((s1.capacity_rps() - 2400.0).abs() < 1e-9);
        let s2 = Scenario::by_id("S2").unwrap();
        assert!((s2.capacity_rps() - 1900.0).abs() < 1e-9);
        // S5: reads 10 ms, compose 20 ms: mean 40/3 ms per request
        let s5 = Scenario::by_id("S5").unwrap();
        assert!((s5.capacity_rps() - 24.0 * 1000.0 * 3.0 / 40.0).abs() < 1e-9);
        assert_eq!(Scenario::all().len(), 6);
    }

    #[test]
    fn the_floor_is_fixed_unless_a_backend_serves_differently() {
        let fixed: Vec<bool> = Scenario::all().iter().map(|s| s.floor_is_fixed()).collect();
        // only S3 has a peer that is slower some of the time
        assert_eq!(fixed, [true, true, false, true, true, true]);
        let mut s1 = Scenario::by_id("S1").unwrap();
        s1.backends[1].service = ServiceTimes::uniform(Delay::Exponential { mean_ms: 20.0 });
        assert!(!s1.floor_is_fixed());
        s1.backends.clear();
        assert!(!s1.floor_is_fixed());
    }

    #[test]
    fn one_pool_holds_every_worker_where_one_backend_can_stand_for_all() {
        let workers = |id: &str| {
            Scenario::by_id(id).unwrap().one_pool().map(|pool| {
                pool.iter()
                    .map(|b| (b.workers, b.slow.is_none()))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(workers("S1"), Some(vec![(24, true)]));
        assert_eq!(workers("S2"), Some(vec![(19, true)]));
        assert_eq!(workers("S5"), Some(vec![(24, true)]));
        assert_eq!(workers("S6"), Some(vec![(19, true)]));
        // a noisy neighbour, a peer that dies: one backend cannot stand in
        assert_eq!(workers("S3"), None);
        assert_eq!(workers("S4"), None);
        let s5 = Scenario::by_id("S5").unwrap();
        let pool = s5.backends_for(&Balancer::OnePool).unwrap();
        assert_eq!(pool[0].service, s5.backends[0].service);
        assert!(
            (s5.capacity_rps()
                - Scenario {
                    backends: pool,
                    ..s5.clone()
                }
                .capacity_rps())
            .abs()
                < 1e-9
        );
        let err = Scenario::by_id("S4")
            .unwrap()
            .backends_for(&Balancer::OnePool)
            .unwrap_err()
            .to_string();
        assert!(err.contains("S4 has no one-pool reference"), "{err}");
        let s3 = Scenario::by_id("S3").unwrap();
        assert_eq!(s3.backends_for(&Balancer::LeastConn).unwrap().len(), 3);
    }

    #[test]
    fn plans_match_their_workloads() {
        let s1 = Scenario::by_id("S1").unwrap();
        let plan = s1.plan(Duration::from_secs(10), 1);
        let rate: f64 = plan
            .streams
            .iter()
            .map(|s| s.expected_requests())
            .sum::<f64>()
            / 10.0;
        assert!((rate - 0.7 * 2400.0).abs() < 1e-6);
        let s5 = Scenario::by_id("S5").unwrap();
        assert_eq!(s5.upstreams(&[]).len(), 3);
        assert_eq!(s5.peer_ports(), vec![19150, 19151, 19152]);
        let s6 = Scenario::by_id("S6").unwrap();
        let plan = s6.plan(Duration::from_secs(48), 1);
        assert_eq!(plan.streams[0].phases.len(), 24);
    }
}
