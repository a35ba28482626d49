//! Per-peer capacity from the sample log: how many requests per second a
//! peer serves at saturation, `μ = c / S` for `c` parallel workers of mean
//! service time `S` — and from it continuous weights proportional to
//! capacity (issue #13, item 2).
//!
//! # Model
//!
//! Each logged interval `i` of a peer gives its completions `n_i` over the
//! interval's length `T_i` and the sum of their response times, hence the
//! throughput `λ_i = n_i / T_i` and the mean response time
//! `R_i = response_msec_i / n_i`. The peer is taken as an M/M/c queue
//! (Poisson arrivals, `c` servers, exponential service of mean `S`), whose
//! stationary mean response time at offered load `a = λ·S` (Erlangs) is
//!
//! ```text
//! R(λ; S, c) = S + C(c, a) · S / (c − a),        a < c
//! ```
//!
//! with `C(c, a)` the Erlang C probability of waiting, computed through the
//! Erlang B recursion `B_0 = 1`, `B_k = a·B_{k−1} / (k + a·B_{k−1})`,
//! `C = c·B_c / (c − a·(1 − B_c))` (Kleinrock, *Queueing Systems* vol. 1,
//! 1975, §3.5). Near or past saturation (`a ≥ 0.98·c`, which the
//! throughput of completions cannot much exceed) the model is held at
//! `R(0.98·c/S)` and any longer observed response time counts as a fit:
//! a saturated queue grows for as long as the overload lasts, and what a
//! saturated interval tells is its throughput, `≈ c/S`.
//!
//! # Fit
//!
//! `(S, c)` minimise the weighted squared error of the log mean response
//! time, the weight of an interval being its completions (the variance of a
//! mean of `n` latencies falls as `1/n`):
//!
//! ```text
//! SSE(S, c) = Σ_i n_i · (ln R_i − ln R(λ_i; S, c))²
//! ```
//!
//! by profiling: for each whole `c` in `1..=MAX_WORKERS`, `S` by golden
//! section search on `[0.1·R_min, R_max]` over the intervals' mean
//! response times (the mean response time is never below the service
//! time, so `S ≤ R_max`; `R_min` itself is not an upper bound, being a
//! noisy mean of few requests).
//!
//! # When it cannot estimate
//!
//! Service time is seen at any load, but parallelism only where requests
//! queue: a peer never loaded near its capacity shows `R ≈ S` whatever
//! `c`. The estimator therefore reports an interval, not just a point: the
//! values of `c` whose profile error is within the 95% likelihood-ratio
//! bound of the best, `SSE(c, S) − SSE_min ≤ 3.84 · σ̂²` with
//! `σ̂² = SSE_min / (m − 2)` over `m` intervals (the usual χ²₁ profile
//! interval under approximately Gaussian log-latency means): the capacity
//! interval is the range of `μ = c / S` over the pairs `(c, S)` within the
//! bound (for each `c`, the service times within it are found by
//! bisection on either side of `S(c)`). It refuses ([`CapacityEstimate::Unknown`]) rather than
//! inventing a number when
//!
//! - the peer has fewer than [`MIN_INTERVALS`] intervals with at least
//!   [`MIN_INTERVAL_REQUESTS`] completions (no or little traffic);
//! - the interval reaches `MAX_WORKERS` (the data do not bound the
//!   parallelism from above: the peer was never busy enough);
//! - the interval is wider than a factor [`MAX_INTERVAL_RATIO`];
//! - some interval's throughput exceeds the fitted capacity by more than
//!   [`MAX_UTILISATION`] (the peer's speed changed over the log, or the
//!   model does not hold).
//!
//! It then reports the highest throughput seen in one interval, a fact
//! about the log rather than a bound.
//!
//! # Limits
//!
//! Exponential service is assumed. A service time with a coefficient of
//! variation above 1 (log-normal, bimodal) queues more than the model says
//! (by the Allen-Cunneen approximation the waiting time scales with
//! `(1 + C_s²)/2`); the fit absorbs that into `S` and `c`, which are then
//! off on their own, while their ratio stays close (within 8% on simulated
//! log-normal service with σ = 1, `tests/capacity.rs`). Queues outlive a
//! 1 s interval, so an interval's latency lags its load; fitting against
//! the mean throughput of the interval and the one before
//! ([`SMOOTH`]) reduces that bias (worst error over the simulated peers of
//! `tests/capacity.rs` 12% → 9%) but does not remove it, and the interval
//! reported does not include it. A peer whose speed changes (noisy,
//! degrading) is usually refused (see above), else gets its average. Nothing
//! here is used by the learned policy yet: `deep-sched learn` prints the
//! estimates in its report.

