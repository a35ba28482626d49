//! The held-out judgement of issue #13: per generated scenario (a seed),
//! the whole loop (explore → `deep-sched learn` → serve) and every
//! comparison balancer, interleaved and repeated; tails as the *excess
//! over the one-pool reference* of the same repetition; the issue's
//! targets computed over the seeds.
//!
//! - [`heldout_balancers`]: what is compared on one seed;
//! - [`run_seed`]: runs it (writes nothing; the caller keeps the
//!   [`SeedResult`] as JSON);
//! - [`seed_stats`], [`seed_verdict`], [`targets`]: the arithmetic, pure;
//! - [`render_markdown`]: the table of `results/heldout/heldout.md` and of
//!   BENCHMARKS.md's section.
//!
//! **Excess.** For repetition `r` of a seed, `excess_b(r) = p99_b(r) −
//! p99_pool(r)`, where `pool` is the one-pool reference run in the same
//! repetition (same arrivals). A balancer's excess is the median over the
//! repetitions; the spread is their minimum and maximum. The one-pool
//! reference is exact (every worker behind one FIFO queue) where the
//! peers differ only in size; with a noisy or degrading peer it is the
//! pool with *every* worker at nominal speed, a lower bound no balancer
//! reaches (its excess then includes the unavoidable cost of the slow
//! peer, for every balancer alike).
//!
//! **Ratios.** `ratio = max(e_a, ε) / max(e_b, ε)` with `ε =`
//! [`EXCESS_FLOOR`] × the one-pool p99 (median over repetitions): an
//! excess below 1% of the reference is measurement noise, and a ratio over
//! a zero or negative excess would be meaningless.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::experiment::{explore_and_learn, median, run_once, ExperimentError, Scenario, Settings};
use crate::generate::{generate, parse_seeds, Affliction, GeneratedScenario};
use crate::nginx::{Balancer, ONE_POOL};

/// The held-out seed list (`lab/seeds/heldout.txt`): report only.
pub const HELDOUT_SEEDS: &str = include_str!("../../../lab/seeds/heldout.txt");
/// The tuning seed list (`lab/seeds/tuning.txt`): for design work.
pub const TUNING_SEEDS: &str = include_str!("../../../lab/seeds/tuning.txt");

/// An excess below this fraction of the one-pool p99 counts as this
/// fraction in a ratio (see the module documentation).
pub const EXCESS_FLOOR: f64 = 0.01;

/// nginx's built-in balancers that need no knowledge of the system (the
/// "best built-in" of the targets is the best of these that ran):
/// round robin, `least_conn`, `random two least_conn` and, when given,
/// `least_time header`. `least_conn` with true-capacity weights is
/// reported beside them but is an oracle (nobody knows the true
/// capacities), so it is not among them.
pub const BLIND_BUILTINS: [&str; 4] = [
    "round_robin",
    "least_conn",
    "random_two_least_conn",
    "least_time",
];

/// Name of the learned policy under `choose=p2c` (the module's default
/// with a policy): "learned deep_sched" of the targets.
pub const LEARNED_P2C: &str = "deep_sched_p2c";
/// Name of the learned policy under `choose=wrr`.
pub const LEARNED_WRR: &str = "deep_sched";
/// Name of `deep_sched choose=p2c;` with equal weights (no learning).
pub const EQUAL_P2C: &str = "deep_sched_equal_p2c";

/// The seeds `spec` names: `heldout` (the default), `tuning`, a comma
/// list of seeds (`3,7`) or a file in the seed-list format.
pub fn resolve_seeds(spec: &str) -> Result<Vec<u64>, String> {
    let (text, what) = match spec {
        "heldout" | "held-out" => (HELDOUT_SEEDS.to_string(), "lab/seeds/heldout.txt".to_string()),
        "tuning" => (TUNING_SEEDS.to_string(), "lab/seeds/tuning.txt".to_string()),
        s if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ') => {
            (s.replace(',', "\n"), format!("--seeds {s}"))
        }
        path => (
            std::fs::read_to_string(path).map_err(|e| {
                format!("--seeds {path:?}: not heldout, tuning, a list of seeds or a readable file: {e}")
            })?,
            path.to_string(),
        ),
    };
    let seeds = parse_seeds(&text).map_err(|e| format!("{what}: {e}"))?;
    if seeds.is_empty() {
        return Err(format!("{what}: no seeds"));
    }
    Ok(seeds)
}

/// Each peer's true capacity, requests per second, averaged over a run:
/// `c_i = workers_i / mean service time × E_t[1 / m_i(t)]`, where `m_i(t)`
/// is the peer's service-time multiplier at time `t`:
///
/// - small or unaffected: `m = 1`;
/// - noisy (×`k` for a fraction `f = slow_for / period`): `E[1/m] = (1 −
///   f) + f / k`;
/// - degrading (×1 until `a`, linear to ×`k` at `b`, ×`k` after, as
///   fractions of the run): `E[1/m] = a + (b − a) · ln k / (k − 1) + (1 −
///   b) / k`, since `∫₀¹ ds / (1 + (k − 1) s) = ln k / (k − 1)`.
pub fn true_capacities(g: &GeneratedScenario) -> Vec<f64> {
    g.peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let factor = match g.affected.filter(|a| a.peer == i).map(|a| a.affliction) {
                None | Some(Affliction::Small) => 1.0,
                Some(Affliction::Noisy {
                    factor,
                    period_s,
                    slow_for_s,
                }) => {
                    let f = (slow_for_s / period_s).clamp(0.0, 1.0);
                    (1.0 - f) + f / factor
                }
                Some(Affliction::Degrading { factor, from, to }) => {
                    let (a, b) = (from.clamp(0.0, 1.0), to.clamp(from.clamp(0.0, 1.0), 1.0));
                    let ramp = if (factor - 1.0).abs() < 1e-12 {
                        1.0
                    } else {
                        factor.ln() / (factor - 1.0)
                    };
                    a + (b - a) * ramp + (1.0 - b) / factor
                }
            };
            p.capacity_rps * factor
        })
        .collect()
}

