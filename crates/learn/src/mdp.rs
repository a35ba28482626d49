//! The estimated decision process and its solvers.
//!
//! From consecutive decisions `(sₜ, aₜ, rₜ₊₁, sₜ₊₁)`:
//! `P̂(s'|s,a) = (n(s,a,s') + α) / (n(s,a) + α·S)` (Laplace/Dirichlet
//! smoothing) and `R̂(s,a)` = mean reward after taking `a` in `s`.
//! Pairs never seen are not trusted: an action is *allowed* in a state only
//! if it was taken there at least `min_visits` times; a state with no
//! allowed action gets the pessimistic value `min R̂ / (1 − γ)` and the
//! policy's default action.
//!
//! Solvers: value iteration `V ← maxₐ R + γ P V` (Bellman 1957), policy
//! iteration (Howard 1960; exact evaluation by solving `(I − γPπ)V = Rπ`),
//! offline Q-learning over the logged transitions (Watkins 1989), and a
//! LinUCB contextual bandit (Li et al. 2010) — one ridge regression per arm.

use deep_sched_core::gmm::{cholesky, precision_cholesky_from_cov_cholesky};

/// A finite MDP estimated from data.
#[derive(Debug, Clone, PartialEq)]
pub struct Mdp {
    pub states: usize,
    pub actions: usize,
    /// `p[(s·A + a)·S + s']`.
    pub p: Vec<f64>,
    /// `r[s·A + a]`.
    pub r: Vec<f64>,
    /// Visits `n[s·A + a]`.
    pub n: Vec<u64>,
    /// `allowed[s·A + a]`.
    pub allowed: Vec<bool>,
}

/// One logged transition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub s: usize,
    pub a: usize,
    pub r: f64,
    pub s2: usize,
}

impl Mdp {
    /// Estimates the MDP from transitions.
    pub fn estimate(
        states: usize,
        actions: usize,
        data: &[Transition],
        alpha: f64,
        min_visits: u64,
    ) -> Mdp {
        let (sn, an) = (states, actions);
        let mut counts = vec![0.0; sn * an * sn];
        let mut n = vec![0u64; sn * an];
        let mut rsum = vec![0.0; sn * an];
        for t in data {
            counts[(t.s * an + t.a) * sn + t.s2] += 1.0;
            n[t.s * an + t.a] += 1;
            rsum[t.s * an + t.a] += t.r;
        }
        let mut p = vec![0.0; sn * an * sn];
        for sa in 0..sn * an {
            let denom = n[sa] as f64 + alpha * sn as f64;
            for s2 in 0..sn {
                p[sa * sn + s2] = if denom > 0.0 {
                    (counts[sa * sn + s2] + alpha) / denom
                } else {
                    1.0 / sn as f64
                };
            }
        }
        let r: Vec<f64> = (0..sn * an)
            .map(|sa| {
                if n[sa] > 0 {
                    rsum[sa] / n[sa] as f64
                } else {
                    0.0
                }
            })
            .collect();
        let allowed = n.iter().map(|&c| c >= min_visits.max(1)).collect();
        Mdp {
            states,
            actions,
            p,
            r,
            n,
            allowed,
        }
    }

    /// Lowers every reward by `β·σ/√n(s,a)`, with `σ` the standard deviation
    /// of all logged rewards: a lower confidence bound, so an action that
    /// looked good on two lucky intervals does not beat one that was tried
    /// fifty times and is nearly as good. `β = 0` leaves the means.
    pub fn pessimistic(mut self, data: &[Transition], beta: f64) -> Mdp {
        if beta <= 0.0 || data.len() < 2 {
            return self;
        }
        let n = data.len() as f64;
        let mean = data.iter().map(|t| t.r).sum::<f64>() / n;
        let sd = (data
            .iter()
            .map(|t| (t.r - mean) * (t.r - mean))
            .sum::<f64>()
            / (n - 1.0))
            .sqrt();
        for (r, &c) in self.r.iter_mut().zip(&self.n) {
            if c > 0 {
                *r -= beta * sd / (c as f64).sqrt();
            }
        }
        self
    }

    /// Anchors the policy to a baseline action `b` (equal weights): in every
    /// state, another action stays allowed only if its mean reward beats
    /// `b`'s by more than `κ·σ·√(1/nₐ + 1/n_b)`, with `σ²` the pooled
    /// variance of the two (Student's two-sample test, one-sided) — a test
    /// of "better than the baseline" in the spirit of SPIBB (Laroche et al.
    /// 2019). Only the two compared actions enter `σ`: a bad action's wild
    /// rewards do not hide a good one's small, steady gain. Where `b` was
    /// tried fewer than `min_visits` times in a state, `b`'s data over all
    /// states stand in. Without the test the table is noise among
    /// equivalent peers: with ~200 intervals over 27 weight vectors the
    /// best-looking vector on identical peers is whichever was lucky.
    /// `κ = 0`, or no data for `b`, leaves the allowed set as it was.
    pub fn anchor(mut self, data: &[Transition], b: usize, kappa: f64, min_visits: u64) -> Mdp {
        let (sn, an) = (self.states, self.actions);
        if kappa <= 0.0 || b >= an {
            return self;
        }
        let moments = RewardMoments::of(data, sn, an, b);
        if moments.baseline.n == 0 {
            return self;
        }
        for s in 0..sn {
            let mb = moments.baseline_in(s, min_visits);
            for a in (0..an).filter(|&a| a != b) {
                let sa = s * an + a;
                if self.allowed[sa] {
                    self.allowed[sa] = moments.pairs[sa].beats(mb, kappa);
                }
            }
        }
        self
    }