use deep_sched_core::counters::PeerCounters;

use crate::reader::Observation;

/// Largest parallelism considered.
pub const MAX_WORKERS: usize = 64;
/// Fewest completions for an interval to count.
pub const MIN_INTERVAL_REQUESTS: u64 = 20;
/// Fewest counted intervals for an estimate.
pub const MIN_INTERVALS: usize = 10;
/// Widest accepted ratio of the upper to the lower end of the capacity
/// interval.
pub const MAX_INTERVAL_RATIO: f64 = 1.5;
/// Highest throughput in one interval, as a fraction of the fitted
/// capacity, that the fit accepts (above it the capacity was not constant
/// or the model does not hold).
pub const MAX_UTILISATION: f64 = 1.15;
/// The model is held at this utilisation and above.
pub const RHO_CAP: f64 = 0.98;
/// Weight of the previous interval's throughput in the load an interval's
/// latency is fitted against (queues outlive an interval).
pub const SMOOTH: f64 = 0.5;
/// χ²₁ 95% quantile.
const CHI2_1_95: f64 = 3.841_458_820_694_124;

/// One interval of one peer, as the fit sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerInterval {
    /// Length of the interval, ms.
    pub interval_ms: u64,
    /// Completions.
    pub requests: u64,
    /// Sum of their response times, ms.
    pub response_msec: u64,
}

impl PeerInterval {
    /// From a peer's counters of one interval.
    pub fn of(c: &PeerCounters, interval_ms: u64) -> PeerInterval {
        PeerInterval {
            interval_ms,
            requests: c.requests,
            response_msec: c.response_msec,
        }
    }
}

/// What the fit found for one peer.
#[derive(Debug, Clone, PartialEq)]
pub enum CapacityEstimate {
    /// Identified.
    Known {
        /// Parallelism `c` (whole workers).
        workers: usize,
        /// Mean service time `S`, ms.
        service_ms: f64,
        /// `c / S`, requests per second.
        capacity_rps: f64,
        /// 95% profile interval of the capacity, requests per second.
        interval_rps: (f64, f64),
        /// Highest utilisation `λ_i·S/c` seen (how much of the curve the
        /// data cover).
        max_utilisation: f64,
        /// Intervals used.
        intervals: usize,
    },
    /// Not identified from these data.
    Unknown {
        /// Why, in words.
        reason: String,
        /// The highest throughput seen in one interval, requests per
        /// second (a fact about the log, not a bound: one short interval
        /// can beat the mean capacity by chance); `None` without counted
        /// intervals.
        highest_rps: Option<f64>,
        /// Intervals used.
        intervals: usize,
    },
}

impl CapacityEstimate {
    /// The capacity, if identified.
    pub fn capacity_rps(&self) -> Option<f64> {
        match self {
            CapacityEstimate::Known { capacity_rps, .. } => Some(*capacity_rps),
            CapacityEstimate::Unknown { .. } => None,
        }
    }
}

/// Erlang C: the probability that an arrival waits in an M/M/c queue at
/// offered load `a < c` Erlangs, via the Erlang B recursion
/// `B_k = a·B_{k−1} / (k + a·B_{k−1})`, `C = c·B_c / (c − a·(1 − B_c))`.
pub fn erlang_c(c: usize, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (k as f64 + a * b);
    }
    let c = c as f64;
    (c * b / (c - a * (1.0 - b))).clamp(0.0, 1.0)
}

