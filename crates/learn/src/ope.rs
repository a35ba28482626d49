//! Off-policy evaluation: the value of a *target* policy estimated from
//! decisions logged under another (the logging policy), and the safe
//! decision rule built on it — change a state's action only where the data
//! say with confidence that the candidate beats the baseline (issue #13,
//! item 4).
//!
//! # Data
//!
//! Logged tuples `(x_i, a_i, p_i, r_i)`, `i = 1..n`: context (state) `x_i`,
//! action taken `a_i`, its probability `p_i = μ(a_i | x_i)` under the
//! logging policy `μ` (the propensity, which exploration logs), reward
//! `r_i`. A target policy `π(a | x)` is given as a probability per
//! (context, action).
//!
//! # Estimators
//!
//! With importance weights `w_i = min(π(a_i | x_i) / p_i, M)` clipped at
//! `M` ([`OpeOptions::clip`]) and a reward model `q̂(x, a)`:
//!
//! ```text
//! IPS:  V̂ = (1/n) Σ_i w_i · r_i
//! DM:   V̂ = (1/n) Σ_i Σ_a π(a | x_i) · q̂(x_i, a)
//! DR:   V̂ = (1/n) Σ_i [ Σ_a π(a | x_i) · q̂(x_i, a)  +  w_i · (r_i − q̂(x_i, a_i)) ]
//! ```
//!
//! Inverse propensity scoring (IPS; Horvitz & Thompson 1952) is unbiased
//! when `M ≥ max π/p` and the propensities are right, but its variance
//! grows with the weights; the direct method (DM) has low variance but the
//! bias of its model. Doubly robust (DR; Dudík, Langford & Li, *Doubly
//! Robust Policy Evaluation and Learning*, ICML 2011) uses the model and
//! corrects its error with the weighted residual: unbiased if either the
//! propensities or the model are right, with a variance that shrinks as the
//! model improves. Clipping (`M < ∞`) trades a bias for a bounded variance
//! (Ionides 2008; Bottou et al. 2013); with `M` above every weight it
//! changes nothing.
//!
//! `q̂` is tabular — the mean logged reward of `(x, a)`, else of `x`, else
//! overall — and DR *cross-fits* it (Chernozhukov et al. 2018): the data
//! are split into [`OpeOptions::folds`] folds by index and the terms of a
//! fold use the `q̂` fitted on the others, so a sample never corrects a
//! model it trained (which would bias the correction toward zero).
//!
//! # Interval
//!
//! Each estimator is a mean of per-sample terms `ψ_i`; the interval is the
//! normal approximation `V̂ ± z · s_ψ / √n` with `s_ψ` the sample standard
//! deviation of the `ψ_i` and `z` = [`OpeOptions::z`] (1.96: 95%). It is
//! the central-limit interval of a mean of independent terms: it assumes
//! independent samples (intervals of one run are not quite) and enough of
//! them for the mean to be near normal (heavy weights need more).
//!
//! # Decision rule
//!
//! [`decide_state`] compares, on the samples of one state, the baseline
//! action `b` with each candidate `c` (each as the deterministic target
//! "always this action in this state"), all estimated by DR. It changes the
//! action only if the best candidate by lower bound has
//! `LCB(c) > UCB(b)` ([`Rule::BeatUpperBound`], the default) or
//! `LCB(c) > V̂(b)` ([`Rule::BeatEstimate`]) and at least
//! [`OpeOptions::min_support`] logged samples took `c` in that state; else
//! it keeps `b`. Since `V̂(c) ≥ LCB(c)` and `UCB(b) ≥ V̂(b)`, it never
//! picks a candidate whose estimate is below the baseline's.
//!
//! When it keeps `b` although the best candidate's estimate is above it by
//! `Δ = V̂(c) − V̂(b) > 0`, it says how many samples of the state would let
//! it decide — a rough power calculation: with per-sample standard
//! deviations `s_c`, `s_b` staying as estimated, `n` samples give
//! `LCB(c) − UCB(b) = Δ − z(s_c + s_b)/√n`, which a further
//! `z_β · √(s_c² + s_b²)/√n` (the noise of that difference, `z_β = 0.84`
//! for 80% power) keeps positive when
//!
//! ```text
//! n ≥ ( (z·(s_c + s_b) + z_β·√(s_c² + s_b²)) / Δ )²
//! ```
//!
//! (`z·s_c` alone in place of `z·(s_c + s_b)` for [`Rule::BeatEstimate`]).
//! It assumes the gap is real and the logging policy unchanged; a gap that
//! is noise needs more, a `Δ ≤ 0` can never be confirmed.
//!
//! Nothing here feeds the learned policy yet: it is the building block of
//! issue #13's "safe improvement".

