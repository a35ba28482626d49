//! The learning pipeline: observations → standardised features → GMM
//! states → transition model under each action → solved table → policy.
//!
//! **Action space.** An action is a weight per peer of every upstream of the
//! agent. Joint actions grow as `|W|^(peers)` — 3 upstreams × 3 peers with
//! weights {1,3,5} give 27³ = 19,683 — far more than any log visits. The
//! problem is therefore factorised per upstream: each upstream `u` has its
//! own action set (the weight vectors explored on it, ≤ 27), its own reward
//! (the expression evaluated on `u`'s next interval) and shares the agent's
//! state. One MDP per upstream is solved and the per-upstream choices are
//! combined into the joint action stored in the table. With one upstream
//! this is the plain MDP.
//!
//! **Conservatism.** Only actions taken at least `min_visits` times in a
//! state may be chosen there; a state where none qualifies (or an
//! observation out of distribution) gets action 0, the fallback: per
//! upstream the weights with the best mean reward over the whole log
//! (equal weights when nothing was tried often enough).
//!
//! **Anchoring.** Weight vectors are pooled by their ratios ([`canonical`]).
//! Equal weights are the baseline: another vector is allowed in a state
//! only if its mean reward there beats equal weights' by a margin that
//! shrinks with the visits of both ([`Mdp::anchor`], `anchor` = κ). On
//! identical peers no vector passes and the table keeps equal weights;
//! a weak peer's lower weight passes once the log shows it.
//!
//! **Few samples.** A state needs data: with fewer than 10 intervals per
//! requested state, K is lowered to `n / 10` (at least 2) and the summary
//! says so.

use std::path::PathBuf;

use deep_sched_core::counters::{AgentInterval, PeerCounters};
use deep_sched_core::features::{AgentShape, FeatureSet, Standardization, UpstreamShape};
use deep_sched_core::gmm::CovarianceKind;
use deep_sched_core::policy::{
    ActionDocument, AgentDocument, CovarianceType, GmmDocument, PerComponent, PolicyDocument,
    Scaling, POLICY_FORMAT, POLICY_VERSION,
};

use crate::em::{fit, FittedGmm, GmmParams};
use crate::mdp::{q_learning, traffic_shares, LinUcb, Mdp, Transition};
use crate::reader::{read_samples, read_vts, Observation, ReadError, ReadStats};
use crate::reward::Expr;

/// How the table is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    ValueIteration,
    PolicyIteration,
    QLearning,
    Bandit,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ValueIteration => "value-iteration",
            Algorithm::PolicyIteration => "policy-iteration",
            Algorithm::QLearning => "q-learning",
            Algorithm::Bandit => "bandit",
        }
    }
}

/// How many states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum States {
    Fixed(usize),
    /// The K of the lowest BIC among these candidates.
    Auto,
}

/// Candidate state counts for `--states auto`.
pub const AUTO_STATES: [usize; 8] = [2, 3, 4, 6, 9, 12, 18, 27];

/// Everything `learn` needs besides the input files.
#[derive(Debug, Clone)]
pub struct LearnOptions {
    pub states: States,
    pub covariance: CovarianceKind,
    pub algorithm: Algorithm,
    pub reward: String,
    pub seed: u64,
    pub skip_bad: bool,
    pub vts: bool,
    pub interval_ms: Option<u64>,
    pub created: String,
    pub gamma: f64,
    pub smoothing: f64,
    pub min_visits: u64,
    /// Weight `β` of the lower confidence bound on rewards (0: plain means).
    pub pessimism: f64,
    /// Weight `κ` of the test against equal weights ([`Mdp::anchor`]; 0: off).
    pub anchor: f64,
    /// Let a model of reward in the peers' traffic shares, fitted across
    /// all weight vectors of a state, pass actions the per-vector test
    /// refused ([`Mdp::admit_by_share_model`]).
    pub share_model: bool,
    pub reg_covar: f64,
    pub tol: f64,
    pub max_iter: usize,
    pub n_init: usize,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            states: States::Fixed(27),
            covariance: CovarianceKind::Full,
            algorithm: Algorithm::ValueIteration,
            reward: "-p95_ms - 1000*error_rate".into(),
            seed: 0,
            skip_bad: false,
            vts: false,
            interval_ms: None,
            created: "1970-01-01T00:00:00Z".into(),
            gamma: 0.8,
            smoothing: 0.1,
            min_visits: 2,
            pessimism: 1.0,
            anchor: 3.0,
            share_model: true,
            reg_covar: 1e-3,
            tol: 1e-4,
            max_iter: 200,
            n_init: 2,
        }
    }
}