/// Integer `weight=` values proportional to `capacities`: `round(1000 ·
/// c_i / max c)`, at least 1 (1000 is the module's largest weight, and
/// nginx's `least_conn` and round robin take any positive weight).
pub fn capacity_weights(capacities: &[f64]) -> Vec<u32> {
    let max = capacities.iter().copied().fold(0.0_f64, f64::max);
    capacities
        .iter()
        .map(|&c| {
            if max > 0.0 && c.is_finite() {
                ((1000.0 * c / max).round() as u32).clamp(1, 1000)
            } else {
                1
            }
        })
        .collect()
}

/// [`capacity_weights`] of [`true_capacities`].
pub fn true_capacity_weights(g: &GeneratedScenario) -> Vec<u32> {
    capacity_weights(&true_capacities(g))
}

/// What is available for a held-out run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// The nginx has `least_time` (>= 1.31).
    pub least_time: bool,
    /// The deep_sched module is loaded (equal-weight p2c and the oracle
    /// under p2c run; the learned policy needs `policy` too).
    pub module: bool,
}

/// The balancers compared on one seed, in the order of repetition 1: the
/// one-pool reference, round robin, `least_conn`, `least_conn` with
/// true-capacity weights, `random two least_conn`, `least_time header`
/// (when available), `deep_sched choose=p2c;` with equal weights, the
/// static capacity oracle under deep_sched's p2c, and the learned policy
/// under `choose=p2c` and `choose=wrr` (when `policy` is given).
pub fn heldout_balancers(
    g: &GeneratedScenario,
    available: Available,
    policy: Option<&Path>,
) -> Vec<Balancer> {
    let weights = true_capacity_weights(g);
    let mut list = vec![
        Balancer::OnePool,
        Balancer::RoundRobin,
        Balancer::LeastConn,
        Balancer::LeastConnWeighted {
            weights: weights.clone(),
        },
        Balancer::RandomTwo,
    ];
    if available.least_time {
        list.push(Balancer::LeastTime);
    }
    if available.module {
        list.push(Balancer::DeepSchedEqualP2c);
        list.push(Balancer::DeepSchedOracleP2c { weights });
        if let Some(policy) = policy {
            for p2c in [true, false] {
                list.push(Balancer::DeepSched {
                    policy: policy.to_path_buf(),
                    log: None,
                    p2c,
                });
            }
        }
    }
    list
}

/// Repetition `rep`'s order: the list rotated by `rep`, so no balancer
/// always runs first (right after an exploration or a learner) or last.
pub fn rotated<T: Clone>(list: &[T], rep: usize) -> Vec<T> {
    if list.is_empty() {
        return Vec::new();
    }
    let k = rep % list.len();
    list[k..].iter().chain(&list[..k]).cloned().collect()
}

/// The scenario a one-pool run uses: the scenario itself where it has an
/// exact one-pool reference, else the same peers at nominal speed (no
/// noisy or degrading slowdown); the flag says which.
pub fn pool_scenario(scenario: &Scenario) -> (Scenario, bool) {
    if scenario.one_pool().is_some() {
        return (scenario.clone(), true);
    }
    let mut nominal = scenario.clone();
    for b in &mut nominal.backends {
        b.slow = None;
        b.degrade = None;
    }
    (nominal, false)
}

/// One run's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Balancer name ([`Balancer::name`]).
    pub balancer: String,
    /// Repetition, 0-based.
    pub rep: usize,
    /// Position in its repetition, 0-based.
    pub position: usize,
    /// Client-side latency percentiles, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Answered requests per second.
    pub rps: f64,
    /// Failed requests.
    pub errors: u64,
    /// Share of the answered requests per peer, in upstream order.
    pub shares: Vec<f64>,
}

/// Everything measured on one seed (`results/heldout/G<seed>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The generated scenario.
    pub scenario: GeneratedScenario,
    /// The one-pool reference is exact (`true`) or the nominal-speed
    /// lower bound (`false`, a noisy or degrading peer).
    pub one_pool_exact: bool,
    /// True-capacity weights of `least_conn_capacity` and the oracle.
    pub capacity_weights: Vec<u32>,
    /// Length of each evaluation run, s.
    pub duration_s: f64,
    /// Repetitions.
    pub reps: usize,
    /// Length of the exploration run, s.
    pub explore_s: f64,
    /// `nginx -v` of the nginx every balancer ran on.
    pub nginx: String,
    /// Why there is no learned policy, if there is none.
    pub learn_error: Option<String>,
    /// The runs, in the order they ran.
    pub runs: Vec<RunRecord>,
}

