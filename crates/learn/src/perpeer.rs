//! Learning a per-peer policy (format version 2, issue #13 items 1, 2, 4):
//! per-peer rows from the sample log → the core's per-peer features
//! against capacity baselines → a GMM over the rows → per state, the
//! multiplier the off-policy estimate supports with confidence, else 1
//! (the baseline).
//!
//! # Rows
//!
//! The decision at the end of interval `t` sees the counters of `t` and
//! sets the weights in force during `t + 1`. Each peer `i` of each upstream
//! gives one row per decision: its features at `t` (exactly as the module
//! computes them, [`PerPeerPolicy::features_into`]), the *action* it was
//! given — its traffic multiplier relative to the baseline,
//! `m_i = (w_i / Σ_j w_j) / (b_i / Σ_j b_j)`, rounded in log space to the
//! nearest of [`MULTIPLIERS`] — and the pool's reward of the tries
//! *dispatched* in `t + 1` (the `dispatched` counts of the record whose
//! `dispatched_seq` is `t + 1`; logs without them fall back to the tries
//! that ended in `t + 1`). The reward is the `--reward` expression evaluated
//! on the whole upstream's counts; every peer of the pool shares it, so a
//! peer's action is credited with what it did to the pool, not only to
//! itself.
//!
//! # Baseline
//!
//! Capacity estimates ([`crate::capacity`]), normalised to mean 1 per
//! upstream and recorded by peer name (`baseline.source = "capacity"`). A
//! peer whose capacity is not identified (usually: never loaded enough for
//! its latency to rise) is recorded at the highest throughput it carried in
//! an interval, about a lower bound of its capacity, but never below the
//! median identified capacity of its upstream; a peer the log does not
//! know gets the median at serving time. Without any number at all, the
//! configured weights (`"configured"`; the learner then takes every peer's
//! weight as 1).
//!
//! # Decision per state
//!
//! [`crate::ope::decide_state`] with the doubly robust estimate (clipped
//! weights, cross-fitted tabular model) compares "always multiplier 1" with
//! each candidate multiplier on the rows of the state. The propensity of a
//! row's multiplier is its frequency in the log (the explore modes draw
//! weights independently of the state; a sample's logged `propensity` is
//! joint over all peers, not the one peer's). A state changes only when the
//! best candidate's lower bound beats the baseline's upper bound and it was
//! taken at least `min_support` times there; else it keeps 1 and the summary
//! says how many more samples would decide. Rows of one interval share a
//! reward and are not independent: the intervals are narrower than they
//! should be by up to the square root of the pool size, which is why the
//! rule asks for the upper bound, not the estimate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use deep_sched_core::counters::{PeerCounters, PeerInterval};
use deep_sched_core::features::Standardization;
use deep_sched_core::gmm::CovarianceKind;
use deep_sched_core::perpeer::{
    median, BaselineDocument, BaselineSource, PeerFeature, PeerObservation, PerPeerDocument,
    PerPeerPolicy, PER_PEER_KIND, PER_PEER_VERSION,
};
use deep_sched_core::policy::{
    AgentDocument, CovarianceType, GmmDocument, PerComponent, POLICY_FORMAT,
};

use crate::capacity::{CapacityData, CapacityEstimate};
use crate::em::{fit, GmmParams};
use crate::learn::{LearnError, LearnOptions};
use crate::ope::{decide_state, Logged, OpeOptions, Rule, StateDecision, Why};
use crate::reader::{read_samples, Observation};
use crate::reward::Expr;

/// The candidate multipliers of a state (index 2, `1`, is the baseline).
pub const MULTIPLIERS: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];
/// Index of the baseline in [`MULTIPLIERS`].
pub const BASELINE: usize = 2;
/// Default number of per-peer states.
pub const DEFAULT_STATES: usize = 4;
/// Fewest rows per state asked of the data (K is lowered otherwise).
pub const ROWS_PER_STATE: usize = 30;

/// The outcome of [`learn_per_peer`].
#[derive(Debug, Clone)]
pub struct LearnedPerPeer {
    /// The policy document.
    pub policy: PerPeerDocument,
    /// Per state, the decision and its reasons.
    pub decisions: Vec<StateDecision>,
    /// Human-readable summary (what `deep-sched learn` prints).
    pub summary: String,
    /// Rows used.
    pub rows: usize,
}

/// The nearest candidate multiplier in log space.
pub fn nearest_multiplier(m: f64) -> usize {
    let l = m.max(1e-9).ln();
    (0..MULTIPLIERS.len())
        .min_by(|&a, &b| {
            (MULTIPLIERS[a].ln() - l)
                .abs()
                .total_cmp(&(MULTIPLIERS[b].ln() - l).abs())
        })
        .unwrap_or(BASELINE)
}