/// Why learning failed.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Reward(#[from] crate::reward::RewardError),
    #[error(transparent)]
    Params(#[from] crate::em::ParamError),
    #[error("the learned policy does not validate: {0}")]
    Invalid(#[from] deep_sched_core::policy::PolicyError),
    #[error("{0}")]
    Data(String),
    #[error("--{0}")]
    Option(String),
}

/// What the pipeline keeps of the intervals once read: a few numbers per
/// interval in flat columns (index `t`, or `t·U + u` per upstream), no
/// allocation per interval. With the feature matrix (`8·D` bytes per
/// interval) this is all the memory that grows with the log.
#[derive(Debug, Default)]
struct Rows {
    time_ms: Vec<u64>,
    interval_ms: Vec<u64>,
    /// The reward expression on each upstream's interval.
    reward: Vec<f64>,
    /// Each upstream's p95 (ms), error rate and requests/s.
    p95: Vec<f64>,
    err: Vec<f64>,
    rps: Vec<f64>,
    /// Weights chosen at the end of the interval: index into the
    /// upstream's catalogue in order of first appearance, or [`NO_ACTION`].
    next: Vec<u32>,
    /// Mean in-flight requests per peer.
    inflight_per_peer: Vec<f64>,
    /// Per upstream, the weight vectors seen, in order of first appearance.
    catalogue: Vec<Vec<Vec<u32>>>,
    index: Vec<std::collections::HashMap<Vec<u32>, u32>>,
}

/// `Rows::next` of an interval whose next weights are unknown.
const NO_ACTION: u32 = u32::MAX;

/// The anchor's test against equal weights (`b`), with the share model's
/// second chance when `opts.share_model` is on.
fn anchored(
    mdp: Mdp,
    data: &[Transition],
    b: usize,
    shares: &[Vec<f64>],
    opts: &LearnOptions,
) -> Mdp {
    let mdp = mdp.anchor(data, b, opts.anchor, opts.min_visits);
    if opts.share_model {
        mdp.admit_by_share_model(data, b, opts.anchor, opts.min_visits, shares)
    } else {
        mdp
    }
}

/// A weight vector divided by the greatest common divisor of its entries.
/// Both per-request choices (smooth weighted round robin and p2c) use
/// weights only through their ratios, so 3/3/3 and 1/1/1 are one action
/// and their intervals are pooled.
pub fn canonical(w: &[u32]) -> Vec<u32> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    match w.iter().fold(0, |g, &x| gcd(g, x)) {
        0 | 1 => w.to_vec(),
        g => w.iter().map(|x| x / g).collect(),
    }
}

impl Rows {
    fn len(&self) -> usize {
        self.time_ms.len()
    }

    fn push(&mut self, o: &Observation, interval: &AgentInterval, reward: &Expr) {
        let nu = interval.upstreams.len();
        if self.catalogue.len() < nu {
            self.catalogue.resize(nu, Vec::new());
            self.index.resize(nu, Default::default());
        }
        self.time_ms.push(o.time_ms);
        self.interval_ms.push(o.interval_ms);
        for (u, i) in interval.upstreams.iter().enumerate() {
            self.reward.push(reward.eval(i));
            self.p95.push(i.latency_p95_ms);
            self.err.push(i.error_rate);
            self.rps.push(i.rps);
            self.next.push(match &o.next_weights {
                None => NO_ACTION,
                Some(w) => {
                    let w = canonical(&w[u]);
                    match self.index[u].get(&w) {
                        Some(&a) => a,
                        None => {
                            let a = self.catalogue[u].len() as u32;
                            self.catalogue[u].push(w.clone());
                            self.index[u].insert(w, a);
                            a
                        }
                    }
                }
            });
        }
        let peers: usize = o.deltas.iter().map(Vec::len).sum();
        let inflight: f64 = interval.peers.iter().flatten().map(|p| p.inflight).sum();
        self.inflight_per_peer.push(inflight / peers.max(1) as f64);
    }
}