    /// Pools evidence across actions for the test of [`Mdp::anchor`]:
    /// `shares[a]` is action `a`'s share of traffic per peer (its weight
    /// vector divided by its sum). In every state with enough data, a
    /// linear model `r ≈ β₀ + Σᵢ βᵢ·shareᵢ` (the last share left out, as the
    /// shares sum to 1) is fitted to all of the state's rewards by least
    /// squares. An action refused by the anchor (yet tried `min_visits`
    /// times) is allowed again when the model predicts it beats the
    /// baseline `b` by more than `κ` standard errors of the predicted
    /// difference, `Δ = (xₐ − x_b)ᵀβ̂`, `Var Δ = σ̂²·(xₐ − x_b)ᵀ(XᵀX)⁻¹(xₐ − x_b)`,
    /// *and* its own mean reward is above the baseline's. Every vector that
    /// gave a slow peer more traffic then says something about giving it
    /// less, so a real gain is found with fewer samples per vector; the
    /// second condition keeps the model's extrapolation from admitting an
    /// action that did worse in its own right. Where the design is singular
    /// (fewer distinct share vectors than peers) or a state has fewer than
    /// `peers + 2` transitions, nothing changes. Run after [`Mdp::anchor`]
    /// with the same `b`, `κ` and `min_visits`.
    pub fn admit_by_share_model(
        mut self,
        data: &[Transition],
        b: usize,
        kappa: f64,
        min_visits: u64,
        shares: &[Vec<f64>],
    ) -> Mdp {
        let (sn, an) = (self.states, self.actions);
        if kappa <= 0.0 || b >= an || shares.len() != an {
            return self;
        }
        let p = shares[b].len();
        if p < 2 || shares.iter().any(|x| x.len() != p) {
            return self;
        }
        // regressors: 1, share₀ .. share_{p−2}
        let x = |a: usize| -> Vec<f64> {
            std::iter::once(1.0)
                .chain(shares[a][..p - 1].iter().copied())
                .collect()
        };
        let moments = RewardMoments::of(data, sn, an, b);
        if moments.baseline.n == 0 {
            return self;
        }
        let xb = x(b);
        for s in 0..sn {
            let rows = data.iter().filter(|t| t.s == s).map(|t| (x(t.a), t.r));
            let Some(fit) = LinearFit::new(rows, p) else {
                continue;
            };
            let mb = moments.baseline_in(s, min_visits);
            for a in (0..an).filter(|&a| a != b) {
                let sa = s * an + a;
                if self.allowed[sa] || self.n[sa] < min_visits.max(1) {
                    continue;
                }
                let d: Vec<f64> = x(a).iter().zip(&xb).map(|(u, v)| u - v).collect();
                let (delta, se) = fit.contrast(&d);
                self.allowed[sa] = delta > kappa * se && moments.pairs[sa].mean > mb.mean;
            }
        }
        self
    }

    /// The pessimistic value of a state without allowed actions.
    fn floor(&self, gamma: f64) -> f64 {
        let min = self
            .r
            .iter()
            .zip(&self.allowed)
            .filter(|(_, a)| **a)
            .map(|(r, _)| *r)
            .fold(f64::INFINITY, f64::min);
        if min.is_finite() {
            min / (1.0 - gamma)
        } else {
            0.0
        }
    }

    fn q(&self, s: usize, a: usize, v: &[f64], gamma: f64) -> f64 {
        let sa = s * self.actions + a;
        let row = &self.p[sa * self.states..(sa + 1) * self.states];
        self.r[sa] + gamma * row.iter().zip(v).map(|(p, v)| p * v).sum::<f64>()
    }

    /// The best allowed action in every state under `v` (`None`: none allowed).
    pub fn greedy(&self, v: &[f64], gamma: f64) -> Vec<Option<usize>> {
        (0..self.states)
            .map(|s| {
                (0..self.actions)
                    .filter(|&a| self.allowed[s * self.actions + a])
                    .map(|a| (a, self.q(s, a, v, gamma)))
                    .fold(None, |best: Option<(usize, f64)>, (a, q)| match best {
                        Some((_, bq)) if bq >= q => best,
                        _ => Some((a, q)),
                    })
                    .map(|(a, _)| a)
            })
            .collect()
    }