/// M/M/c mean response time, ms, at throughput `rps` for `c` servers of
/// mean service time `s_ms`: `S + C(c, a)·S/(c − a)`, `a = λS`, held at
/// utilisation [`RHO_CAP`] and above.
pub fn mmc_response_ms(rps: f64, s_ms: f64, c: usize) -> f64 {
    let cf = c as f64;
    let a = (rps * s_ms / 1000.0).min(RHO_CAP * cf);
    s_ms + erlang_c(c, a) * s_ms / (cf - a)
}

struct Point {
    rps: f64,
    ln_r: f64,
    weight: f64,
}

fn sse(points: &[Point], s_ms: f64, c: usize) -> f64 {
    points
        .iter()
        .map(|p| {
            let mut d = p.ln_r - mmc_response_ms(p.rps, s_ms, c).ln();
            if d > 0.0 && p.rps * s_ms / 1000.0 >= RHO_CAP * c as f64 {
                // saturated: the queue may have grown without bound
                d = 0.0;
            }
            p.weight * d * d
        })
        .sum()
}

/// Golden-section minimum of `f` on `[lo, hi]` (unimodal in practice here).
fn golden(mut lo: f64, mut hi: f64, f: impl Fn(f64) -> f64) -> (f64, f64) {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut x1 = hi - g * (hi - lo);
    let mut x2 = lo + g * (hi - lo);
    let (mut f1, mut f2) = (f(x1), f(x2));
    for _ in 0..60 {
        if (hi - lo) <= 1e-6 * hi {
            break;
        }
        if f1 <= f2 {
            hi = x2;
            x2 = x1;
            f2 = f1;
            x1 = hi - g * (hi - lo);
            f1 = f(x1);
        } else {
            lo = x1;
            x1 = x2;
            f1 = f2;
            x2 = lo + g * (hi - lo);
            f2 = f(x2);
        }
    }
    if f1 <= f2 {
        (x1, f1)
    } else {
        (x2, f2)
    }
}

/// The point between `outside` and `inside` where `f` crosses zero,
/// by bisection (`f(inside) ≤ 0`); `outside` itself when `f(outside) ≤ 0`.
fn crossing(outside: f64, inside: f64, f: &impl Fn(f64) -> f64) -> f64 {
    if f(outside) <= 0.0 {
        return outside;
    }
    let (mut out, mut inn) = (outside, inside);
    for _ in 0..50 {
        let mid = 0.5 * (out + inn);
        if f(mid) <= 0.0 {
            inn = mid;
        } else {
            out = mid;
        }
    }
    0.5 * (out + inn)
}