/// Runs one seed: exploration and learning (when `learner` and the module
/// are given), then every balancer of [`heldout_balancers`] `settings.reps`
/// times, interleaved (rotated per repetition). A learning failure is
/// recorded, not fatal: the seed is then judged without a learned policy.
pub fn run_seed(
    seed: u64,
    settings: &Settings,
    least_time: bool,
    nginx_version: &str,
) -> Result<SeedResult, ExperimentError> {
    let g = generate(seed);
    let scenario = g.scenario();
    let (pool, exact) = pool_scenario(&scenario);
    let mut learn_error = None;
    let policy = match (&settings.module, &settings.learner) {
        (Some(_), Some(learner)) => match explore_and_learn(&scenario, settings, learner) {
            Ok(p) => Some(p),
            Err(e @ ExperimentError::Learn { .. }) => {
                eprintln!("{}: {e}", scenario.id);
                // the learner's own error line, without this machine's paths
                let log = settings.results_dir.join(&scenario.id).join("learn.txt");
                let why = std::fs::read_to_string(&log)
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find(|l| l.starts_with("Error"))
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "deep-sched learn failed".to_string());
                learn_error = Some(format!("{why} (see {}/learn.txt)", scenario.id));
                None
            }
            Err(e) => return Err(e),
        },
        _ => None,
    };
    let available = Available {
        least_time,
        module: settings.module.is_some(),
    };
    let balancers = heldout_balancers(&g, available, policy.as_deref());
    let mut runs = Vec::new();
    for rep in 0..settings.reps {
        for (position, b) in rotated(&balancers, rep).iter().enumerate() {
            let scn = if matches!(b, Balancer::OnePool) {
                &pool
            } else {
                &scenario
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
                scn,
                settings,
                b,
                rep,
                settings.duration,
                &scenario.peer_ports(),
            )?;
            let total = &r.load.total;
            eprintln!(
                "{}:   p99 {:.1} ms, {:.0} req/s, {} errors",
                scenario.id,
                total.latency.p99_ms,
                total.rps,
                total.errors.total()
            );
            let shares = r.shares();
            runs.push(RunRecord {
                balancer: b.name().to_string(),
                rep,
                position,
                p50_ms: total.latency.p50_ms,
                p99_ms: total.latency.p99_ms,
                p999_ms: total.latency.p999_ms,
                rps: total.rps,
                errors: total.errors.total(),
                shares: r
                    .backends
                    .iter()
                    .map(|b| shares.get(&b.backend).copied().unwrap_or(0.0))
                    .collect(),
            });
        }
    }
    Ok(SeedResult {
        seed,
        one_pool_exact: exact,
        capacity_weights: true_capacity_weights(&g),
        scenario: g,
        duration_s: settings.duration.as_secs_f64(),
        reps: settings.reps,
        explore_s: settings.explore.as_secs_f64(),
        nginx: nginx_version.to_string(),
        learn_error,
        runs,
    })
}

/// One balancer on one seed, over its repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancerStats {
    /// Balancer name.
    pub balancer: String,
    /// Repetitions that had a one-pool run (those its excess counts).
    pub runs: usize,
    /// Median p99 over all its runs, ms.
    pub p99_ms: f64,
    /// Excess over the one-pool p99 of the same repetition: median, ms.
    pub excess_ms: f64,
    /// Smallest excess of a repetition, ms.
    pub excess_min_ms: f64,
    /// Largest excess of a repetition, ms.
    pub excess_max_ms: f64,
    /// Median failed requests per run.
    pub errors: f64,
}

/// Per balancer (in first-run order, the one-pool reference included, its
/// excess 0): median p99 and the excess over the one-pool p99 of the same
/// repetition. Repetitions without a one-pool run do not count in the
/// excess. Empty when there is no one-pool run at all.
pub fn seed_stats(runs: &[RunRecord]) -> Vec<BalancerStats> {
    let pool_of = |rep: usize| {
        runs.iter()
            .find(|r| r.balancer == ONE_POOL && r.rep == rep)
            .map(|r| r.p99_ms)
    };
    let mut order: Vec<&str> = Vec::new();
    for r in runs {
        if !order.contains(&r.balancer.as_str()) {
            order.push(&r.balancer);
        }
    }
    order
        .into_iter()
        .filter_map(|name| {
            let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.balancer == name).collect();
            let excess: Vec<f64> = mine
                .iter()
                .filter_map(|r| pool_of(r.rep).map(|p| r.p99_ms - p))
                .collect();
            if excess.is_empty() {
                return None;
            }
            let p99: Vec<f64> = mine.iter().map(|r| r.p99_ms).collect();
            let errors: Vec<f64> = mine.iter().map(|r| r.errors as f64).collect();
            Some(BalancerStats {
                balancer: name.to_string(),
                runs: excess.len(),
                p99_ms: median(&p99),
                excess_ms: median(&excess),
                excess_min_ms: excess.iter().copied().fold(f64::INFINITY, f64::min),
                excess_max_ms: excess.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                errors: median(&errors),
            })
        })
        .collect()
}

/// `max(a, ε) / max(b, ε)`: the ratio of two excesses with the floor of
/// the module documentation.
pub fn excess_ratio(a: f64, b: f64, eps: f64) -> f64 {
    a.max(eps) / b.max(eps)
}

/// The quantities the targets need on one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedVerdict {
    /// The seed.
    pub seed: u64,
    /// One-pool p99 (median over repetitions), ms.
    pub one_pool_p99_ms: f64,
    /// The built-in (of [`BLIND_BUILTINS`]) with the smallest excess.
    pub best_builtin: String,
    /// Its excess, ms.
    pub best_builtin_excess_ms: f64,
    /// The smallest median p99 of a built-in, ms.
    pub best_builtin_p99_ms: f64,
    /// The learned policy under p2c: excess and p99, ms (None without a
    /// learned policy).
    pub learned_excess_ms: Option<f64>,
    /// See `learned_excess_ms`.
    pub learned_p99_ms: Option<f64>,
    /// `deep_sched choose=p2c;` with equal weights: excess, ms.
    pub equal_p2c_excess_ms: Option<f64>,
    /// `deep_sched choose=p2c;` with equal weights: p99, ms.
    pub equal_p2c_p99_ms: Option<f64>,
    /// Learned p99 / equal-weight p2c p99 (a ratio that needs no
    /// reference).
    pub p99_over_equal: Option<f64>,
    /// The best built-in's excess is at or below the floor `ε`: the
    /// one-pool reference was not below it, and excess ratios over it are
    /// the floor's.
    pub reference_not_below: bool,
    /// The learned policy under wrr: p99, ms.
    pub learned_wrr_p99_ms: Option<f64>,
    /// `least_conn`'s p99, ms.
    pub least_conn_p99_ms: Option<f64>,
    /// Learned excess / best built-in excess ([`excess_ratio`]).
    pub over_best: Option<f64>,
    /// Learned p99 / best built-in p99.
    pub p99_over_best: Option<f64>,
    /// Learned excess / equal-weight p2c excess ([`excess_ratio`]).
    pub over_equal: Option<f64>,
    /// Learned wrr p99 / least_conn p99.
    pub wrr_over_least_conn: Option<f64>,
}