    /// Value iteration to `‖ΔV‖∞ < tol`.
    pub fn value_iteration(
        &self,
        gamma: f64,
        tol: f64,
        max_iter: usize,
    ) -> (Vec<Option<usize>>, Vec<f64>) {
        let floor = self.floor(gamma);
        let mut v = vec![0.0; self.states];
        for _ in 0..max_iter {
            let mut delta: f64 = 0.0;
            let next: Vec<f64> = (0..self.states)
                .map(|s| {
                    (0..self.actions)
                        .filter(|&a| self.allowed[s * self.actions + a])
                        .map(|a| self.q(s, a, &v, gamma))
                        .fold(f64::NEG_INFINITY, f64::max)
                })
                .map(|x| if x.is_finite() { x } else { floor })
                .collect();
            for (a, b) in next.iter().zip(&v) {
                delta = delta.max((a - b).abs());
            }
            v = next;
            if delta < tol {
                break;
            }
        }
        (self.greedy(&v, gamma), v)
    }

    /// Exact value of a policy: solves `(I − γPπ)V = Rπ`.
    pub fn evaluate(&self, policy: &[Option<usize>], gamma: f64) -> Vec<f64> {
        let n = self.states;
        let floor = self.floor(gamma);
        let mut m = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        for s in 0..n {
            m[s * n + s] = 1.0;
            match policy[s] {
                Some(a) => {
                    let sa = s * self.actions + a;
                    for s2 in 0..n {
                        m[s * n + s2] -= gamma * self.p[sa * n + s2];
                    }
                    b[s] = self.r[sa];
                }
                None => b[s] = floor,
            }
        }
        solve(&mut m, &mut b, n);
        b
    }

    /// The uniform policy's value: each allowed action with equal chance.
    pub fn evaluate_uniform(&self, gamma: f64) -> Vec<f64> {
        let n = self.states;
        let floor = self.floor(gamma);
        let mut m = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        for s in 0..n {
            m[s * n + s] = 1.0;
            let acts: Vec<usize> = (0..self.actions)
                .filter(|&a| self.allowed[s * self.actions + a])
                .collect();
            if acts.is_empty() {
                b[s] = floor;
                continue;
            }
            let w = 1.0 / acts.len() as f64;
            for a in acts {
                let sa = s * self.actions + a;
                for s2 in 0..n {
                    m[s * n + s2] -= gamma * w * self.p[sa * n + s2];
                }
                b[s] += w * self.r[sa];
            }
        }
        solve(&mut m, &mut b, n);
        b
    }

    /// Policy iteration from the first allowed action everywhere.
    pub fn policy_iteration(&self, gamma: f64, max_iter: usize) -> (Vec<Option<usize>>, Vec<f64>) {
        let mut pi: Vec<Option<usize>> = (0..self.states)
            .map(|s| (0..self.actions).find(|&a| self.allowed[s * self.actions + a]))
            .collect();
        let mut v = self.evaluate(&pi, gamma);
        for _ in 0..max_iter {
            // Switch only on a strict improvement, so the loop ends.
            let mut changed = false;
            #[allow(clippy::needless_range_loop)] // `s` indexes pi and the model
            for s in 0..self.states {
                let Some(cur) = pi[s] else { continue };
                let qc = self.q(s, cur, &v, gamma);
                for a in 0..self.actions {
                    if self.allowed[s * self.actions + a]
                        && self.q(s, a, &v, gamma) > qc + 1e-12 * (1.0 + qc.abs())
                    {
                        pi[s] = Some(a);
                        changed = true;
                        break;
                    }
                }
            }
            if !changed {
                break;
            }
            v = self.evaluate(&pi, gamma);
        }
        (pi, v)
    }
}

/// Gaussian elimination with partial pivoting; the solution replaces `b`.
fn solve(m: &mut [f64], b: &mut [f64], n: usize) {
    for c in 0..n {
        let piv = (c..n)
            .max_by(|&i, &j| m[i * n + c].abs().total_cmp(&m[j * n + c].abs()))
            .unwrap_or(c);
        if piv != c {
            for j in 0..n {
                m.swap(c * n + j, piv * n + j);
            }
            b.swap(c, piv);
        }
        let d = m[c * n + c];
        if d.abs() < 1e-300 {
            continue;
        }
        for r in c + 1..n {
            let f = m[r * n + c] / d;
            if f != 0.0 {
                for j in c..n {
                    m[r * n + j] -= f * m[c * n + j];
                }
                b[r] -= f * b[c];
            }
        }
    }
    for c in (0..n).rev() {
        let mut s = b[c];
        for j in c + 1..n {
            s -= m[c * n + j] * b[j];
        }
        b[c] = s / m[c * n + c];
    }
}

/// A weight vector's share of traffic per peer (each weight over their
/// sum; all zero for an all-zero vector), as [`Mdp::admit_by_share_model`]
/// takes them.
pub fn traffic_shares(weights: &[u32]) -> Vec<f64> {
    let total: f64 = weights.iter().map(|&x| f64::from(x)).sum();
    weights
        .iter()
        .map(|&x| f64::from(x) / total.max(1.0))
        .collect()
}