/// Estimates one peer's capacity from its intervals (see the module doc).
pub fn estimate(intervals: &[PeerInterval]) -> CapacityEstimate {
    let rps = |i: &PeerInterval| i.requests as f64 * 1000.0 / i.interval_ms.max(1) as f64;
    let points: Vec<Point> = intervals
        .iter()
        .enumerate()
        .filter(|(_, i)| i.requests >= MIN_INTERVAL_REQUESTS && i.interval_ms > 0)
        .map(|(k, i)| Point {
            rps: match k.checked_sub(1).map(|j| &intervals[j]) {
                Some(prev) => SMOOTH * rps(prev) + (1.0 - SMOOTH) * rps(i),
                None => rps(i),
            },
            // integer ms: a mean below half a millisecond is noise
            ln_r: (i.response_msec as f64 / i.requests as f64).max(0.5).ln(),
            weight: i.requests as f64,
        })
        .collect();
    let m = points.len();
    if m < MIN_INTERVALS {
        return CapacityEstimate::Unknown {
            reason: format!(
                "{m} intervals with at least {MIN_INTERVAL_REQUESTS} requests, {MIN_INTERVALS} needed"
            ),
            highest_rps: None,
            intervals: m,
        };
    }
    let r_min = points
        .iter()
        .map(|p| p.ln_r.exp())
        .fold(f64::INFINITY, f64::min);
    let r_max = points.iter().map(|p| p.ln_r.exp()).fold(0.0, f64::max);
    let max_rps = points.iter().map(|p| p.rps).fold(0.0, f64::max);
    // profile over c
    let profile: Vec<(f64, f64)> = (1..=MAX_WORKERS)
        .map(|c| golden(0.1 * r_min, r_max, |s| sse(&points, s, c)))
        .collect();
    let (best, &(s_best, sse_min)) = profile
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
        .expect("MAX_WORKERS >= 1");
    let sigma2 = (sse_min / (m as f64 - 2.0)).max(1e-12);
    let bound = sse_min + CHI2_1_95 * sigma2;
    let accepted: Vec<usize> = (0..MAX_WORKERS)
        .filter(|&i| profile[i].1 <= bound)
        .collect();
    // For each accepted c the service times within the bound form an
    // interval around S(c) (the error is unimodal in S); μ = c/S over the
    // union of those is the profile interval of the capacity.
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for &i in &accepted {
        let c = i + 1;
        let (s_c, _) = profile[i];
        let f = |s: f64| sse(&points, s, c) - bound;
        let s_lo = crossing(0.1 * r_min, s_c, &f);
        let s_hi = crossing(r_max, s_c, &f);
        lo = lo.min(c as f64 * 1000.0 / s_hi);
        hi = hi.max(c as f64 * 1000.0 / s_lo);
    }
    let workers = best + 1;
    let max_utilisation = max_rps * s_best / 1000.0 / workers as f64;
    if max_utilisation > MAX_UTILISATION {
        return CapacityEstimate::Unknown {
            reason: format!(
                "inconsistent: it served up to {max_rps:.0} req/s in one interval, {:.0}% of the fitted {:.0} req/s (did its speed change over the log? noisy, degrading?)",
                max_utilisation * 100.0,
                workers as f64 * 1000.0 / s_best
            ),
            highest_rps: Some(max_rps),
            intervals: m,
        };
    }
    if accepted.contains(&(MAX_WORKERS - 1)) {
        return CapacityEstimate::Unknown {
            reason: format!(
                "the data do not bound its parallelism (never loaded enough, or its speed changed): highest throughput {max_rps:.0} req/s in one interval, mean response time {r_min:.1}-{r_max:.1} ms",
            ),
            highest_rps: Some(max_rps),
            intervals: m,
        };
    }
    if hi > MAX_INTERVAL_RATIO * lo {
        return CapacityEstimate::Unknown {
            reason: format!(
                "too uncertain: 95% interval {lo:.0}-{hi:.0} req/s is wider than a factor {MAX_INTERVAL_RATIO}"
            ),
            highest_rps: Some(max_rps),
            intervals: m,
        };
    }
    CapacityEstimate::Known {
        workers,
        service_ms: s_best,
        capacity_rps: workers as f64 * 1000.0 / s_best,
        interval_rps: (lo, hi),
        max_utilisation,
        intervals: m,
    }
}

/// Weights proportional to capacity, summing to 1: `w_p = μ_p / Σ_q μ_q`;
/// `None` when any peer's capacity is unknown (the caller keeps its
/// baseline then).
pub fn capacity_weights(estimates: &[CapacityEstimate]) -> Option<Vec<f64>> {
    let caps: Vec<f64> = estimates
        .iter()
        .map(CapacityEstimate::capacity_rps)
        .collect::<Option<_>>()?;
    let total: f64 = caps.iter().sum();
    (total > 0.0).then(|| caps.iter().map(|c| c / total).collect())
}

/// Per-upstream, per-peer intervals gathered from observations, for
/// [`estimate`].
#[derive(Debug, Clone, Default)]
pub struct CapacityData {
    /// `[u][p]` → the peer's intervals.
    pub peers: Vec<Vec<Vec<PeerInterval>>>,
}