/// The target quantities of one seed from its [`seed_stats`]; `None` when
/// it has no one-pool reference or no built-in ran.
pub fn seed_verdict(seed: u64, stats: &[BalancerStats]) -> Option<SeedVerdict> {
    let get = |name: &str| stats.iter().find(|s| s.balancer == name);
    let pool = get(ONE_POOL)?;
    let eps = EXCESS_FLOOR * pool.p99_ms;
    let builtins: Vec<&BalancerStats> = stats
        .iter()
        .filter(|s| BLIND_BUILTINS.contains(&s.balancer.as_str()))
        .collect();
    let best = builtins
        .iter()
        .min_by(|a, b| a.excess_ms.total_cmp(&b.excess_ms))?;
    let best_p99 = builtins
        .iter()
        .map(|s| s.p99_ms)
        .fold(f64::INFINITY, f64::min);
    let learned = get(LEARNED_P2C);
    let equal = get(EQUAL_P2C);
    let wrr = get(LEARNED_WRR);
    let lc = get("least_conn");
    Some(SeedVerdict {
        seed,
        one_pool_p99_ms: pool.p99_ms,
        best_builtin: best.balancer.clone(),
        best_builtin_excess_ms: best.excess_ms,
        best_builtin_p99_ms: best_p99,
        learned_excess_ms: learned.map(|s| s.excess_ms),
        learned_p99_ms: learned.map(|s| s.p99_ms),
        equal_p2c_excess_ms: equal.map(|s| s.excess_ms),
        equal_p2c_p99_ms: equal.map(|s| s.p99_ms),
        p99_over_equal: learned.zip(equal).map(|(l, e)| l.p99_ms / e.p99_ms),
        reference_not_below: best.excess_ms <= eps,
        learned_wrr_p99_ms: wrr.map(|s| s.p99_ms),
        least_conn_p99_ms: lc.map(|s| s.p99_ms),
        over_best: learned.map(|l| excess_ratio(l.excess_ms, best.excess_ms, eps)),
        p99_over_best: learned.map(|l| l.p99_ms / best_p99),
        over_equal: learned
            .zip(equal)
            .map(|(l, e)| excess_ratio(l.excess_ms, e.excess_ms, eps)),
        wrr_over_least_conn: wrr.zip(lc).map(|(w, l)| w.p99_ms / l.p99_ms),
    })
}

/// One of the targets over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What is measured, one line.
    pub name: String,
    /// Its value over the seeds (`None`: no seed had the quantity).
    pub value: Option<f64>,
    /// The target: the value must be at most this.
    pub limit: f64,
    /// Seeds that had the quantity.
    pub seeds: usize,
    /// Seeds whose own value is above the limit.
    pub seeds_over: Vec<u64>,
}

impl Target {
    /// Met: there is a value and it is at most the limit.
    pub fn met(&self) -> bool {
        self.value.is_some_and(|v| v <= self.limit)
    }

    /// `met` or `missed by X (Y× the limit)`, or `not measured`.
    pub fn verdict(&self) -> String {
        match self.value {
            None => "not measured (no learned policy)".to_string(),
            Some(v) if v <= self.limit => "met".to_string(),
            Some(v) => format!(
                "**missed** by {:.2} ({:.2}x the limit)",
                v - self.limit,
                v / self.limit
            ),
        }
    }
}

fn target(
    verdicts: &[SeedVerdict],
    name: &str,
    limit: f64,
    of: impl Fn(&SeedVerdict) -> Option<f64>,
    over: impl Fn(&[f64]) -> f64,
) -> Target {
    let pairs: Vec<(u64, f64)> = verdicts
        .iter()
        .filter_map(|v| of(v).map(|x| (v.seed, x)))
        .collect();
    let values: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    Target {
        name: name.to_string(),
        value: (!values.is_empty()).then(|| over(&values)),
        limit,
        seeds: values.len(),
        seeds_over: pairs.iter().filter(|p| p.1 > limit).map(|p| p.0).collect(),
    }
}