/// Ordinary least squares `y ≈ xᵀβ` by the normal equations, with the
/// core's Cholesky helpers for `(XᵀX)⁻¹ = U Uᵀ` (a `p×p` system with `p` =
/// peers of one upstream, at most 64: no linear-algebra crate needed).
struct LinearFit {
    /// `U` with `(XᵀX)⁻¹ = U Uᵀ` (upper, row-major `p×p`).
    u: Vec<f64>,
    beta: Vec<f64>,
    /// Residual variance `RSS / (n − p)`.
    sigma2: f64,
}

impl LinearFit {
    /// Fits `rows` of `(x, y)`, `x` of length `p`; `None` with fewer than
    /// `p + 2` rows or a singular design.
    fn new(rows: impl Iterator<Item = (Vec<f64>, f64)>, p: usize) -> Option<LinearFit> {
        let rows: Vec<(Vec<f64>, f64)> = rows.collect();
        let n = rows.len();
        if n < p + 2 {
            return None;
        }
        let mut xtx = vec![0.0; p * p];
        let mut xty = vec![0.0; p];
        for (x, y) in &rows {
            for i in 0..p {
                xty[i] += x[i] * y;
                for j in 0..p {
                    xtx[i * p + j] += x[i] * x[j];
                }
            }
        }
        // a pivot this small against the largest diagonal entry means a
        // singular design (fewer distinct share vectors than regressors)
        let scale = (0..p).map(|i| xtx[i * p + i]).fold(0.0, f64::max);
        let l = cholesky(&xtx, p)?;
        if (0..p).any(|i| l[i * p + i] * l[i * p + i] < 1e-9 * scale) {
            return None;
        }
        let u = precision_cholesky_from_cov_cholesky(&l, p);
        // β = U Uᵀ Xᵀy
        let uty = t_mul(&u, &xty, p);
        let beta = (0..p)
            .map(|i| (0..p).map(|j| u[i * p + j] * uty[j]).sum())
            .collect::<Vec<f64>>();
        let rss: f64 = rows
            .iter()
            .map(|(x, y)| {
                let e = y - x.iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>();
                e * e
            })
            .sum();
        Some(LinearFit {
            u,
            beta,
            sigma2: rss / (n - p) as f64,
        })
    }

    /// `dᵀβ̂` and its standard error `√(σ̂²·dᵀ(XᵀX)⁻¹d) = σ̂·‖Uᵀd‖`.
    fn contrast(&self, d: &[f64]) -> (f64, f64) {
        let utd = t_mul(&self.u, d, d.len());
        let q: f64 = utd.iter().map(|v| v * v).sum();
        let delta = d.iter().zip(&self.beta).map(|(a, b)| a * b).sum();
        (delta, (self.sigma2 * q).sqrt())
    }
}

/// `Uᵀv` for a row-major `p×p` matrix `U`.
fn t_mul(u: &[f64], v: &[f64], p: usize) -> Vec<f64> {
    (0..p)
        .map(|j| (0..p).map(|i| u[i * p + j] * v[i]).sum())
        .collect()
}

/// Rewards per (state, action) pair and of the baseline action `b` over
/// all states: what both tests against the baseline compare.
struct RewardMoments {
    /// `pairs[s·A + a]`.
    pairs: Vec<Moments>,
    /// `b` over all states.
    baseline: Moments,
    actions: usize,
    b: usize,
}

impl RewardMoments {
    fn of(data: &[Transition], states: usize, actions: usize, b: usize) -> RewardMoments {
        let mut pairs = vec![Moments::default(); states * actions];
        let mut baseline = Moments::default();
        for t in data {
            pairs[t.s * actions + t.a].add(t.r);
            if t.a == b {
                baseline.add(t.r);
            }
        }
        RewardMoments {
            pairs,
            baseline,
            actions,
            b,
        }
    }

    /// The baseline's rewards in state `s`, or over all states where it was
    /// tried there fewer than `min_visits` times.
    fn baseline_in(&self, s: usize, min_visits: u64) -> &Moments {
        let in_state = &self.pairs[s * self.actions + self.b];
        if in_state.n >= min_visits.max(1) {
            in_state
        } else {
            &self.baseline
        }
    }
}

/// Count, mean and sum of squared deviations of rewards (Welford's
/// update: one pass, no catastrophic cancellation).
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn add(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// Whether these rewards beat `other`'s by more than `κ` standard
    /// errors of the difference (pooled variance of the two samples); never
    /// with fewer than 3 rewards between them.
    fn beats(&self, other: &Moments, kappa: f64) -> bool {
        if self.n == 0 || other.n == 0 || self.n + other.n < 3 {
            return false;
        }
        let var = (self.m2 + other.m2) / (self.n + other.n - 2) as f64;
        let se = (var * (1.0 / self.n as f64 + 1.0 / other.n as f64)).sqrt();
        self.mean - other.mean > kappa * se
    }
}