use std::fmt;

/// One logged decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Logged {
    /// Context (state) index.
    pub context: usize,
    /// Action taken.
    pub action: usize,
    /// Its probability under the logging policy, in `(0, 1]`.
    pub propensity: f64,
    /// Reward observed.
    pub reward: f64,
}

/// Which estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    /// Inverse propensity scoring with clipped weights.
    Ips,
    /// The direct method (reward model only).
    DirectMethod,
    /// Doubly robust with clipped weights and a cross-fitted model.
    DoublyRobust,
}

/// Settings of the estimators and the decision rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpeOptions {
    /// Importance weights are clipped at this (`M`).
    pub clip: f64,
    /// Half-width of the interval in standard errors (1.96: 95%).
    pub z: f64,
    /// Cross-fitting folds of the DR model (1: no cross-fitting).
    pub folds: usize,
    /// Fewest logged samples of a candidate action in a state for the
    /// rule to adopt it.
    pub min_support: usize,
}

impl Default for OpeOptions {
    fn default() -> Self {
        OpeOptions {
            clip: 100.0,
            z: 1.96,
            folds: 2,
            min_support: 10,
        }
    }
}

/// `z_β` of the power calculation (80% power).
pub const POWER_Z: f64 = 0.8416;

/// An estimate with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// `V̂`.
    pub value: f64,
    /// `s_ψ / √n`.
    pub std_err: f64,
    /// `V̂ − z · std_err`.
    pub low: f64,
    /// `V̂ + z · std_err`.
    pub high: f64,
    /// Samples used.
    pub n: usize,
    /// `s_ψ`, the per-sample standard deviation.
    pub sd: f64,
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.4} [{:.4}, {:.4}] (n={})",
            self.value, self.low, self.high, self.n
        )
    }
}

/// Input the estimators refuse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpeError {
    /// No samples.
    #[error("no logged samples")]
    Empty,
    /// A sample is unusable.
    #[error("logged sample {index}: {reason}")]
    Sample {
        /// Its index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Bad settings.
    #[error("off-policy options: {0}")]
    Options(String),
}

fn check(data: &[Logged], actions: usize, opts: &OpeOptions) -> Result<(), OpeError> {
    let clip_ok = opts.clip > 0.0;
    let z_ok = opts.z >= 0.0 && opts.z.is_finite();
    if !clip_ok || !z_ok {
        return Err(OpeError::Options(format!(
            "clip {} must be > 0 and z {} finite and >= 0",
            opts.clip, opts.z
        )));
    }
    if data.is_empty() {
        return Err(OpeError::Empty);
    }
    for (index, s) in data.iter().enumerate() {
        let bad = |reason: String| Err(OpeError::Sample { index, reason });
        let in_range = s.propensity > 0.0 && s.propensity <= 1.0;
        if !in_range {
            return bad(format!("propensity {} is not in (0, 1]", s.propensity));
        }
        if !s.reward.is_finite() {
            return bad(format!("reward {} is not finite", s.reward));
        }
        if s.action >= actions {
            return bad(format!("action {} of {actions}", s.action));
        }
    }
    Ok(())
}

/// Tabular reward model `q̂(x, a)`: the mean reward of `(x, a)`, else of
/// `x`, else of everything.
#[derive(Debug, Clone)]
pub struct RewardModel {
    pair: std::collections::HashMap<(usize, usize), (f64, usize)>,
    context: std::collections::HashMap<usize, (f64, usize)>,
    overall: f64,
}

impl RewardModel {
    /// Fits on `data`.
    pub fn fit<'a>(data: impl IntoIterator<Item = &'a Logged>) -> RewardModel {
        let mut pair = std::collections::HashMap::new();
        let mut context = std::collections::HashMap::new();
        let (mut sum, mut n) = (0.0, 0usize);
        for s in data {
            let e = pair.entry((s.context, s.action)).or_insert((0.0, 0));
            e.0 += s.reward;
            e.1 += 1;
            let e = context.entry(s.context).or_insert((0.0, 0));
            e.0 += s.reward;
            e.1 += 1;
            sum += s.reward;
            n += 1;
        }
        RewardModel {
            pair,
            context,
            overall: if n > 0 { sum / n as f64 } else { 0.0 },
        }
    }

    /// `q̂(x, a)`.
    pub fn predict(&self, x: usize, a: usize) -> f64 {
        if let Some(&(s, n)) = self.pair.get(&(x, a)) {
            return s / n as f64;
        }
        if let Some(&(s, n)) = self.context.get(&x) {
            return s / n as f64;
        }
        self.overall
    }
}