impl CapacityData {
    /// Adds one observation's intervals.
    pub fn push(&mut self, o: &Observation) {
        if self.peers.is_empty() {
            self.peers = o.deltas.iter().map(|u| vec![Vec::new(); u.len()]).collect();
        }
        for (u, ps) in o.deltas.iter().enumerate() {
            for (p, c) in ps.iter().enumerate() {
                if let Some(v) = self.peers.get_mut(u).and_then(|u| u.get_mut(p)) {
                    v.push(PeerInterval::of(c, o.interval_ms));
                }
            }
        }
    }

    /// Estimates for every peer, `[u][p]`.
    pub fn estimates(&self) -> Vec<Vec<CapacityEstimate>> {
        self.peers
            .iter()
            .map(|u| u.iter().map(|p| estimate(p)).collect())
            .collect()
    }
}

/// The report lines of `deep-sched learn`: one per peer, then the
/// capacity-proportional weights of each upstream (or why there are none).
pub fn report(names: &[(String, Vec<String>)], estimates: &[Vec<CapacityEstimate>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "capacity per peer (M/M/c fit of latency against throughput; reported only, not used by the policy):\n",
    );
    for ((upstream, peers), ests) in names.iter().zip(estimates) {
        for (peer, e) in peers.iter().zip(ests) {
            let _ = match e {
                CapacityEstimate::Known {
                    workers,
                    service_ms,
                    capacity_rps,
                    interval_rps,
                    max_utilisation,
                    intervals,
                } => writeln!(
                    out,
                    "  {upstream} {peer}: {capacity_rps:.0} req/s (95% {:.0}-{:.0}) = {workers} workers x {service_ms:.1} ms; {intervals} intervals, utilisation up to {:.0}%",
                    interval_rps.0,
                    interval_rps.1,
                    max_utilisation * 100.0
                ),
                CapacityEstimate::Unknown { reason, .. } => {
                    writeln!(out, "  {upstream} {peer}: cannot estimate: {reason}")
                }
            };
        }
        let _ = match capacity_weights(ests) {
            Some(w) => writeln!(
                out,
                "  {upstream}: capacity-proportional weights {}",
                w.iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => writeln!(
                out,
                "  {upstream}: no capacity-proportional weights (a peer's capacity is unknown)"
            ),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_known_values() {
        // c = 1: C = ρ (M/M/1)
        for a in [0.1, 0.5, 0.9] {
            assert!((erlang_c(1, a) - a).abs() < 1e-12);
        }
        // c = 2, a = 1: C = 1/3 (a²/2 · 2/(2-1) / (1 + 1 + a²/2·2) = 1/3)
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // a textbook value: c = 10, a = 8 Erlangs → C ≈ 0.4092
        assert!(
            (erlang_c(10, 8.0) - 0.4092).abs() < 1e-3,
            "{}",
            erlang_c(10, 8.0)
        );
        assert_eq!(erlang_c(4, 0.0), 0.0);
    }

    #[test]
    fn mm1_response_time_is_s_over_one_minus_rho() {
        // S = 10 ms, λ = 50/s → ρ = 0.5, R = 20 ms
        assert!((mmc_response_ms(50.0, 10.0, 1) - 20.0).abs() < 1e-9);
        // held below saturation: finite at and past c/S
        assert!(mmc_response_ms(1000.0, 10.0, 1).is_finite());
    }

    #[test]
    fn weights_are_proportional_to_capacity_or_absent() {
        let known = |c: f64| CapacityEstimate::Known {
            workers: 1,
            service_ms: 1.0,
            capacity_rps: c,
            interval_rps: (c, c),
            max_utilisation: 0.5,
            intervals: 10,
        };
        let w = capacity_weights(&[known(300.0), known(100.0)]).unwrap();
        assert_eq!(w, vec![0.75, 0.25]);
        let unknown = CapacityEstimate::Unknown {
            reason: "x".into(),
            highest_rps: None,
            intervals: 0,
        };
        assert_eq!(capacity_weights(&[known(1.0), unknown]), None);
    }
}