/// One upstream's tries as one counter (for the reward).
fn pool_counts(cs: &[PeerCounters]) -> PeerCounters {
    let mut total = PeerCounters::default();
    for c in cs {
        total.merge(c);
    }
    total
}

/// Learns a per-peer policy from sample logs.
pub fn learn_per_peer(
    paths: &[PathBuf],
    opts: &LearnOptions,
    states: usize,
) -> Result<LearnedPerPeer, LearnError> {
    let reward = Expr::parse(&opts.reward)?;
    let mut obs: Vec<Observation> = Vec::new();
    let (shape, stats) = read_samples(paths, opts.skip_bad, |o| obs.push(o))?;
    let mut summary = String::new();
    if obs.len() < 3 {
        return Err(LearnError::Data(format!(
            "{} intervals: a per-peer policy needs at least 3",
            obs.len()
        )));
    }

    // Baselines: capacity estimates, normalised to mean 1 per upstream.
    let mut cap = CapacityData::default();
    for o in &obs {
        cap.push(o);
    }
    let estimates = cap.estimates();
    let mut weights: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut bounded: Vec<String> = Vec::new();
    for (u, up) in shape.upstreams.iter().enumerate() {
        let ests: Vec<&CapacityEstimate> = estimates.get(u).into_iter().flatten().collect();
        let mut known: Vec<f64> = ests.iter().filter_map(|e| e.capacity_rps()).collect();
        let median_known = (!known.is_empty()).then(|| median(&mut known));
        let caps: Vec<(String, f64)> = up
            .peers
            .iter()
            .zip(&ests)
            .filter_map(|(name, e)| match e {
                CapacityEstimate::Known { capacity_rps, .. } => Some((name.clone(), *capacity_rps)),
                // Not identified: usually a peer never loaded enough for
                // its latency to rise. The highest throughput it carried is
                // then about a lower bound of its capacity; never below a
                // typical identified peer.
                CapacityEstimate::Unknown {
                    highest_rps: Some(h),
                    ..
                } if *h > 0.0 => {
                    bounded.push(format!("{} {name}", up.name));
                    Some((name.clone(), h.max(median_known.unwrap_or(0.0))))
                }
                CapacityEstimate::Unknown { .. } => None,
            })
            .collect();
        if caps.is_empty() {
            continue;
        }
        let mean = caps.iter().map(|(_, c)| c).sum::<f64>() / caps.len() as f64;
        weights.insert(
            up.name.clone(),
            caps.into_iter().map(|(n, c)| (n, c / mean)).collect(),
        );
    }
    let baseline = if weights.is_empty() {
        summary.push_str(
            "baseline: configured weights (no peer's capacity could be estimated from these samples)\n",
        );
        BaselineDocument {
            source: BaselineSource::Configured,
            weights: BTreeMap::new(),
        }
    } else {
        summary.push_str("baseline: capacity-proportional weights (mean 1 per upstream):\n");
        if !bounded.is_empty() {
            let _ = writeln!(
                summary,
                "  (capacity not identified, the highest throughput seen, at least the median identified capacity, used instead: {})",
                bounded.join(", ")
            );
        }
        for (u, ps) in &weights {
            for (p, w) in ps {
                let _ = writeln!(summary, "  {u} {p}: {w:.3}");
            }
        }
        BaselineDocument {
            source: BaselineSource::Capacity,
            weights,
        }
    };

    // A provisional policy (identity standardisation, one state) gives the
    // features exactly as the module computes them.
    let features: Vec<PeerFeature> = PeerFeature::ALL.to_vec();
    let d = features.len();
    let interval_ms = opts.interval_ms.unwrap_or_else(|| {
        let mut iv: Vec<u64> = obs.iter().map(|o| o.interval_ms).collect();
        iv.sort_unstable();
        iv[iv.len() / 2].clamp(100, 3_600_000)
    });
    let mut doc = PerPeerDocument {
        format: POLICY_FORMAT.into(),
        version: PER_PEER_VERSION,
        kind: PER_PEER_KIND.into(),
        interval_ms,
        agent: AgentDocument {
            upstreams: shape.upstreams.clone(),
        },
        peer_features: features,
        standardization: Standardization::identity(d),
        gmm: GmmDocument {
            covariance: CovarianceType::Diag,
            weights: vec![1.0],
            means: vec![vec![0.0; d]],
            covariances: Some(PerComponent::Vectors(vec![vec![1.0; d]])),
            precisions_cholesky: None,
        },
        multipliers: vec![1.0],
        default_multiplier: 1.0,
        ood_log_likelihood: None,
        baseline,
        provenance: serde_json::Map::new(),
    };
    let provisional = doc.clone().validate("learner")?;

    // Rows: features at t, the action in force during t+1, the pool's
    // reward of t+1's tries.
    let by_seq: BTreeMap<u64, usize> = obs
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.dispatched_seq.map(|s| (s, i)))
        .collect();
    let mut raw: Vec<f64> = Vec::new();
    let mut actions: Vec<usize> = Vec::new();
    let mut rewards: Vec<f64> = Vec::new();
    let mut credited = 0usize;
    for t in 0..obs.len() - 1 {
        let (o, next) = (&obs[t], &obs[t + 1]);
        for (u, up) in shape.upstreams.iter().enumerate() {
            // The outcome of the weights chosen at t: tries dispatched in
            // t+1 when the log has them, else those that ended in t+1.
            let dispatched = next
                .seq
                .and_then(|s| by_seq.get(&s))
                .and_then(|&i| obs[i].dispatched.as_ref())
                .and_then(|d| d.get(u));
            let outcome = match dispatched {
                Some(ds) => {
                    credited += 1;
                    let cs: Vec<PeerCounters> = ds
                        .iter()
                        .map(|x| PeerCounters {
                            requests: x.requests,
                            failures: x.failures,
                            response_msec: x.response_msec,
                            latency_hist: x.latency_hist,
                            ..PeerCounters::default()
                        })
                        .collect();
                    pool_counts(&cs)
                }
                None => pool_counts(&next.deltas[u]),
            };
            if outcome.requests == 0 {
                continue;
            }
            let r = reward.eval(&PeerInterval::from_delta(
                &outcome,
                outcome.requests,
                next.interval_ms,
            ));
            let Some(w) = o.next_weights.as_ref().and_then(|w| w.get(u)) else {
                continue;
            };
            let bases: Vec<f64> = up
                .peers
                .iter()
                .map(|p| provisional.baseline(&up.name, p, 1).0)
                .collect();
            let peers: Vec<PeerObservation> = o.deltas[u]
                .iter()
                .map(|c| PeerObservation::of(c, o.interval_ms))
                .collect();
            let pool = deep_sched_core::perpeer::PoolStats::of(&peers, &bases);
            let (sw, sb) = (
                w.iter().map(|&x| f64::from(x)).sum::<f64>(),
                bases.iter().sum::<f64>(),
            );
            for (i, p) in peers.iter().enumerate() {
                let mut x = vec![0.0; d];
                provisional.features_into(p, &pool, bases[i], &mut x);
                if x.iter().any(|v| !v.is_finite()) || !r.is_finite() {
                    continue;
                }
                let m = (f64::from(w[i]) / sw) / (bases[i] / sb);
                raw.extend_from_slice(&x);
                actions.push(nearest_multiplier(m));
                rewards.push(r);
            }
        }
    }
    let n = actions.len();
    let _ = writeln!(
        summary,
        "intervals: {} read, {} skipped",
        stats.records, stats.skipped
    );
    let _ = writeln!(
        summary,
        "{} intervals, {n} per-peer rows; outcome by dispatch interval for {credited} of them (else by the interval the tries ended in)",
        obs.len()
    );
    if n < 2 * ROWS_PER_STATE {
        return Err(LearnError::Data(format!(
            "{n} per-peer rows: at least {} are needed (two states of {ROWS_PER_STATE}); explore longer",
            2 * ROWS_PER_STATE
        )));
    }

    // Standardise, fit the states.
    let mut mean = vec![0.0; d];
    let mut std = vec![0.0; d];
    for row in raw.chunks(d) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / n as f64;
        }
    }
    for row in raw.chunks(d) {
        for ((s, x), m) in std.iter_mut().zip(row).zip(&mean) {
            *s += (x - m).powi(2) / n as f64;
        }
    }
    for s in &mut std {
        *s = s.sqrt().max(1e-3);
    }
    let z: Vec<f64> = raw
        .chunks(d)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&std)
                .map(|((x, m), s)| (x - m) / s)
                .collect::<Vec<_>>()
        })
        .collect();
    let k = states.clamp(1, (n / ROWS_PER_STATE).max(1));
    if k < states {
        let _ = writeln!(
            summary,
            "states: {k} instead of {states} ({n} rows, at least {ROWS_PER_STATE} a state)"
        );
    }
    let params = GmmParams::new(k)
        .covariance(CovarianceKind::Diag)
        .reg_covar(opts.reg_covar)
        .tol(opts.tol)
        .max_iter(opts.max_iter)
        .n_init(opts.n_init)
        .seed(opts.seed)
        .check(n)?;
    let gmm = fit(&z, d, &params, |_, _| {});
    let model = gmm.model();
    let mut lls = Vec::with_capacity(n);
    let contexts: Vec<usize> = z
        .chunks(d)
        .map(|x| {
            let (s, ll) = model.classify(x);
            lls.push(ll);
            s
        })
        .collect();

    // Propensity of a multiplier: its frequency in the log.
    let mut freq = [0usize; MULTIPLIERS.len()];
    for &a in &actions {
        freq[a] += 1;
    }
    let logged: Vec<Logged> = (0..n)
        .map(|i| Logged {
            context: contexts[i],
            action: actions[i],
            propensity: freq[actions[i]] as f64 / n as f64,
            reward: rewards[i],
        })
        .collect();
    let ope = OpeOptions {
        min_support: (opts.min_visits as usize).max(OpeOptions::default().min_support),
        ..OpeOptions::default()
    };
    let candidates: Vec<usize> = (0..MULTIPLIERS.len()).collect();
    let rows_per_interval = n as f64 / (obs.len() - 1) as f64;
    let mut decisions = Vec::with_capacity(k);
    let mut multipliers = Vec::with_capacity(k);
    let _ = writeln!(
        summary,
        "{:>5}  {:>6}  {:<26}  {:<34}  decision",
        "state", "rows", "baseline (x1)", "best candidate"
    );
    for s in 0..k {
        let dec = decide_state(
            &logged,
            s,
            BASELINE,
            &candidates,
            MULTIPLIERS.len(),
            Rule::BeatUpperBound,
            &ope,
        )
        .map_err(|e| LearnError::Data(e.to_string()))?;
        let rows = contexts.iter().filter(|&&c| c == s).count();
        let base = dec.baseline.map_or("-".to_owned(), |e| {
            format!("{:.2} [{:.2}, {:.2}]", e.value, e.low, e.high)
        });
        let cand = dec.candidate.map_or("-".to_owned(), |(a, e)| {
            format!(
                "x{} {:.2} [{:.2}, {:.2}]",
                MULTIPLIERS[a], e.value, e.low, e.high
            )
        });
        let more = match dec.why {
            Why::NotConfident { more_samples } => {
                let share = rows as f64 / n as f64;
                let per_interval = (rows_per_interval * share).max(1e-9);
                format!(
                    " (about {:.0} more intervals of exploration at this state's rate)",
                    (more_samples as f64 / per_interval).ceil()
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(
            summary,
            "{s:>5}  {rows:>6}  {base:<26}  {cand:<34}  x{} — {}{more}",
            MULTIPLIERS[dec.action], dec.why
        );
        multipliers.push(MULTIPLIERS[dec.action]);
        decisions.push(dec);
    }

    lls.sort_by(f64::total_cmp);
    // Out of distribution: well below anything seen in training.
    let ood = lls[0] - 10.0;
    doc.standardization = Standardization { mean, std };
    doc.gmm = GmmDocument {
        covariance: CovarianceType::Diag,
        weights: gmm.weights.clone(),
        means: gmm.means.clone(),
        covariances: Some(PerComponent::Vectors(gmm.covariances.clone())),
        precisions_cholesky: None,
    };
    doc.multipliers = multipliers;
    doc.ood_log_likelihood = Some(ood);
    let mut prov = serde_json::Map::new();
    prov.insert(
        "learner".into(),
        concat!("deep-sched ", env!("CARGO_PKG_VERSION")).into(),
    );
    prov.insert("algorithm".into(), "per-peer doubly robust".into());
    let mut chooses: BTreeMap<String, usize> = BTreeMap::new();
    for o in &obs {
        if let Some(c) = &o.choose {
            *chooses.entry(c.clone()).or_default() += 1;
        }
    }
    if let Some((c, _)) = chooses.iter().max_by_key(|(_, n)| **n) {
        prov.insert("choose".into(), c.clone().into());
    }
    prov.insert("samples".into(), obs.len().into());
    prov.insert("rows".into(), n.into());
    prov.insert("skipped".into(), stats.skipped.into());
    prov.insert("created".into(), opts.created.clone().into());
    prov.insert("reward".into(), opts.reward.clone().into());
    prov.insert("seed".into(), opts.seed.into());
    doc.provenance = prov;
    // What is written must load.
    PerPeerPolicy::from_json_str(
        &serde_json::to_string(&doc).map_err(|e| LearnError::Data(e.to_string()))?,
        "learned policy",
    )?;
    Ok(LearnedPerPeer {
        policy: doc,
        decisions,
        summary,
        rows: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_round_in_log_space() {
        assert_eq!(nearest_multiplier(1.0), BASELINE);
        assert_eq!(nearest_multiplier(0.3), 0);
        assert_eq!(nearest_multiplier(0.36), 1);
        assert_eq!(nearest_multiplier(1.5), 3);
        assert_eq!(nearest_multiplier(100.0), 4);
        assert_eq!(nearest_multiplier(0.0), 0);
    }
}