fn mean_interval(psi: &[f64], z: f64) -> Estimate {
    let n = psi.len();
    let mean = psi.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (psi.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
    } else {
        f64::INFINITY
    };
    let se = sd / (n as f64).sqrt();
    Estimate {
        value: mean,
        std_err: se,
        low: mean - z * se,
        high: mean + z * se,
        n,
        sd,
    }
}

/// The per-sample terms `ψ_i` of `estimator` (see the module doc); their
/// mean is the estimate.
pub fn terms(
    data: &[Logged],
    target: &dyn Fn(usize, usize) -> f64,
    actions: usize,
    estimator: Estimator,
    opts: &OpeOptions,
) -> Result<Vec<f64>, OpeError> {
    check(data, actions, opts)?;
    let weight = |s: &Logged| (target(s.context, s.action) / s.propensity).min(opts.clip);
    let dm = |q: &RewardModel, x: usize| -> f64 {
        (0..actions)
            .map(|a| {
                let p = target(x, a);
                if p > 0.0 {
                    p * q.predict(x, a)
                } else {
                    0.0
                }
            })
            .sum()
    };
    Ok(match estimator {
        Estimator::Ips => data.iter().map(|s| weight(s) * s.reward).collect(),
        Estimator::DirectMethod => {
            let q = RewardModel::fit(data);
            data.iter().map(|s| dm(&q, s.context)).collect()
        }
        Estimator::DoublyRobust => {
            let folds = opts.folds.max(1).min(data.len());
            let models: Vec<RewardModel> = (0..folds)
                .map(|k| {
                    RewardModel::fit(
                        data.iter()
                            .enumerate()
                            .filter(|(i, _)| folds == 1 || i % folds != k)
                            .map(|(_, s)| s),
                    )
                })
                .collect();
            data.iter()
                .enumerate()
                .map(|(i, s)| {
                    let q = &models[i % folds];
                    dm(q, s.context) + weight(s) * (s.reward - q.predict(s.context, s.action))
                })
                .collect()
        }
    })
}

/// The value of `target` (`π(a | x)` for context `x`, action `a` in
/// `0..actions`) estimated from `data` by `estimator`, with its interval.
pub fn estimate(
    data: &[Logged],
    target: &dyn Fn(usize, usize) -> f64,
    actions: usize,
    estimator: Estimator,
    opts: &OpeOptions,
) -> Result<Estimate, OpeError> {
    let psi = terms(data, target, actions, estimator, opts)?;
    Ok(mean_interval(&psi, opts.z))
}

/// What the candidate must beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    /// `LCB(candidate) > UCB(baseline)`.
    #[default]
    BeatUpperBound,
    /// `LCB(candidate) > V̂(baseline)`.
    BeatEstimate,
}

/// Why [`decide_state`] decided as it did.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    /// The candidate's lower bound beats the baseline's bound (or
    /// estimate).
    Confident,
    /// No candidate has a higher estimate than the baseline.
    BaselineBest,
    /// The best candidate's estimate is higher but not with confidence;
    /// about `more_samples` more samples of this state would let the rule
    /// decide (the module doc's power calculation).
    NotConfident {
        /// Samples of the state still needed (rough).
        more_samples: usize,
    },
    /// The best candidate was taken in fewer than `min_support` logged
    /// samples of the state.
    TooLittleSupport {
        /// Logged samples of it.
        seen: usize,
        /// Needed.
        needed: usize,
    },
    /// The state has no logged samples.
    NoData,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Confident => write!(f, "changed: the candidate beats the baseline with confidence"),
            Why::BaselineBest => write!(f, "kept: no candidate is estimated above the baseline"),
            Why::NotConfident { more_samples } => write!(
                f,
                "kept: the best candidate is estimated above the baseline but not with confidence; about {more_samples} more samples of this state would decide"
            ),
            Why::TooLittleSupport { seen, needed } => write!(
                f,
                "kept: the best candidate was taken {seen} times here, {needed} needed"
            ),
            Why::NoData => write!(f, "kept: no logged samples in this state"),
        }
    }
}

/// The rule's verdict for one state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateDecision {
    /// The state.
    pub state: usize,
    /// The action to use: the baseline unless [`Why::Confident`].
    pub action: usize,
    /// Whether it differs from the baseline.
    pub changed: bool,
    /// Why.
    pub why: Why,
    /// DR estimate of the baseline action in this state.
    pub baseline: Option<Estimate>,
    /// The best candidate (by lower bound) and its DR estimate.
    pub candidate: Option<(usize, Estimate)>,
}