/// The outcome of [`learn`].
#[derive(Debug, Clone)]
pub struct Learned {
    pub policy: PolicyDocument,
    pub gmm: FittedGmm,
    /// State of every observation, in input order.
    pub timeline: Vec<usize>,
    /// Human-readable summary.
    pub summary: String,
    pub stats: ReadStats,
    /// The feature set (with standardisation) used.
    pub features: FeatureSet,
}

fn shape_of(deltas: &[Vec<PeerCounters>]) -> AgentShape {
    AgentShape {
        upstreams: deltas
            .iter()
            .enumerate()
            .map(|(u, ps)| UpstreamShape {
                name: format!("u{u}"),
                peers: (0..ps.len()).map(|p| format!("p{p}")).collect(),
            })
            .collect(),
    }
}

/// Features of one observation exactly as the module computes them (core's
/// default feature set, before standardisation).
pub fn raw_features(o: &Observation) -> (Vec<f64>, AgentInterval) {
    let interval = AgentInterval::from_deltas(&o.deltas, o.interval_ms);
    let set = FeatureSet::default_for(&shape_of(&o.deltas));
    let mut x = vec![0.0; set.len()];
    set.raw_into(&interval, &mut x);
    (x, interval)
}

/// Runs the whole pipeline on sample logs (or vts snapshots).
pub fn learn(
    paths: &[PathBuf],
    opts: &LearnOptions,
    mut progress: impl FnMut(&str, usize, f64),
) -> Result<Learned, LearnError> {
    let reward = Expr::parse(&opts.reward)?;
    const AT_LEAST_0: &str = "a number at least 0";
    for (name, v, ok, need) in [
        (
            "gamma",
            opts.gamma,
            (0.0..1.0).contains(&opts.gamma),
            "at least 0 and below 1",
        ),
        (
            "pessimism",
            opts.pessimism,
            opts.pessimism >= 0.0,
            AT_LEAST_0,
        ),
        ("anchor", opts.anchor, opts.anchor >= 0.0, AT_LEAST_0),
        (
            "smoothing",
            opts.smoothing,
            opts.smoothing >= 0.0,
            AT_LEAST_0,
        ),
    ] {
        if !ok || !v.is_finite() {
            return Err(LearnError::Option(format!("{name} {v}: must be {need}")));
        }
    }
    let mut raw: Vec<f64> = Vec::new();
    let mut rows = Rows::default();
    let mut d = 0usize;
    // How often each per-request choice was logged: the policy records the
    // one most of its samples were served with (`provenance.choose`).
    let mut chooses: std::collections::BTreeMap<String, usize> = Default::default();
    let mut capacity = crate::capacity::CapacityData::default();
    let mut sink = |o: Observation| {
        if let Some(c) = &o.choose {
            *chooses.entry(c.clone()).or_default() += 1;
        }
        capacity.push(&o);
        let (x, interval) = raw_features(&o);
        d = x.len();
        raw.extend_from_slice(&x);
        rows.push(&o, &interval, &reward);
        if rows.len().is_multiple_of(10_000) {
            progress("read", rows.len(), 0.0);
        }
    };
    let (shape, stats) = if opts.vts {
        read_vts(paths, opts.skip_bad, &mut sink)?
    } else {
        read_samples(paths, opts.skip_bad, &mut sink)?
    };
    let n = rows.len();
    if n < 10 {
        return Err(LearnError::Data(format!(
            "only {n} usable intervals; need at least 10"
        )));
    }

    // Standardisation.
    let mut mean = vec![0.0; d];
    for x in raw.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(x) {
            *m += v / n as f64;
        }
    }
    let mut std = vec![0.0; d];
    for x in raw.chunks_exact(d) {
        for ((s, v), m) in std.iter_mut().zip(x).zip(&mean) {
            *s += (v - m) * (v - m) / n as f64;
        }
    }
    // A constant feature (an idle peer) keeps std 1 rather than dividing by 0.
    let std: Vec<f64> = std
        .iter()
        .map(|v| if v.sqrt() > 1e-9 { v.sqrt() } else { 1.0 })
        .collect();
    let mut xs = raw;
    for x in xs.chunks_exact_mut(d) {
        for ((v, m), s) in x.iter_mut().zip(&mean).zip(&std) {
            *v = (*v - m) / s;
        }
    }

    // The mixture.
    let params = |k: usize| {
        GmmParams::new(k)
            .covariance(opts.covariance)
            .reg_covar(opts.reg_covar)
            .tol(opts.tol)
            .max_iter(opts.max_iter)
            .n_init(opts.n_init)
            .seed(opts.seed)
            .check(n)
    };
    let gmm = match opts.states {
        States::Fixed(k) => {
            let k = k.min((n / 10).max(2));
            fit(&xs, d, &params(k)?, |it, ll| progress("em", it, ll))
        }
        States::Auto => {
            let mut best: Option<FittedGmm> = None;
            for k in AUTO_STATES.into_iter().filter(|&k| k * 5 <= n) {
                let g = fit(&xs, d, &params(k)?, |it, ll| progress("em", it, ll));
                progress("bic", k, g.bic());
                if best.as_ref().is_none_or(|b| g.bic() < b.bic()) {
                    best = Some(g);
                }
            }
            best.ok_or_else(|| LearnError::Data("too few intervals for --states auto".into()))?
        }
    };
    let k = gmm.weights.len();
    let model = gmm.model();
    let mut out = vec![0.0; k];
    let mut scratch = vec![0.0; model.scratch_len()];
    let mut timeline = Vec::with_capacity(n);
    let mut lls = Vec::with_capacity(n);
    for x in xs.chunks_exact(d) {
        let (s, ll) = model.classify_with(x, &mut out, &mut scratch);
        timeline.push(s);
        lls.push(ll);
    }
    let mut sorted = lls.clone();
    sorted.sort_by(f64::total_cmp);
    let ood = sorted[(n / 1000).min(n - 1)] - 5.0;

    // Actions per upstream.
    let nu = shape.upstreams.len();
    let mut action_sets: Vec<Vec<Vec<u32>>> = rows.catalogue.clone();
    for set in &mut action_sets {
        set.sort();
    }
    // Catalogue index (first appearance) -> index in the sorted set.
    let sorted_index: Vec<Vec<usize>> = (0..nu)
        .map(|u| {
            rows.catalogue[u]
                .iter()
                .map(|w| action_sets[u].binary_search(w).expect("same elements"))
                .collect()
        })
        .collect();
    let action_of = |t: usize, u: usize| -> Option<usize> {
        match rows.next[t * nu + u] {
            NO_ACTION => None,
            a => Some(sorted_index[u][a as usize]),
        }
    };
    // Transitions between consecutive intervals (a gap of more than twice
    // the interval, or a new file, breaks the chain).
    let mut per_upstream: Vec<Vec<Transition>> = vec![Vec::new(); nu];
    for t in 0..n.saturating_sub(1) {
        let (ta, tb) = (rows.time_ms[t], rows.time_ms[t + 1]);
        if action_of(t, 0).is_none()
            || tb <= ta
            || tb - ta > 2 * rows.interval_ms[t + 1].max(1) + 1000
        {
            continue;
        }
        for (u, transitions) in per_upstream.iter_mut().enumerate() {
            transitions.push(Transition {
                s: timeline[t],
                a: action_of(t, u).expect("all upstreams of a record have weights"),
                r: rows.reward[(t + 1) * nu + u],
                s2: timeline[t + 1],
            });
        }
    }
    if per_upstream[0].is_empty() {
        return Err(LearnError::Data(
            "no consecutive intervals with a logged action".into(),
        ));
    }

    // The baseline of every upstream: equal weights, when they were tried.
    let baseline: Vec<usize> = (0..nu)
        .map(|u| {
            let equal = vec![1; shape.upstreams[u].peers.len()];
            action_sets[u].binary_search(&equal).unwrap_or(usize::MAX)
        })
        .collect();

    // Each action's share of traffic per peer, for the share model.
    let shares: Vec<Vec<Vec<f64>>> = action_sets
        .iter()
        .map(|set| set.iter().map(|w| traffic_shares(w)).collect())
        .collect();

    // Action 0, the fallback (states without an allowed action, and
    // observations out of distribution): per upstream, the weight vector
    // with the best mean reward over all logged transitions among those
    // tried at least `min_visits` times (and, when anchoring, better than
    // equal weights by the same test, states ignored); equal weights if
    // none qualifies.
    let neutral: Vec<Vec<u32>> = (0..nu)
        .map(|u| {
            let na = action_sets[u].len();
            let flat: Vec<Transition> = per_upstream[u]
                .iter()
                .map(|t| Transition { s: 0, s2: 0, ..*t })
                .collect();
            let m = anchored(
                Mdp::estimate(1, na, &flat, 0.0, opts.min_visits),
                &flat,
                baseline[u],
                &shares[u],
                opts,
            );
            (0..na)
                .filter(|&a| m.allowed[a])
                .max_by(|&a, &b| m.r[a].total_cmp(&m.r[b]).then(b.cmp(&a)))
                .map_or_else(
                    || vec![1; shape.upstreams[u].peers.len()],
                    |a| action_sets[u][a].clone(),
                )
        })
        .collect();

    // Solve per upstream.
    let mut chosen: Vec<Vec<Option<usize>>> = Vec::with_capacity(nu);
    let mut summary_rows = Vec::new();
    for u in 0..nu {
        let na = action_sets[u].len();
        let data = &per_upstream[u];
        let mdp = anchored(
            Mdp::estimate(k, na, data, opts.smoothing, opts.min_visits),
            data,
            baseline[u],
            &shares[u],
            opts,
        )
        .pessimistic(data, opts.pessimism);
        let (pi, _) = match opts.algorithm {
            Algorithm::ValueIteration => mdp.value_iteration(opts.gamma, 1e-9, 100_000),
            Algorithm::PolicyIteration => mdp.policy_iteration(opts.gamma, 1000),
            Algorithm::QLearning => {
                let (pi, _) = q_learning(k, na, data, opts.gamma, 50);
                // Respect the visit threshold like the model-based solvers.
                let pi = pi
                    .into_iter()
                    .enumerate()
                    .map(|(s, a)| a.filter(|&a| mdp.allowed[s * na + a]))
                    .collect();
                (pi, Vec::new())
            }
            Algorithm::Bandit => {
                // Context: the standardised features (plus a bias term) of
                // the interval in which the action was chosen.
                let mut bandit = LinUcb::new(na, d + 1, 1.0);
                let mut ctx = vec![1.0; d + 1];
                for t in 0..n.saturating_sub(1) {
                    let Some(act) = action_of(t, u) else { continue };
                    ctx[..d].copy_from_slice(&xs[t * d..(t + 1) * d]);
                    bandit.update(&ctx, act, rows.reward[(t + 1) * nu + u]);
                }
                let pi = (0..k)
                    .map(|s| {
                        let mut c = gmm.means[s].clone();
                        c.push(1.0);
                        bandit.best_mean(&c, (0..na).filter(|&a| mdp.allowed[s * na + a]))
                    })
                    .collect();
                (pi, Vec::new())
            }
        };
        let v_pi = mdp.evaluate(&pi, opts.gamma);
        let v_uniform = mdp.evaluate_uniform(opts.gamma);
        let occupancy: Vec<f64> = (0..k)
            .map(|s| timeline.iter().filter(|&&x| x == s).count() as f64 / n as f64)
            .collect();
        let exp = |v: &[f64]| v.iter().zip(&occupancy).map(|(v, o)| v * o).sum::<f64>();
        let seen = mdp.n.iter().filter(|&&c| c > 0).count();
        let allowed = mdp.allowed.iter().filter(|&&a| a).count();
        let equal = pi
            .iter()
            .map(|a| a.map_or(&neutral[u], |a| &action_sets[u][a]))
            .filter(|w| w.iter().all(|&x| x == 1))
            .count();
        summary_rows.push(format!(
            "upstream {}: {} actions, {} transitions, (state, action) pairs seen {seen}/{} ({allowed} allowed: >= {} visits{}); equal weights in {equal}/{k} states; expected discounted reward: policy {:.2}, uniform {:.2} ({:+.1}%)",
            shape.upstreams[u].name,
            na,
            data.len(),
            k * na,
            opts.min_visits,
            match (opts.anchor > 0.0, opts.share_model) {
                (false, _) => "",
                (true, false) => ", better than equal weights",
                (true, true) => ", better than equal weights alone or by the share model",
            },
            exp(&v_pi),
            exp(&v_uniform),
            100.0 * (exp(&v_pi) - exp(&v_uniform)) / exp(&v_uniform).abs().max(1e-9),
        ));
        chosen.push(pi);
    }

    let mut actions = vec![neutral.clone()];
    let mut table = Vec::with_capacity(k);
    // `s` indexes every upstream's choices `chosen[u][s]`.
    #[allow(clippy::needless_range_loop)]
    for s in 0..k {
        let joint: Vec<Vec<u32>> = (0..nu)
            .map(|u| match chosen[u][s] {
                Some(a) => action_sets[u][a].clone(),
                None => neutral[u].clone(),
            })
            .collect();
        let idx = match actions.iter().position(|a| *a == joint) {
            Some(i) => i,
            None => {
                actions.push(joint);
                actions.len() - 1
            }
        };
        table.push(idx);
    }

    // Scaling advice from each state's own intervals.
    let mut p95 = vec![0.0; k];
    let mut err = vec![0.0; k];
    let mut rps = vec![0.0; k];
    let mut infl = vec![0.0; k];
    let mut cnt = vec![0usize; k];
    for (t, &s) in timeline.iter().enumerate() {
        let agg = (t * nu..(t + 1) * nu).fold((0.0, 0.0, 0.0), |acc, i| {
            (
                acc.0 + rows.p95[i] * rows.rps[i],
                acc.1 + rows.err[i] * rows.rps[i],
                acc.2 + rows.rps[i],
            )
        });
        let total = agg.2.max(1e-9);
        p95[s] += agg.0 / total;
        err[s] += agg.1 / total;
        rps[s] += agg.2;
        infl[s] += rows.inflight_per_peer[t];
        cnt[s] += 1;
    }
    for s in 0..k {
        let c = cnt[s].max(1) as f64;
        p95[s] /= c;
        err[s] /= c;
        rps[s] /= c;
        infl[s] /= c;
    }
    let occupied: Vec<usize> = (0..k).filter(|&s| cnt[s] > 0).collect();
    let mut p95s: Vec<f64> = occupied.iter().map(|&s| p95[s]).collect();
    p95s.sort_by(f64::total_cmp);
    let median_p95 = p95s.get(p95s.len() / 2).copied().unwrap_or(0.0);
    let max_rps = occupied.iter().map(|&s| rps[s]).fold(0.0, f64::max);
    let scaling: Vec<Scaling> = (0..k)
        .map(|s| {
            if cnt[s] == 0 {
                Scaling::Hold
            } else if err[s] > 0.05 || p95[s] > 2.0 * median_p95 {
                Scaling::Add
            } else if rps[s] < 0.25 * max_rps && p95[s] <= median_p95 {
                Scaling::Remove
            } else {
                Scaling::Hold
            }
        })
        .collect();

    let interval_ms = opts.interval_ms.unwrap_or_else(|| {
        let mut iv: Vec<u64> = rows.interval_ms.clone();
        iv.sort_unstable();
        iv[iv.len() / 2].clamp(100, 3_600_000)
    });
    let d2 = |c: &Vec<f64>| c.chunks(d).map(|r| r.to_vec()).collect::<Vec<_>>();
    let gmm_doc = GmmDocument {
        covariance: match opts.covariance {
            CovarianceKind::Full => CovarianceType::Full,
            CovarianceKind::Diag => CovarianceType::Diag,
        },
        weights: gmm.weights.clone(),
        means: gmm.means.clone(),
        covariances: Some(match opts.covariance {
            CovarianceKind::Full => {
                PerComponent::Matrices(gmm.covariances.iter().map(d2).collect())
            }
            CovarianceKind::Diag => PerComponent::Vectors(gmm.covariances.clone()),
        }),
        precisions_cholesky: None,
    };
    let set = FeatureSet::default_for(&shape);
    let mut provenance = serde_json::Map::new();
    provenance.insert(
        "learner".into(),
        concat!("deep-sched ", env!("CARGO_PKG_VERSION")).into(),
    );
    provenance.insert("algorithm".into(), opts.algorithm.name().into());
    if let Some((choose, _)) = chooses.iter().max_by_key(|(_, n)| **n) {
        provenance.insert("choose".into(), choose.clone().into());
    }
    provenance.insert("samples".into(), n.into());
    provenance.insert("skipped".into(), stats.skipped.into());
    provenance.insert("created".into(), opts.created.clone().into());
    provenance.insert("reward".into(), opts.reward.clone().into());
    provenance.insert("seed".into(), opts.seed.into());
    provenance.insert("gamma".into(), opts.gamma.into());
    provenance.insert(
        "mean_log_likelihood".into(),
        gmm.mean_log_likelihood().into(),
    );
    provenance.insert("bic".into(), gmm.bic().into());
    // The EM learning curve, for `deep-sched report`.
    provenance.insert(
        "em_log_likelihood".into(),
        gmm.curve
            .iter()
            .map(|x| serde_json::Value::from(*x))
            .collect::<Vec<_>>()
            .into(),
    );
    let policy = PolicyDocument {
        format: POLICY_FORMAT.into(),
        version: POLICY_VERSION,
        interval_ms,
        agent: AgentDocument {
            upstreams: shape.upstreams.clone(),
        },
        features: set.specs.clone(),
        standardization: Standardization {
            mean: mean.clone(),
            std: std.clone(),
        },
        gmm: gmm_doc,
        actions: actions
            .into_iter()
            .map(|weights| ActionDocument { weights })
            .collect(),
        table,
        default_action: 0,
        ood_log_likelihood: Some(ood),
        scaling: Some(scaling.clone()),
        provenance,
    };
    // The emitted document must load exactly as the module will load it.
    policy.clone().validate("learned policy")?;

    let mut summary = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(summary, "intervals: {n} read, {} skipped", stats.skipped);
    let _ =
        writeln!(
        summary,
        "GMM: K={k} {:?}, D={d}, mean log-likelihood {:.4}, BIC {:.1}, AIC {:.1}, {} iterations{}",
        opts.covariance,
        gmm.mean_log_likelihood(),
        gmm.bic(),
        gmm.aic(),
        gmm.curve.len().saturating_sub(1),
        if gmm.converged { "" } else { " (not converged)" }
    );
    let occ: Vec<String> = (0..k).map(|s| format!("{s}:{}", cnt[s])).collect();
    let _ = writeln!(summary, "state occupancy: {}", occ.join(" "));
    for r in &summary_rows {
        let _ = writeln!(summary, "{r}");
    }
    let _ = writeln!(summary, "out-of-distribution below log-likelihood {ood:.2}");
    let names: Vec<(String, Vec<String>)> = shape
        .upstreams
        .iter()
        .map(|u| (u.name.clone(), u.peers.clone()))
        .collect();
    summary.push_str(&crate::capacity::report(&names, &capacity.estimates()));
    Ok(Learned {
        policy,
        gmm,
        timeline,
        summary,
        stats,
        features: FeatureSet {
            specs: set.specs,
            standardization: Standardization { mean, std },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn weight_vectors_are_pooled_by_their_ratios() {
        assert_eq!(canonical(&[3, 3, 3]), vec![1, 1, 1]);
        assert_eq!(canonical(&[5, 5, 5]), vec![1, 1, 1]);
        assert_eq!(canonical(&[6, 3, 9]), vec![2, 1, 3]);
        assert_eq!(canonical(&[5, 3, 1]), vec![5, 3, 1]);
        assert_eq!(canonical(&[4, 0, 2]), vec![2, 0, 1]);
        assert_eq!(canonical(&[0, 0]), vec![0, 0]);
        assert_eq!(canonical(&[]), Vec::<u32>::new());
    }
}