fn worst(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The five targets over the seeds' verdicts:
///
/// 1. median over seeds of learned excess / best built-in excess <= 0.5;
/// 2. its worst seed <= 1.0;
/// 3. learned p99 / best built-in p99 on every seed <= 1.05;
/// 4. median over seeds of learned excess / equal-weight p2c excess <= 0.8;
/// 5. learned `choose=wrr` p99 / `least_conn` p99 on every seed <= 2.
pub fn targets(verdicts: &[SeedVerdict]) -> Vec<Target> {
    vec![
        target(
            verdicts,
            "learned (p2c) excess / best built-in excess, median over seeds",
            0.5,
            |v| v.over_best,
            median,
        ),
        target(
            verdicts,
            "learned (p2c) excess / best built-in excess, worst seed",
            1.0,
            |v| v.over_best,
            worst,
        ),
        target(
            verdicts,
            "learned (p2c) p99 / best built-in p99, worst seed",
            1.05,
            |v| v.p99_over_best,
            worst,
        ),
        target(
            verdicts,
            "learned (p2c) excess / equal-weight p2c excess, median over seeds",
            0.8,
            |v| v.over_equal,
            median,
        ),
        target(
            verdicts,
            "learned (wrr) p99 / least_conn p99, worst seed",
            2.0,
            |v| v.wrr_over_least_conn,
            worst,
        ),
    ]
}

/// Short description of a generated scenario for a table cell.
pub fn describe(g: &GeneratedScenario) -> String {
    let workers: Vec<String> = g.peers.iter().map(|p| p.workers.to_string()).collect();
    let affected = match g.affected {
        None => "none".to_string(),
        Some(a) => format!("{} #{}", a.affliction.name(), a.peer + 1),
    };
    let kind = serde_json::to_value(g.service_kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let profile = match g.profile {
        crate::generate::Profile::Constant => "const",
        crate::generate::Profile::DayNight => "day/night",
    };
    format!(
        "{} workers, {kind}, {affected}, {:.0}% {profile}, {} type{}",
        workers.join("/"),
        g.load * 100.0,
        g.request_types.len(),
        if g.request_types.len() == 1 { "" } else { "s" }
    )
}

/// Column label of a balancer in the tables.
pub fn label(balancer: &str) -> &str {
    match balancer {
        "round_robin" => "round robin",
        "least_conn" => "least_conn",
        "least_conn_capacity" => "least_conn, capacity weights",
        "random_two_least_conn" => "random two least_conn",
        "least_time" => "least_time header",
        EQUAL_P2C => "deep_sched p2c, equal weights",
        "deep_sched_oracle_p2c" => "capacity oracle (deep_sched p2c)",
        LEARNED_P2C => "learned, p2c",
        LEARNED_WRR => "learned, wrr",
        ONE_POOL => "one-pool p99",
        other => other,
    }
}

fn ms(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".to_string(), |v| format!("{v:.2}"))
}

/// The markdown of `results/heldout/heldout.md` (and, with `section`,
/// BENCHMARKS.md's `## held-out scenarios`): settings, the targets with
/// met / missed, per seed the verdict quantities and per balancer the
/// excess (median and spread over repetitions).
pub fn render_markdown(
    results: &[SeedResult],
    command: &str,
    section: bool,
    notes: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let h = if section { "###" } else { "##" };
    if section {
        md.push_str("## held-out scenarios\n\n");
    } else {
        md.push_str("# Held-out scenarios (issue #13)\n\n");
    }
    let _ = writeln!(md, "Command: `{command}`\n");
    if let Some(first) = results.first() {
        let seeds: Vec<String> = results.iter().map(|r| r.seed.to_string()).collect();
        let _ = writeln!(
            md,
            "{} seeds ({}), {} repetitions of {:.0} s per balancer, interleaved (order rotated per repetition), \
             exploration {:.0} s, nginx {}. \
             Tails are the **excess** of p99 over the one-pool reference's p99 in the same repetition, \
             median over repetitions [min–max]; ratios floor an excess at {:.0}% of the one-pool p99. \
             With a noisy or degrading peer (†) the one-pool reference is every worker at nominal speed, a lower bound. \
             Best built-in: the best of {} (no knowledge of the system; least_conn with true-capacity weights is an oracle, shown apart).\n",
            results.len(),
            seeds.join(", "),
            first.reps,
            first.duration_s,
            first.explore_s,
            first.nginx,
            EXCESS_FLOOR * 100.0,
            BLIND_BUILTINS
                .iter()
                .filter(|b| results.iter().any(|r| r.runs.iter().any(|x| x.balancer == **b)))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(notes) = notes.map(str::trim).filter(|n| !n.is_empty()) {
        let _ = writeln!(md, "{notes}\n");
    }
    let verdicts: Vec<SeedVerdict> = results
        .iter()
        .filter_map(|r| seed_verdict(r.seed, &seed_stats(&r.runs)))
        .collect();
    let _ = writeln!(md, "{h} Targets\n");
    md.push_str("| target | value | limit | seeds | seeds over the limit | verdict |\n|---|---:|---:|---:|---|---|\n");
    for t in targets(&verdicts) {
        let over: Vec<String> = t.seeds_over.iter().map(u64::to_string).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            t.name,
            opt(t.value),
            t.limit,
            t.seeds,
            if over.is_empty() {
                "none".to_string()
            } else {
                format!("{} ({})", over.len(), over.join(", "))
            },
            t.verdict()
        );
    }
    {
        let flagged: Vec<String> = verdicts
            .iter()
            .filter(|v| v.reference_not_below)
            .map(|v| v.seed.to_string())
            .collect();
        let stat = |f: &dyn Fn(&SeedVerdict) -> Option<f64>| {
            let xs: Vec<f64> = verdicts.iter().filter_map(f).collect();
            if xs.is_empty() {
                "–".to_string()
            } else {
                format!("median {:.2}, worst {:.2}", median(&xs), worst(&xs))
            }
        };
        let _ = writeln!(
            md,
            "\nSeeds where the best built-in's excess is at or below the floor (the one-pool reference was not below it, \
             so excess ratios there compare against the floor): {} of {}{}. \
             Ratios of p99s, which need no reference: learned (p2c) ÷ best built-in {}; learned (p2c) ÷ equal-weight p2c {}.",
            flagged.len(),
            verdicts.len(),
            if flagged.is_empty() {
                String::new()
            } else {
                format!(" ({})", flagged.join(", "))
            },
            stat(&|v| v.p99_over_best),
            stat(&|v| v.p99_over_equal),
        );
    }
    let _ = writeln!(md, "\n{h} Per seed\n");
    md.push_str(
        "| seed | scenario | one-pool p99 | best built-in (excess) | learned p2c excess | ÷ best | p99 ÷ best p99 | equal-p2c excess | learned ÷ equal | wrr p99 ÷ least_conn |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let Some(v) = verdicts.iter().find(|v| v.seed == r.seed) else {
            let _ = writeln!(
                md,
                "| {} | {} | no one-pool run | | | | | | | |",
                r.seed,
                describe(&r.scenario)
            );
            continue;
        };
        let _ = writeln!(
            md,
            "| {}{} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
            r.seed,
            if r.one_pool_exact { "" } else { " †" },
            describe(&r.scenario),
            ms(v.one_pool_p99_ms),
            label(&v.best_builtin),
            ms(v.best_builtin_excess_ms),
            v.learned_excess_ms.map_or("–".into(), ms),
            opt(v.over_best),
            opt(v.p99_over_best),
            v.equal_p2c_excess_ms.map_or("–".into(), ms),
            opt(v.over_equal),
            opt(v.wrr_over_least_conn),
        );
    }
    // every balancer's excess
    let mut names: Vec<String> = Vec::new();
    for r in results {
        for x in &r.runs {
            if x.balancer != ONE_POOL && !names.contains(&x.balancer) {
                names.push(x.balancer.clone());
            }
        }
    }
    let _ = writeln!(
        md,
        "\n{h} Excess over the one-pool p99, ms: median [min–max] over repetitions\n"
    );
    md.push_str("| seed |");
    for n in &names {
        let _ = write!(md, " {} |", label(n));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(names.len()));
    md.push('\n');
    for r in results {
        let stats = seed_stats(&r.runs);
        let _ = write!(
            md,
            "| {}{} |",
            r.seed,
            if r.one_pool_exact { "" } else { " †" }
        );
        for n in &names {
            match stats.iter().find(|s| &s.balancer == n) {
                Some(s) => {
                    let _ = write!(
                        md,
                        " {} [{}–{}]{} |",
                        ms(s.excess_ms),
                        ms(s.excess_min_ms),
                        ms(s.excess_max_ms),
                        if s.errors > 0.0 {
                            format!(", {:.0} err", s.errors)
                        } else {
                            String::new()
                        }
                    );
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.learn_error.as_ref().map(|e| format!("- {}: {e}", r.seed)))
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nLearning failed (no learned policy on these seeds):\n"
        );
        md.push_str(&failed.join("\n"));
        md.push('\n');
    }
    md
}

/// Reads every `G<seed>.json` of `dir`, in seed order.
pub fn read_results(dir: &Path) -> Result<Vec<SeedResult>, String> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('G') && name.ends_with(".json") {
            let path = e.path();
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let r: SeedResult = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a held-out seed result: {e}", path.display()))?;
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.seed);
    Ok(out)
}

/// Writes `dir/G<seed>.json`.
pub fn write_result(dir: &Path, result: &SeedResult) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("G{}.json", result.seed));
    let text = serde_json::to_string_pretty(result).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Writes `dir/heldout.md` and `dir/section.md` (BENCHMARKS.md's section)
/// from every seed result in `dir`; `dir/NOTES.md`, when there, is put
/// under the settings (what the numbers cannot say: the machine, what
/// else ran, what was seen).
pub fn write_reports(dir: &Path, command: &str) -> Result<Vec<SeedResult>, String> {
    let results = read_results(dir)?;
    let notes = std::fs::read_to_string(dir.join("NOTES.md")).ok();
    for (name, section) in [("heldout.md", false), ("section.md", true)] {
        let path = dir.join(name);
        std::fs::write(
            &path,
            render_markdown(&results, command, section, notes.as_deref()),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Affected;

    fn run(balancer: &str, rep: usize, p99: f64) -> RunRecord {
        RunRecord {
            balancer: balancer.to_string(),
            rep,
            position: 0,
            p50_ms: p99 / 4.0,
            p99_ms: p99,
            p999_ms: p99 * 2.0,
            rps: 100.0,
            errors: 0,
            shares: vec![0.5, 0.5],
        }
    }

    /// Three repetitions, p99s per balancer; the one-pool is 40, 50, 60.
    fn three_reps(rows: &[(&str, [f64; 3])]) -> Vec<RunRecord> {
        let mut runs = Vec::new();
        for rep in 0..3 {
            runs.push(run(ONE_POOL, rep, [40.0, 50.0, 60.0][rep]));
            for (name, p99) in rows {
                runs.push(run(name, rep, p99[rep]));
            }
        }
        runs
    }

    #[test]
    fn seeds_resolve_from_the_lists_a_comma_list_or_a_file() {
        let held = resolve_seeds("heldout").unwrap();
        assert_eq!(held.len(), 16);
        assert_eq!(held[0], 1001);
        let tuning = resolve_seeds("tuning").unwrap();
        assert!(tuning.iter().all(|s| !held.contains(s)));
        assert_eq!(resolve_seeds("3,7").unwrap(), vec![3, 7]);
        assert_eq!(resolve_seeds("5").unwrap(), vec![5]);
        let e = resolve_seeds("3,3").unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
        let e = resolve_seeds("/no/such/list").unwrap_err();
        assert!(e.contains("\"/no/such/list\""), "{e}");
        let dir = std::env::temp_dir().join(format!("ho-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.txt");
        std::fs::write(&f, "# c\n11\n\n12\n").unwrap();
        assert_eq!(resolve_seeds(f.to_str().unwrap()).unwrap(), vec![11, 12]);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(resolve_seeds(f.to_str().unwrap())
            .unwrap_err()
            .contains("no seeds"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn with_affliction(affliction: Option<Affliction>) -> GeneratedScenario {
        let mut g = generate(1);
        g.peers.truncate(2);
        g.peers[0].capacity_rps = 800.0;
        g.peers[1].capacity_rps = 400.0;
        g.affected = affliction.map(|affliction| Affected {
            peer: 1,
            affliction,
        });
        g
    }

    #[test]
    fn true_capacity_is_time_averaged() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let caps = true_capacities(&with_affliction(None));
        assert_eq!(caps, vec![800.0, 400.0]);
        assert_eq!(
            true_capacities(&with_affliction(Some(Affliction::Small))),
            caps
        );
        // noisy: x4 slower a quarter of the time: 400 * (0.75 + 0.25 / 4)
        let noisy = true_capacities(&with_affliction(Some(Affliction::Noisy {
            factor: 4.0,
            period_s: 20.0,
            slow_for_s: 5.0,
        })));
        assert!(close(noisy[0], 800.0));
        assert!(close(noisy[1], 400.0 * 0.8125), "{noisy:?}");
        // degrading x3 from 20% to 60%: 0.2 + 0.4 ln3/2 + 0.4/3
        let deg = true_capacities(&with_affliction(Some(Affliction::Degrading {
            factor: 3.0,
            from: 0.2,
            to: 0.6,
        })));
        let want = 0.2 + 0.4 * 3f64.ln() / 2.0 + 0.4 / 3.0;
        assert!(close(deg[1], 400.0 * want), "{deg:?}");
        // the integral itself, numerically (midpoint rule)
        let n = 100_000;
        let numeric: f64 = (0..n)
            .map(|i| {
                let t = (i as f64 + 0.5) / n as f64;
                let m = if t < 0.2 {
                    1.0
                } else if t < 0.6 {
                    1.0 + 2.0 * (t - 0.2) / 0.4
                } else {
                    3.0
                };
                1.0 / m
            })
            .sum::<f64>()
            / n as f64;
        assert!((numeric - want).abs() < 1e-6, "{numeric} vs {want}");
    }

    #[test]
    fn capacity_weights_are_proportional_and_in_range() {
        assert_eq!(
            capacity_weights(&[800.0, 400.0, 200.0]),
            vec![1000, 500, 250]
        );
        assert_eq!(capacity_weights(&[1.0, 1e-9]), vec![1000, 1]);
        assert_eq!(capacity_weights(&[0.0, 0.0]), vec![1, 1]);
        assert_eq!(capacity_weights(&[]), Vec::<u32>::new());
        assert_eq!(
            true_capacity_weights(&with_affliction(Some(Affliction::Small))),
            vec![1000, 500]
        );
    }

    #[test]
    fn balancer_list_follows_what_is_available() {
        let g = with_affliction(None);
        let names = |a: Available, p: Option<&Path>| -> Vec<&'static str> {
            heldout_balancers(&g, a, p)
                .iter()
                .map(Balancer::name)
                .collect()
        };
        let none = Available {
            least_time: false,
            module: false,
        };
        assert_eq!(
            names(none, None),
            [
                ONE_POOL,
                "round_robin",
                "least_conn",
                "least_conn_capacity",
                "random_two_least_conn"
            ]
        );
        let all = Available {
            least_time: true,
            module: true,
        };
        let full = names(all, Some(Path::new("/p.json")));
        assert_eq!(full.len(), 10);
        for n in [
            "least_time",
            EQUAL_P2C,
            "deep_sched_oracle_p2c",
            LEARNED_P2C,
            LEARNED_WRR,
        ] {
            assert!(full.contains(&n), "{n}: {full:?}");
        }
        // without a policy: no learned balancers
        assert_eq!(names(all, None).len(), 8);
        let list = heldout_balancers(&g, all, None);
        let oracle = list
            .iter()
            .find(|b| b.name() == "deep_sched_oracle_p2c")
            .unwrap();
        assert_eq!(oracle.server_weights(), Some(&[1000, 500][..]));
    }

    #[test]
    fn repetitions_rotate_the_order() {
        let l = [1, 2, 3];
        assert_eq!(rotated(&l, 0), vec![1, 2, 3]);
        assert_eq!(rotated(&l, 1), vec![2, 3, 1]);
        assert_eq!(rotated(&l, 4), vec![2, 3, 1]);
        assert!(rotated::<u8>(&[], 2).is_empty());
    }

    #[test]
    fn the_pool_of_a_slow_peer_scenario_is_at_nominal_speed() {
        for seed in 1..40 {
            let s = generate(seed).scenario();
            let (pool, exact) = pool_scenario(&s);
            assert_eq!(exact, s.one_pool().is_some(), "G{seed}");
            let one = pool.one_pool().expect("always a pool");
            assert_eq!(
                one[0].workers,
                s.backends.iter().map(|b| b.workers).sum::<usize>()
            );
            assert!((pool.capacity_rps() - s.capacity_rps()).abs() < 1e-9);
        }
    }

    #[test]
    fn excess_is_over_the_pool_of_the_same_repetition() {
        let runs = three_reps(&[
            ("least_conn", [50.0, 70.0, 61.0]),
            ("x", [40.0, 49.0, 90.0]),
        ]);
        let stats = seed_stats(&runs);
        assert_eq!(stats[0].balancer, ONE_POOL);
        assert_eq!(stats[0].excess_ms, 0.0);
        let lc = &stats[1];
        // excesses 10, 20, 1
        assert_eq!(
            (lc.excess_ms, lc.excess_min_ms, lc.excess_max_ms),
            (10.0, 1.0, 20.0)
        );
        assert_eq!(lc.p99_ms, 61.0);
        assert_eq!(lc.runs, 3);
        let x = &stats[2];
        assert_eq!(
            (x.excess_ms, x.excess_min_ms, x.excess_max_ms),
            (0.0, -1.0, 30.0)
        );
        // a repetition without its pool run does not count in the excess
        let partial: Vec<RunRecord> = runs
            .into_iter()
            .filter(|r| !(r.balancer == ONE_POOL && r.rep == 2))
            .collect();
        let lc = seed_stats(&partial)[1].clone();
        assert_eq!((lc.runs, lc.excess_ms), (2, 15.0));
        assert!(seed_stats(&[run("least_conn", 0, 9.0)]).is_empty());
    }

    #[test]
    fn ratios_floor_tiny_excesses() {
        assert_eq!(excess_ratio(10.0, 20.0, 0.5), 0.5);
        assert_eq!(excess_ratio(-3.0, 20.0, 0.5), 0.025);
        assert_eq!(excess_ratio(10.0, 0.0, 0.5), 20.0);
        assert_eq!(excess_ratio(0.0, 0.0, 0.5), 1.0);
    }

    #[test]
    fn verdict_of_made_up_numbers() {
        // pool 40/50/60 (median 50, ε = 0.5 ms)
        let runs = three_reps(&[
            ("round_robin", [400.0, 500.0, 600.0]),
            ("least_conn", [60.0, 70.0, 80.0]), // excess 20
            ("least_time", [52.0, 62.0, 72.0]), // excess 12, p99 62
            ("least_conn_capacity", [41.0, 51.0, 61.0]), // oracle: not a built-in
            (EQUAL_P2C, [56.0, 66.0, 76.0]),    // excess 16
            (LEARNED_P2C, [46.0, 56.0, 66.0]),  // excess 6, p99 56
            (LEARNED_WRR, [130.0, 150.0, 170.0]), // p99 150
        ]);
        let v = seed_verdict(7, &seed_stats(&runs)).unwrap();
        assert_eq!(v.best_builtin, "least_time");
        assert_eq!(v.best_builtin_excess_ms, 12.0);
        assert_eq!(v.best_builtin_p99_ms, 62.0);
        assert_eq!(v.one_pool_p99_ms, 50.0);
        assert_eq!(v.over_best, Some(0.5));
        assert!((v.p99_over_best.unwrap() - 56.0 / 62.0).abs() < 1e-12);
        assert_eq!(v.over_equal, Some(6.0 / 16.0));
        assert_eq!(v.wrr_over_least_conn, Some(150.0 / 70.0));
        assert_eq!(v.p99_over_equal, Some(56.0 / 66.0));
        assert!(!v.reference_not_below);
        // every balancer at or below the pool: the reference is not below
        let under = three_reps(&[("least_conn", [40.2, 49.0, 60.0])]);
        assert!(
            seed_verdict(6, &seed_stats(&under))
                .unwrap()
                .reference_not_below
        );
        // no learned policy: only the built-in side
        let bare = three_reps(&[("least_conn", [60.0, 70.0, 80.0])]);
        let v = seed_verdict(8, &seed_stats(&bare)).unwrap();
        assert_eq!(
            (v.over_best, v.over_equal, v.wrr_over_least_conn),
            (None, None, None)
        );
        // no built-in, or no pool: no verdict
        assert!(seed_verdict(9, &seed_stats(&three_reps(&[(LEARNED_P2C, [1.0; 3])]))).is_none());
    }

    fn verdict(seed: u64, over_best: f64, p99: f64, over_equal: f64, wrr: f64) -> SeedVerdict {
        SeedVerdict {
            seed,
            one_pool_p99_ms: 50.0,
            best_builtin: "least_conn".into(),
            best_builtin_excess_ms: 10.0,
            best_builtin_p99_ms: 60.0,
            learned_excess_ms: Some(10.0 * over_best),
            learned_p99_ms: Some(60.0 * p99),
            equal_p2c_excess_ms: Some(10.0),
            equal_p2c_p99_ms: Some(60.0),
            p99_over_equal: Some(p99),
            reference_not_below: false,
            learned_wrr_p99_ms: Some(wrr * 60.0),
            least_conn_p99_ms: Some(60.0),
            over_best: Some(over_best),
            p99_over_best: Some(p99),
            over_equal: Some(over_equal),
            wrr_over_least_conn: Some(wrr),
        }
    }

    #[test]
    fn targets_of_made_up_numbers() {
        let vs = [
            verdict(1, 0.2, 0.90, 0.5, 1.0),
            verdict(2, 0.4, 1.00, 0.7, 1.5),
            verdict(3, 0.6, 1.04, 0.9, 1.9),
        ];
        let t = targets(&vs);
        assert_eq!(t.len(), 5);
        let values: Vec<f64> = t.iter().map(|t| t.value.unwrap()).collect();
        assert_eq!(values, [0.4, 0.6, 1.04, 0.7, 1.9]);
        assert!(t.iter().all(Target::met), "{t:?}");
        assert_eq!(t[0].seeds_over, vec![3], "seed 3 alone is over 0.5");
        assert!(t[1].seeds_over.is_empty());
        assert_eq!(t[0].verdict(), "met");
        // a bad seed: the worst-case targets miss, the medians hold
        let vs = [
            verdict(1, 0.2, 0.90, 0.5, 1.0),
            verdict(2, 0.4, 1.00, 0.7, 1.5),
            verdict(3, 1.6, 1.26, 2.0, 10.7),
        ];
        let t = targets(&vs);
        assert!(t[0].met() && t[3].met());
        assert!(!t[1].met() && !t[2].met() && !t[4].met());
        assert_eq!(t[1].verdict(), "**missed** by 0.60 (1.60x the limit)");
        assert_eq!(t[2].verdict(), "**missed** by 0.21 (1.20x the limit)");
        assert_eq!(t[4].seeds_over, vec![3]);
        assert_eq!(t[4].verdict(), "**missed** by 8.70 (5.35x the limit)");
        // nothing learned: not measured, not met
        let none = targets(&[]);
        assert!(none.iter().all(|t| t.value.is_none() && !t.met()));
        assert!(none[0].verdict().starts_with("not measured"));
    }

    #[test]
    fn markdown_states_the_targets_and_round_trips_through_json() {
        let runs = three_reps(&[
            ("least_conn", [60.0, 70.0, 80.0]),
            (EQUAL_P2C, [56.0, 66.0, 76.0]),
            (LEARNED_P2C, [70.0, 80.0, 90.0]),
            (LEARNED_WRR, [130.0, 150.0, 170.0]),
        ]);
        let result = SeedResult {
            seed: 1001,
            scenario: generate(1001),
            one_pool_exact: false,
            capacity_weights: true_capacity_weights(&generate(1001)),
            duration_s: 5.0,
            reps: 3,
            explore_s: 30.0,
            nginx: "1.31.4".into(),
            learn_error: None,
            runs,
        };
        let dir = std::env::temp_dir().join(format!("ho-md-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_result(&dir, &result).unwrap();
        let back = write_reports(&dir, "scripts/lab-heldout.sh --quick").unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].runs, result.runs);
        let md = std::fs::read_to_string(dir.join("heldout.md")).unwrap();
        assert!(
            md.contains("Command: `scripts/lab-heldout.sh --quick`"),
            "{md}"
        );
        // learned excess 30 over least_conn's 20: 1.5, missed by 1.0
        assert!(
            md.contains("| 1.50 | 0.5 | 1 | 1 (1001) | **missed** by 1.00 (3.00x the limit) |"),
            "{md}"
        );
        assert!(md.contains("| 1001 † |"), "{md}");
        let section = std::fs::read_to_string(dir.join("section.md")).unwrap();
        assert!(section.starts_with("## held-out scenarios\n"), "{section}");
        assert!(section.contains("### Targets"));
        assert!(!md.contains("a note"));
        std::fs::write(dir.join("NOTES.md"), "a note\n").unwrap();
        write_reports(&dir, "c").unwrap();
        for f in ["heldout.md", "section.md"] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(text.contains("\na note\n\n"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