/// Samples of one state needed for `LCB(c) > UCB(b)` (or `> V̂(b)`) at 80%
/// power given the gap `Δ = V̂(c) − V̂(b) > 0` and the per-sample standard
/// deviations (module doc); `None` when `Δ ≤ 0` or a deviation is not
/// finite.
pub fn samples_needed(
    candidate: &Estimate,
    baseline: &Estimate,
    rule: Rule,
    z: f64,
) -> Option<usize> {
    let gap = candidate.value - baseline.value;
    let positive = gap > 0.0;
    if !positive || !candidate.sd.is_finite() || !baseline.sd.is_finite() {
        return None;
    }
    let bound = match rule {
        Rule::BeatUpperBound => z * (candidate.sd + baseline.sd),
        Rule::BeatEstimate => z * candidate.sd,
    };
    let noise = POWER_Z * (candidate.sd.powi(2) + baseline.sd.powi(2)).sqrt();
    Some(((bound + noise) / gap).powi(2).ceil() as usize)
}

/// The safe decision for `state`: keep `baseline` unless a candidate beats
/// it with confidence (module doc). `data` may hold every state's samples;
/// only `state`'s are used.
pub fn decide_state(
    data: &[Logged],
    state: usize,
    baseline: usize,
    candidates: &[usize],
    actions: usize,
    rule: Rule,
    opts: &OpeOptions,
) -> Result<StateDecision, OpeError> {
    let mine: Vec<Logged> = data
        .iter()
        .filter(|s| s.context == state)
        .copied()
        .collect();
    let keep = |why, baseline_est, candidate| StateDecision {
        state,
        action: baseline,
        changed: false,
        why,
        baseline: baseline_est,
        candidate,
    };
    if mine.is_empty() {
        return Ok(keep(Why::NoData, None, None));
    }
    let always = |a: usize| move |_: usize, b: usize| if a == b { 1.0 } else { 0.0 };
    let base = estimate(
        &mine,
        &always(baseline),
        actions,
        Estimator::DoublyRobust,
        opts,
    )?;
    let mut best: Option<(usize, Estimate)> = None;
    for &c in candidates.iter().filter(|&&c| c != baseline) {
        let e = estimate(&mine, &always(c), actions, Estimator::DoublyRobust, opts)?;
        if best.is_none_or(|(_, b)| e.low > b.low) {
            best = Some((c, e));
        }
    }
    let Some((c, ce)) = best else {
        return Ok(keep(Why::BaselineBest, Some(base), None));
    };
    let bar = match rule {
        Rule::BeatUpperBound => base.high,
        Rule::BeatEstimate => base.value,
    };
    let support = mine.iter().filter(|s| s.action == c).count();
    if ce.low > bar && ce.value > base.value {
        if support < opts.min_support {
            return Ok(keep(
                Why::TooLittleSupport {
                    seen: support,
                    needed: opts.min_support,
                },
                Some(base),
                Some((c, ce)),
            ));
        }
        return Ok(StateDecision {
            state,
            action: c,
            changed: true,
            why: Why::Confident,
            baseline: Some(base),
            candidate: Some((c, ce)),
        });
    }
    // Not confident: is any candidate at least estimated above?
    let top = candidates
        .iter()
        .filter(|&&a| a != baseline)
        .map(|&a| {
            estimate(&mine, &always(a), actions, Estimator::DoublyRobust, opts).map(|e| (a, e))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max_by(|x, y| x.1.value.total_cmp(&y.1.value));
    match top {
        Some((a, e)) if e.value > base.value => {
            let need = samples_needed(&e, &base, rule, opts.z).unwrap_or(usize::MAX);
            Ok(keep(
                Why::NotConfident {
                    more_samples: need.saturating_sub(mine.len()).max(1),
                },
                Some(base),
                Some((a, e)),
            ))
        }
        _ => Ok(keep(Why::BaselineBest, Some(base), Some((c, ce)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(context: usize, action: usize, propensity: f64, reward: f64) -> Logged {
        Logged {
            context,
            action,
            propensity,
            reward,
        }
    }

    #[test]
    fn hand_computed_ips_dm_and_dr() {
        // one context, two actions logged with p = 0.5 each
        let data = [
            s(0, 0, 0.5, 1.0),
            s(0, 1, 0.5, 3.0),
            s(0, 0, 0.5, 2.0),
            s(0, 1, 0.5, 5.0),
        ];
        let always1 = |_: usize, a: usize| if a == 1 { 1.0 } else { 0.0 };
        let o = OpeOptions {
            folds: 1,
            ..OpeOptions::default()
        };
        // IPS: (0 + 2·3 + 0 + 2·5) / 4 = 4
        let ips = estimate(&data, &always1, 2, Estimator::Ips, &o).unwrap();
        assert!((ips.value - 4.0).abs() < 1e-12);
        // DM: q̂(0, 1) = 4
        let dm = estimate(&data, &always1, 2, Estimator::DirectMethod, &o).unwrap();
        assert!((dm.value - 4.0).abs() < 1e-12);
        assert_eq!(dm.sd, 0.0);
        // DR without cross-fitting: 4 + w·(r − 4): terms 4, 2, 4, 6
        let dr = estimate(&data, &always1, 2, Estimator::DoublyRobust, &o).unwrap();
        assert!((dr.value - 4.0).abs() < 1e-12);
        let sd = (8.0f64 / 3.0).sqrt();
        assert!((dr.sd - sd).abs() < 1e-12);
        assert!((dr.high - dr.low - 2.0 * 1.96 * sd / 2.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_caps_the_weights() {
        let data = [s(0, 1, 0.01, 1.0), s(0, 0, 0.99, 0.0)];
        let always1 = |_: usize, a: usize| if a == 1 { 1.0 } else { 0.0 };
        let o = OpeOptions {
            clip: 10.0,
            ..OpeOptions::default()
        };
        let t = terms(&data, &always1, 2, Estimator::Ips, &o).unwrap();
        assert_eq!(t, vec![10.0, 0.0]);
    }

    #[test]
    fn bad_samples_and_options_are_refused_by_index() {
        let t = |_: usize, _: usize| 0.5;
        let o = OpeOptions::default();
        for (bad, want) in [
            (
                s(0, 0, 0.0, 1.0),
                "logged sample 1: propensity 0 is not in (0, 1]",
            ),
            (
                s(0, 0, 1.5, 1.0),
                "logged sample 1: propensity 1.5 is not in (0, 1]",
            ),
            (
                s(0, 0, f64::NAN, 1.0),
                "logged sample 1: propensity NaN is not in (0, 1]",
            ),
            (
                s(0, 0, 0.5, f64::INFINITY),
                "logged sample 1: reward inf is not finite",
            ),
            (s(0, 2, 0.5, 1.0), "logged sample 1: action 2 of 2"),
        ] {
            let e = estimate(&[s(0, 0, 0.5, 1.0), bad], &t, 2, Estimator::Ips, &o).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        assert_eq!(
            estimate(&[], &t, 2, Estimator::Ips, &o).unwrap_err(),
            OpeError::Empty
        );
        let e = estimate(
            &[s(0, 0, 0.5, 1.0)],
            &t,
            2,
            Estimator::Ips,
            &OpeOptions { clip: 0.0, ..o },
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("off-policy options: clip 0"),
            "{e}"
        );
    }

    #[test]
    fn samples_needed_follows_the_formula() {
        let est = |value: f64, sd: f64| Estimate {
            value,
            std_err: 0.0,
            low: value,
            high: value,
            n: 1,
            sd,
        };
        // Δ = 1, s_c = s_b = 1: (1.96·2 + 0.8416·√2)² = 5.1102² = 26.11
        let n = samples_needed(&est(1.0, 1.0), &est(0.0, 1.0), Rule::BeatUpperBound, 1.96);
        let want = (1.96f64 * 2.0 + POWER_Z * 2f64.sqrt()).powi(2).ceil() as usize;
        assert_eq!(n, Some(want));
        assert_eq!(want, 27);
        let n = samples_needed(&est(1.0, 1.0), &est(0.0, 1.0), Rule::BeatEstimate, 1.96);
        assert_eq!(
            n,
            Some((1.96f64 + POWER_Z * 2f64.sqrt()).powi(2).ceil() as usize)
        );
        // no gap, or the wrong sign: never
        assert_eq!(
            samples_needed(&est(0.0, 1.0), &est(0.0, 1.0), Rule::BeatUpperBound, 1.96),
            None
        );
        assert_eq!(
            samples_needed(&est(-1.0, 1.0), &est(0.0, 1.0), Rule::BeatUpperBound, 1.96),
            None
        );
    }

    #[test]
    fn a_state_without_data_keeps_the_baseline() {
        let d = decide_state(
            &[s(1, 0, 0.5, 1.0)],
            0,
            0,
            &[1],
            2,
            Rule::default(),
            &OpeOptions::default(),
        )
        .unwrap();
        assert_eq!((d.action, d.changed, d.why), (0, false, Why::NoData));
    }
}