/// Offline Q-learning: sweeps over the logged transitions with a decaying
/// learning rate `αₜ = 1 / (1 + visits(s,a))^0.6`; only logged actions get
/// values. Returns the greedy policy over actions seen in each state.
pub fn q_learning(
    states: usize,
    actions: usize,
    data: &[Transition],
    gamma: f64,
    sweeps: usize,
) -> (Vec<Option<usize>>, Vec<f64>) {
    let mut q = vec![0.0; states * actions];
    let mut visits = vec![0u64; states * actions];
    let mut seen = vec![false; states * actions];
    for t in data {
        seen[t.s * actions + t.a] = true;
    }
    let best = |q: &[f64], s: usize| -> f64 {
        (0..actions)
            .filter(|&a| seen[s * actions + a])
            .map(|a| q[s * actions + a])
            .fold(f64::NEG_INFINITY, f64::max)
    };
    for _ in 0..sweeps {
        for t in data {
            let sa = t.s * actions + t.a;
            visits[sa] += 1;
            let lr = 1.0 / (1.0 + visits[sa] as f64).powf(0.6);
            let next = best(&q, t.s2);
            let target = t.r + gamma * if next.is_finite() { next } else { 0.0 };
            q[sa] += lr * (target - q[sa]);
        }
    }
    let policy = (0..states)
        .map(|s| {
            (0..actions)
                .filter(|&a| seen[s * actions + a])
                .max_by(|&a, &b| {
                    q[s * actions + a]
                        .total_cmp(&q[s * actions + b])
                        .then(b.cmp(&a))
                })
        })
        .collect();
    (policy, q)
}

/// LinUCB: per arm a ridge regression `θₐ = Aₐ⁻¹ bₐ`, `Aₐ = I + Σ x xᵀ`,
/// `bₐ = Σ r x`; the score of an arm in context `x` is
/// `θₐᵀx + α·√(xᵀAₐ⁻¹x)`.
#[derive(Debug, Clone)]
pub struct LinUcb {
    d: usize,
    alpha: f64,
    a: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
}

impl LinUcb {
    pub fn new(arms: usize, d: usize, alpha: f64) -> LinUcb {
        let mut eye = vec![0.0; d * d];
        for i in 0..d {
            eye[i * d + i] = 1.0;
        }
        LinUcb {
            d,
            alpha,
            a: vec![eye; arms],
            b: vec![vec![0.0; d]; arms],
        }
    }

    /// Adds one observed (context, arm, reward).
    pub fn update(&mut self, x: &[f64], arm: usize, r: f64) {
        let d = self.d;
        for i in 0..d {
            for j in 0..d {
                self.a[arm][i * d + j] += x[i] * x[j];
            }
            self.b[arm][i] += r * x[i];
        }
    }

    /// `(θᵀx, xᵀA⁻¹x)` of an arm.
    fn predict(&self, arm: usize, x: &[f64]) -> (f64, f64) {
        let d = self.d;
        let mut m = self.a[arm].clone();
        let mut theta = self.b[arm].clone();
        solve(&mut m, &mut theta, d);
        let mut m = self.a[arm].clone();
        let mut ainv_x = x.to_vec();
        solve(&mut m, &mut ainv_x, d);
        let mean = theta.iter().zip(x).map(|(t, v)| t * v).sum();
        let var = ainv_x
            .iter()
            .zip(x)
            .map(|(a, v)| a * v)
            .sum::<f64>()
            .max(0.0);
        (mean, var)
    }

    /// The arm with the highest upper confidence bound (ties: lowest index).
    pub fn choose(&self, x: &[f64], arms: impl Iterator<Item = usize>) -> Option<usize> {
        arms.map(|a| {
            let (m, v) = self.predict(a, x);
            (a, m + self.alpha * v.sqrt())
        })
        .fold(None, |best: Option<(usize, f64)>, (a, s)| match best {
            Some((_, bs)) if bs >= s => best,
            _ => Some((a, s)),
        })
        .map(|(a, _)| a)
    }

    /// The arm with the highest expected reward (for deployment).
    pub fn best_mean(&self, x: &[f64], arms: impl Iterator<Item = usize>) -> Option<usize> {
        arms.map(|a| (a, self.predict(a, x).0))
            .fold(None, |best: Option<(usize, f64)>, (a, s)| match best {
                Some((_, bs)) if bs >= s => best,
                _ => Some((a, s)),
            })
            .map(|(a, _)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_mdp(rng: &mut ChaCha8Rng, s: usize, a: usize) -> Mdp {
        let mut p = vec![0.0; s * a * s];
        for sa in 0..s * a {
            let row: Vec<f64> = (0..s).map(|_| rng.gen::<f64>() + 0.01).collect();
            let sum: f64 = row.iter().sum();
            for (j, x) in row.iter().enumerate() {
                p[sa * s + j] = x / sum;
            }
        }
        Mdp {
            states: s,
            actions: a,
            p,
            r: (0..s * a).map(|_| rng.gen_range(-10.0..10.0)).collect(),
            n: vec![1; s * a],
            allowed: vec![true; s * a],
        }
    }

    /// Every deterministic policy, evaluated exactly.
    fn brute_force(m: &Mdp, gamma: f64) -> Vec<f64> {
        let mut best = vec![f64::NEG_INFINITY; m.states];
        let total = m.actions.pow(m.states as u32);
        for code in 0..total {
            let mut c = code;
            let pi: Vec<Option<usize>> = (0..m.states)
                .map(|_| {
                    let a = c % m.actions;
                    c /= m.actions;
                    Some(a)
                })
                .collect();
            let v = m.evaluate(&pi, gamma);
            for (b, x) in best.iter_mut().zip(v) {
                *b = b.max(x);
            }
        }
        best
    }

    #[test]
    fn value_and_policy_iteration_match_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            let m = random_mdp(&mut rng, 4, 3);
            let gamma = 0.9;
            let best = brute_force(&m, gamma);
            let (pv, _) = m.value_iteration(gamma, 1e-10, 10_000);
            let (pp, vp) = m.policy_iteration(gamma, 100);
            let vv = m.evaluate(&pv, gamma);
            for s in 0..4 {
                assert!((vv[s] - best[s]).abs() < 1e-6, "VI {vv:?} vs {best:?}");
                assert!((vp[s] - best[s]).abs() < 1e-6, "PI {vp:?} vs {best:?}");
            }
            assert_eq!(m.evaluate(&pp, gamma), vp);
        }
    }

    #[test]
    fn q_learning_finds_the_optimal_policy_of_a_known_mdp() {
        // Two states; action 1 in state 0 leads to state 1, where action 0
        // pays 10 and stays. Everything else pays 0 and returns to state 0.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut data = Vec::new();
        let mut s = 0;
        for _ in 0..4000 {
            let a = rng.gen_range(0..2);
            let (r, s2) = match (s, a) {
                (0, 1) => (0.0, 1),
                (1, 0) => (10.0, 1),
                _ => (0.0, 0),
            };
            data.push(Transition { s, a, r, s2 });
            s = s2;
        }
        let (pi, _) = q_learning(2, 2, &data, 0.9, 30);
        assert_eq!(pi, vec![Some(1), Some(0)]);
        let m = Mdp::estimate(2, 2, &data, 0.0, 1);
        let (pv, _) = m.value_iteration(0.9, 1e-9, 10_000);
        assert_eq!(pv, pi);
    }

    #[test]
    fn pessimism_prefers_well_tried_actions() {
        // In state 0, action 1 paid -10 twice (lucky); action 0 paid about
        // -12 fifty times. The means prefer action 1, the lower bound does
        // not trust it.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut data: Vec<Transition> = (0..50)
            .map(|_| Transition {
                s: 0,
                a: 0,
                r: -12.0 + rng.gen_range(-8.0..8.0),
                s2: 0,
            })
            .collect();
        data.extend((0..2).map(|_| Transition {
            s: 0,
            a: 1,
            r: -10.0,
            s2: 0,
        }));
        let plain = Mdp::estimate(1, 2, &data, 0.0, 2);
        assert_eq!(plain.value_iteration(0.5, 1e-9, 1000).0, vec![Some(1)]);
        let careful = Mdp::estimate(1, 2, &data, 0.0, 2).pessimistic(&data, 1.0);
        assert_eq!(careful.value_iteration(0.5, 1e-9, 1000).0, vec![Some(0)]);
    }

    /// `n` transitions in state `s` under action `a` with rewards
    /// `mean ± uniform noise of half-width 10`.
    fn pulls(rng: &mut ChaCha8Rng, s: usize, a: usize, mean: f64, n: usize) -> Vec<Transition> {
        (0..n)
            .map(|_| Transition {
                s,
                a,
                r: mean + rng.gen_range(-10.0..10.0),
                s2: s,
            })
            .collect()
    }

    #[test]
    fn anchoring_keeps_the_baseline_among_equivalent_actions() {
        // Action 0 (the baseline) and eight others pay the same on average.
        // The plain argmax picks whichever was lucky; the anchored one keeps
        // the baseline in nearly every trial.
        let (mut plain, mut anchored) = (0, 0);
        for seed in 0..100 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut data = pulls(&mut rng, 0, 0, -40.0, 30);
            for a in 1..9 {
                data.extend(pulls(&mut rng, 0, a, -40.0, 6));
            }
            let m = Mdp::estimate(1, 9, &data, 0.0, 2);
            plain += usize::from(m.value_iteration(0.5, 1e-9, 1000).0 == vec![Some(0)]);
            let m = m.anchor(&data, 0, 3.0, 2);
            anchored += usize::from(m.value_iteration(0.5, 1e-9, 1000).0 == vec![Some(0)]);
        }
        assert!(
            plain < 30,
            "plain argmax kept the baseline {plain}/100 times"
        );
        assert!(
            anchored >= 95,
            "anchored kept the baseline only {anchored}/100 times"
        );
    }

    #[test]
    fn anchoring_keeps_a_clearly_better_action() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut data = pulls(&mut rng, 0, 0, -40.0, 20);
        data.extend(pulls(&mut rng, 0, 1, -45.0, 20));
        data.extend(pulls(&mut rng, 0, 2, -28.0, 6));
        let m = Mdp::estimate(1, 3, &data, 0.0, 2).anchor(&data, 0, 2.0, 2);
        assert_eq!(m.allowed, vec![true, false, true]);
        assert_eq!(m.value_iteration(0.5, 1e-9, 1000).0, vec![Some(2)]);
    }

    #[test]
    fn anchoring_uses_the_baseline_of_all_states_where_a_state_lacks_it() {
        // State 1 never saw the baseline: its actions are tested against the
        // baseline's data in state 0 (mean -40). Action 1 (-41) fails, so
        // state 1 is left without an allowed action (the fallback's);
        // action 2 (-20) passes.
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut data = pulls(&mut rng, 0, 0, -40.0, 20);
        data.extend(pulls(&mut rng, 1, 1, -41.0, 10));
        let m = Mdp::estimate(2, 3, &data, 0.0, 2).anchor(&data, 0, 2.0, 2);
        assert_eq!(m.allowed, vec![true, false, false, false, false, false]);
        data.extend(pulls(&mut rng, 1, 2, -20.0, 10));
        let m = Mdp::estimate(2, 3, &data, 0.0, 2).anchor(&data, 0, 2.0, 2);
        assert_eq!(m.allowed, vec![true, false, false, false, false, true]);
    }

    /// The seven weight vectors of `weights=1,3` over three peers, equal
    /// weights first, as traffic shares.
    fn shares_1_3() -> Vec<Vec<f64>> {
        [
            [1, 1, 1],
            [1, 1, 3],
            [1, 3, 1],
            [1, 3, 3],
            [3, 1, 1],
            [3, 1, 3],
            [3, 3, 1],
        ]
        .iter()
        .map(|w| traffic_shares(w))
        .collect()
    }

    #[test]
    fn traffic_shares_are_weights_over_their_sum() {
        assert_eq!(traffic_shares(&[3, 3, 2]), vec![0.375, 0.375, 0.25]);
        assert_eq!(traffic_shares(&[0, 0]), vec![0.0, 0.0]);
    }

    #[test]
    fn linear_fit_recovers_exact_coefficients_and_contrasts() {
        // y = 2 + 3·x₁ − 5·x₂ exactly: β recovered, zero standard error
        let rows: Vec<(Vec<f64>, f64)> =
            [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]
                .iter()
                .map(|&(a, b)| (vec![1.0, a, b], 2.0 + 3.0 * a - 5.0 * b))
                .collect();
        let fit = LinearFit::new(rows.into_iter(), 3).unwrap();
        for (got, want) in fit.beta.iter().zip([2.0, 3.0, -5.0]) {
            assert!((got - want).abs() < 1e-9, "{:?}", fit.beta);
        }
        let (delta, se) = fit.contrast(&[0.0, 1.0, -1.0]);
        assert!((delta - 8.0).abs() < 1e-9 && se < 1e-6, "{delta} {se}");
        // too few rows, or a design that does not span the regressors
        let few = (0..4).map(|i| (vec![1.0, f64::from(i), 0.0], 1.0));
        assert!(LinearFit::new(few, 3).is_none());
        let flat = (0..20).map(|i| (vec![1.0, f64::from(i % 2), 0.5], f64::from(i)));
        assert!(
            LinearFit::new(flat, 3).is_none(),
            "x₂ is constant: singular"
        );
    }

    #[test]
    fn the_share_model_finds_a_slow_peer_with_few_samples_per_vector() {
        // Peer 3 is slow: mean reward falls 10 per unit of its share, noise
        // sd ≈ 2.9 — S6's 180 s log looks like this. With 20 tries per
        // vector 3/3/1 beats equal weights by ~2 standard errors alone,
        // short of κ = 3, but all seven vectors agree on the slope and
        // the model admits the vectors that give peer 3 less (3/3/1, or
        // 3/1/1 and 1/3/1, nearly as good), one of which then wins.
        let shares = shares_1_3();
        let (mut alone, mut pooled) = (0, 0);
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let data: Vec<Transition> = (0..7)
                .flat_map(|a| {
                    let mean = -10.0 - 10.0 * shares[a][2];
                    (0..20)
                        .map(|_| Transition {
                            s: 0,
                            a,
                            r: mean + rng.gen_range(-5.0..5.0),
                            s2: 0,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let better = |m: &Mdp| match m.value_iteration(0.5, 1e-9, 1000).0[0] {
                Some(a) => shares[a][2] < shares[0][2] - 1e-9,
                None => false,
            };
            let m = Mdp::estimate(1, 7, &data, 0.0, 2).anchor(&data, 0, 3.0, 2);
            alone += usize::from(better(&m));
            let m = m.admit_by_share_model(&data, 0, 3.0, 2, &shares);
            pooled += usize::from(better(&m));
        }
        assert!(
            alone < 25,
            "the per-vector test alone gained {alone}/50 times"
        );
        assert!(
            pooled >= 45,
            "with the share model it gained only {pooled}/50 times"
        );
    }

    #[test]
    fn the_share_model_keeps_equal_weights_on_identical_peers() {
        let shares = shares_1_3();
        let mut kept = 0;
        for seed in 0..100 {
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
            let data: Vec<Transition> = (0..7)
                .flat_map(|a| pulls(&mut rng, 0, a, -40.0, 25))
                .collect();
            let m = Mdp::estimate(1, 7, &data, 0.0, 2)
                .anchor(&data, 0, 3.0, 2)
                .admit_by_share_model(&data, 0, 3.0, 2, &shares);
            kept += usize::from(m.value_iteration(0.5, 1e-9, 1000).0 == vec![Some(0)]);
        }
        assert!(kept >= 95, "equal weights kept only {kept}/100 times");
    }

    #[test]
    fn the_share_model_needs_the_action_to_beat_the_baseline_itself() {
        // Six vectors show a steep slope in peer 3's share; 3/3/1 was tried
        // three times. The model predicts it best, but whether it is
        // admitted depends on its own mean against equal weights'.
        let shares = shares_1_3();
        let with_331 = |own_mean: f64| {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut data: Vec<Transition> = (0..6)
                .flat_map(|a| pulls(&mut rng, 0, a, -10.0 - 40.0 * shares[a][2], 40))
                .collect();
            data.extend(pulls(&mut rng, 0, 6, own_mean, 3));
            let x = |a: usize| vec![1.0, shares[a][0], shares[a][1]];
            let fit = LinearFit::new(data.iter().map(|t| (x(t.a), t.r)), 3).unwrap();
            let d: Vec<f64> = x(6).iter().zip(x(0)).map(|(u, v)| u - v).collect();
            let (delta, se) = fit.contrast(&d);
            assert!(
                delta > 3.0 * se,
                "the model must favour 3/3/1: {delta} ± {se}"
            );
            Mdp::estimate(1, 7, &data, 0.0, 2)
                .anchor(&data, 0, 3.0, 2)
                .admit_by_share_model(&data, 0, 3.0, 2, &shares)
                .allowed[6]
        };
        // equal weights average -10 - 40/3 ≈ -23.3
        assert!(!with_331(-35.0), "worse on its own: refused");
        assert!(with_331(-12.0), "better on its own: admitted");

        // only two distinct share vectors in the state: no model, no change
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut two = pulls(&mut rng, 0, 0, -20.0, 20);
        two.extend(pulls(&mut rng, 0, 6, -15.0, 20));
        let before = Mdp::estimate(1, 7, &two, 0.0, 2).anchor(&two, 0, 3.0, 2);
        let after = before
            .clone()
            .admit_by_share_model(&two, 0, 3.0, 2, &shares);
        assert_eq!(before, after);
    }

    #[test]
    fn anchoring_off_or_without_a_baseline_changes_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut data = pulls(&mut rng, 0, 1, -40.0, 5);
        data.extend(pulls(&mut rng, 0, 2, -41.0, 5));
        let m = Mdp::estimate(1, 3, &data, 0.0, 2);
        assert_eq!(
            m.clone().anchor(&data, 0, 2.0, 2),
            m,
            "baseline never tried"
        );
        assert_eq!(m.clone().anchor(&data, 7, 2.0, 2), m, "no baseline action");
        data.extend(pulls(&mut rng, 0, 0, -60.0, 5));
        let m = Mdp::estimate(1, 3, &data, 0.0, 2);
        assert_eq!(m.clone().anchor(&data, 0, 0.0, 2), m, "kappa 0");
    }

    #[test]
    fn unseen_actions_are_never_chosen() {
        let data = vec![
            Transition {
                s: 0,
                a: 0,
                r: -5.0,
                s2: 1,
            },
            Transition {
                s: 1,
                a: 1,
                r: -1.0,
                s2: 0,
            },
        ];
        let m = Mdp::estimate(3, 2, &data, 1.0, 1);
        let (pi, v) = m.value_iteration(0.9, 1e-9, 10_000);
        assert_eq!(pi, vec![Some(0), Some(1), None]);
        assert!(
            v[2] <= v[0] && v[2] <= v[1],
            "pessimistic value for the unseen state: {v:?}"
        );
    }

    #[test]
    fn linucb_finds_the_best_arm() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        // Arm a pays θa·x + noise; best arm depends on the context.
        let theta = [[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]];
        let mut bandit = LinUcb::new(3, 2, 0.5);
        let mut regret_late = 0.0;
        for t in 0..3000 {
            let x = [rng.gen::<f64>(), rng.gen::<f64>()];
            let arm = bandit.choose(&x, 0..3).unwrap();
            let pay = |a: usize| theta[a][0] * x[0] + theta[a][1] * x[1];
            let r = pay(arm) + rng.gen_range(-0.1..0.1);
            bandit.update(&x, arm, r);
            if t >= 2000 {
                let best = (0..3).map(pay).fold(f64::MIN, f64::max);
                regret_late += best - pay(arm);
            }
        }
        assert!(
            regret_late / 1000.0 < 0.03,
            "mean late regret {}",
            regret_late / 1000.0
        );
        assert_eq!(bandit.best_mean(&[1.0, 0.0], 0..3), Some(0));
        assert_eq!(bandit.best_mean(&[0.0, 1.0], 0..3), Some(1));
    }
}
