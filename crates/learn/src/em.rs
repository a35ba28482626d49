//! Gaussian mixture fitting by expectation–maximisation.
//!
//! Written here rather than taken from a crate because the E-step must use
//! the very scoring code the nginx module uses (`deep_sched_core::gmm`), the
//! result must be bit-for-bit reproducible from a seed, and the model must
//! come out in the policy's parameterisation.
//!
//! - Initialisation: k-means++ seeding (Arthur & Vassilvitskii 2007), then
//!   Lloyd iterations; the hard assignment gives the first M-step.
//! - E-step: `rᵢₖ = exp(ln wₖ + ln N(xᵢ|k) − ln p(xᵢ))` (log-sum-exp).
//! - M-step: `Nₖ = Σᵢ rᵢₖ`, `wₖ = Nₖ/n`, `μₖ = Σᵢ rᵢₖ xᵢ / Nₖ`,
//!   `Σₖ = Σᵢ rᵢₖ (xᵢ−μₖ)(xᵢ−μₖ)ᵀ / Nₖ + reg·I` (diag: the diagonal only).
//! - Stop when the mean log-likelihood improves by less than `tol`.
//! - `BIC = −2·ln L + p·ln n`, `AIC = −2·ln L + 2p`, with
//!   `p = (K−1) + K·D + K·D(D+1)/2` (full) or `(K−1) + 2·K·D` (diag).
//!
//! The data are one `n × D` matrix (`f64`, row-major): 1,000,000 samples of
//! 27 features take 216 MB. Responsibilities are not stored: each pass
//! accumulates the sufficient statistics (`Nₖ`, `Σ r x`, `Σ r x xᵀ`)
//! directly, in parallel over chunks, and responsibilities below 1e-10 are
//! skipped (they cannot move a statistic).

use deep_sched_core::gmm::{CovarianceKind, Gmm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Fitting parameters (checked before fitting).
#[derive(Debug, Clone, PartialEq)]
pub struct GmmParams {
    pub k: usize,
    pub kind: CovarianceKind,
    pub reg_covar: f64,
    pub tol: f64,
    pub max_iter: usize,
    pub n_init: usize,
    pub seed: u64,
}

/// A parameter problem.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("GMM parameters: {0}")]
pub struct ParamError(pub String);

impl GmmParams {
    /// Defaults: full covariance, reg 1e-6, tol 1e-3, 100 iterations, one
    /// initialisation, seed 0 (scikit-learn's defaults).
    pub fn new(k: usize) -> GmmParams {
        GmmParams {
            k,
            kind: CovarianceKind::Full,
            reg_covar: 1e-6,
            tol: 1e-3,
            max_iter: 100,
            n_init: 1,
            seed: 0,
        }
    }
    pub fn covariance(mut self, kind: CovarianceKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn reg_covar(mut self, r: f64) -> Self {
        self.reg_covar = r;
        self
    }
    pub fn tol(mut self, t: f64) -> Self {
        self.tol = t;
        self
    }
    pub fn max_iter(mut self, n: usize) -> Self {
        self.max_iter = n;
        self
    }
    pub fn n_init(mut self, n: usize) -> Self {
        self.n_init = n;
        self
    }
    pub fn seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }

    /// Checks the parameters against the data size.
    pub fn check(self, n: usize) -> Result<GmmParams, ParamError> {
        if self.k == 0 {
            return Err(ParamError("the number of states must be at least 1".into()));
        }
        if n < self.k {
            return Err(ParamError(format!(
                "{n} samples cannot fit {} states (need at least one sample per state)",
                self.k
            )));
        }
        if !(self.reg_covar >= 0.0 && self.reg_covar.is_finite()) {
            return Err(ParamError("reg_covar must be a non-negative number".into()));
        }
        if self.tol.is_nan() || self.tol <= 0.0 || self.max_iter == 0 || self.n_init == 0 {
            return Err(ParamError(
                "tol must be > 0, max_iter and n_init ≥ 1".into(),
            ));
        }
        Ok(self)
    }
}

/// A fitted mixture.
#[derive(Debug, Clone)]
pub struct FittedGmm {
    pub weights: Vec<f64>,
    pub means: Vec<Vec<f64>>,
    /// Full: `D×D` row-major; diag: `D` variances.
    pub covariances: Vec<Vec<f64>>,
    pub kind: CovarianceKind,
    /// Mean log-likelihood per sample after each iteration.
    pub curve: Vec<f64>,
    pub converged: bool,
    pub n: usize,
    pub d: usize,
}

impl FittedGmm {
    /// The scoring model (core).
    pub fn model(&self) -> Gmm {
        Gmm::from_covariances(self.kind, &self.weights, &self.means, &self.covariances)
            .expect("fitted covariances are regularised, hence positive definite")
    }

    /// Mean log-likelihood per sample at the end.
    pub fn mean_log_likelihood(&self) -> f64 {
        self.curve.last().copied().unwrap_or(f64::NEG_INFINITY)
    }

    /// Number of free parameters.
    pub fn n_parameters(&self) -> usize {
        let (k, d) = (self.weights.len(), self.d);
        let cov = match self.kind {
            CovarianceKind::Full => k * d * (d + 1) / 2,
            CovarianceKind::Diag => k * d,
        };
        (k - 1) + k * d + cov
    }

    /// Bayesian information criterion (lower is better).
    pub fn bic(&self) -> f64 {
        -2.0 * self.mean_log_likelihood() * self.n as f64
            + self.n_parameters() as f64 * (self.n as f64).ln()
    }

    /// Akaike information criterion (lower is better).
    pub fn aic(&self) -> f64 {
        -2.0 * self.mean_log_likelihood() * self.n as f64 + 2.0 * self.n_parameters() as f64
    }
}

/// Sufficient statistics of one pass.
struct Stats {
    nk: Vec<f64>,
    sx: Vec<f64>,
    /// Full: `K·D·D` (upper triangle filled); diag: `K·D`.
    sxx: Vec<f64>,
    ll: f64,
}

impl Stats {
    fn new(k: usize, d: usize, kind: CovarianceKind) -> Stats {
        Stats {
            nk: vec![0.0; k],
            sx: vec![0.0; k * d],
            sxx: vec![
                0.0;
                if kind == CovarianceKind::Full {
                    k * d * d
                } else {
                    k * d
                }
            ],
            ll: 0.0,
        }
    }

    fn add(mut self, o: Stats) -> Stats {
        for (a, b) in self.nk.iter_mut().zip(o.nk) {
            *a += b;
        }
        for (a, b) in self.sx.iter_mut().zip(o.sx) {
            *a += b;
        }
        for (a, b) in self.sxx.iter_mut().zip(o.sxx) {
            *a += b;
        }
        self.ll += o.ll;
        self
    }

    fn accumulate(&mut self, x: &[f64], c: usize, r: f64, kind: CovarianceKind) {
        let d = x.len();
        self.nk[c] += r;
        let sx = &mut self.sx[c * d..(c + 1) * d];
        for (s, xi) in sx.iter_mut().zip(x) {
            *s += r * xi;
        }
        match kind {
            CovarianceKind::Full => {
                let m = &mut self.sxx[c * d * d..(c + 1) * d * d];
                for i in 0..d {
                    let rxi = r * x[i];
                    let row = &mut m[i * d + i..(i + 1) * d];
                    for (s, xj) in row.iter_mut().zip(&x[i..]) {
                        *s += rxi * xj;
                    }
                }
            }
            CovarianceKind::Diag => {
                let m = &mut self.sxx[c * d..(c + 1) * d];
                for (s, xi) in m.iter_mut().zip(x) {
                    *s += r * xi * xi;
                }
            }
        }
    }
}

/// Parameters from sufficient statistics (the M-step).
fn m_step(
    st: &Stats,
    n: usize,
    d: usize,
    p: &GmmParams,
) -> (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let k = p.k;
    let mut weights = Vec::with_capacity(k);
    let mut means = Vec::with_capacity(k);
    let mut covs = Vec::with_capacity(k);
    for c in 0..k {
        // An emptied component keeps a tiny weight at the data's centre
        // with unit covariance rather than dividing by zero.
        let nk = st.nk[c].max(10.0 * f64::EPSILON);
        weights.push(nk / n as f64);
        let mu: Vec<f64> = st.sx[c * d..(c + 1) * d].iter().map(|s| s / nk).collect();
        let cov = match p.kind {
            CovarianceKind::Full => {
                let m = &st.sxx[c * d * d..(c + 1) * d * d];
                let mut cv = vec![0.0; d * d];
                for i in 0..d {
                    for j in i..d {
                        let v = m[i * d + j] / nk - mu[i] * mu[j];
                        cv[i * d + j] = v;
                        cv[j * d + i] = v;
                    }
                    cv[i * d + i] = cv[i * d + i].max(0.0) + p.reg_covar;
                }
                cv
            }
            CovarianceKind::Diag => st.sxx[c * d..(c + 1) * d]
                .iter()
                .zip(&mu)
                .map(|(s, m)| (s / nk - m * m).max(0.0) + p.reg_covar)
                .collect(),
        };
        means.push(mu);
        covs.push(cov);
    }
    let total: f64 = weights.iter().sum();
    for w in &mut weights {
        *w /= total;
    }
    (weights, means, covs)
}

/// Chunk size of the parallel passes (fixed, so the floating-point sums
/// are the same whatever the number of threads).
const CHUNK: usize = 1024;
/// Chunks whose statistics are held at once before they are summed (in
/// chunk order): bounds the pass's memory (`K·D²` per chunk for full
/// covariances) whatever the number of samples.
const CHUNKS_PER_BLOCK: usize = 32;

/// One E-step pass: sufficient statistics under `model`.
fn e_pass(x: &[f64], d: usize, model: &Gmm, kind: CovarianceKind) -> Stats {
    let k = model.k();
    let chunk_stats = |chunk: &[f64]| {
        let mut st = Stats::new(k, d, kind);
        let mut out = vec![0.0; k];
        let mut scratch = vec![0.0; model.scratch_len()];
        for xi in chunk.chunks_exact(d) {
            let ll = model.weighted_log_densities(xi, &mut out, &mut scratch);
            st.ll += ll;
            for (c, lw) in out.iter().enumerate() {
                let r = (lw - ll).exp();
                if r > 1e-10 {
                    st.accumulate(xi, c, r, kind);
                }
            }
        }
        st
    };
    x.chunks(CHUNK * CHUNKS_PER_BLOCK * d)
        .fold(Stats::new(k, d, kind), |total, block| {
            block
                .par_chunks(CHUNK * d)
                .map(chunk_stats)
                .collect::<Vec<_>>()
                .into_iter()
                .fold(total, Stats::add)
        })
}

/// Squared Euclidean distance `Σ (aᵢ − bᵢ)²`.
///
/// Summed in four interleaved partial sums (a fixed order, so results are
/// reproducible) which the compiler can keep in vector registers; a single
/// running sum forces one dependent addition per element, and k-means spends
/// nearly all of its time here.
fn dist2(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (a4, a_rest) = a.split_at(a.len() / 4 * 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (x, y) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for l in 0..4 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in a_rest.iter().zip(b_rest) {
        s += (x - y) * (x - y);
    }
    s
}

/// Lloyd iterations stop when the centres move less than this fraction of
/// the data's mean per-feature variance (scikit-learn's `KMeans` rule).
const KMEANS_TOL: f64 = 1e-4;
/// Upper bound on Lloyd iterations.
const KMEANS_MAX_ITER: usize = 100;

/// Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; the greedy
/// variant tries `2 + ⌊ln k⌋` candidates per step, drawn with probability
/// `∝ D(x)²`, and keeps the one that lowers the potential `Σ D(x)²` most),
/// then Lloyd iterations; returns hard labels.
///
/// The greedy trials matter: with plain k-means++ EM started on 27 states
/// regularly ends in a visibly worse local optimum (two true states merged).
fn kmeans(x: &[f64], d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let n = x.len() / d;
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let trials = 2 + (k as f64).ln() as usize;
    let mut centres: Vec<f64> = row(rng.gen_range(0..n)).to_vec();
    let mut best: Vec<f64> = x.par_chunks(d).map(|xi| dist2(xi, &centres[..d])).collect();
    let mut potential: f64 = best.iter().sum();
    for _ in 1..k {
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                if potential <= 0.0 {
                    return rng.gen_range(0..n);
                }
                let mut t = rng.gen::<f64>() * potential;
                for (i, b) in best.iter().enumerate() {
                    if t < *b {
                        return i;
                    }
                    t -= b;
                }
                n - 1
            })
            .collect();
        // Potential after adding each candidate; keep the lowest.
        let (pick, pick_best, pick_pot) = candidates
            .iter()
            .map(|&c| {
                let cx = row(c);
                let nb: Vec<f64> = x
                    .par_chunks(d)
                    .zip(best.par_iter())
                    .map(|(xi, b)| b.min(dist2(xi, cx)))
                    .collect();
                let pot = nb.iter().sum::<f64>();
                (c, nb, pot)
            })
            .reduce(|a, b| if b.2 < a.2 { b } else { a })
            .expect("at least two trials");
        centres.extend_from_slice(row(pick));
        best = pick_best;
        potential = pick_pot;
    }
    // Mean per-feature variance, for the stopping rule.
    let mut mean = vec![0.0; d];
    for xi in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(xi) {
            *m += v / n as f64;
        }
    }
    let var = x.chunks_exact(d).map(|xi| dist2(xi, &mean)).sum::<f64>() / (n * d) as f64;
    let shift_tol = KMEANS_TOL * var * d as f64;
    let mut labels = vec![0usize; n];
    for _ in 0..KMEANS_MAX_ITER {
        labels = x
            .par_chunks(d)
            .map(|xi| {
                (0..k)
                    .map(|c| (c, dist2(xi, &centres[c * d..(c + 1) * d])))
                    .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a })
                    .0
            })
            .collect();
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0usize; k];
        for (xi, &l) in x.chunks_exact(d).zip(&labels) {
            counts[l] += 1;
            for (s, v) in sums[l * d..(l + 1) * d].iter_mut().zip(xi) {
                *s += v;
            }
        }
        let mut shift = 0.0;
        for c in 0..k {
            if counts[c] > 0 {
                for j in 0..d {
                    let new = sums[c * d + j] / counts[c] as f64;
                    shift += (new - centres[c * d + j]).powi(2);
                    centres[c * d + j] = new;
                }
            }
        }
        if shift <= shift_tol {
            break;
        }
    }
    labels
}

/// Fits a mixture to the rows of `x` (`n × d`, row-major).
pub fn fit(
    x: &[f64],
    d: usize,
    params: &GmmParams,
    mut on_iter: impl FnMut(usize, f64),
) -> FittedGmm {
    let n = x.len() / d;
    let mut best: Option<FittedGmm> = None;
    for init in 0..params.n_init {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed.wrapping_add(init as u64));
        let labels = kmeans(x, d, params.k, &mut rng);
        let mut st = Stats::new(params.k, d, params.kind);
        for (i, &l) in labels.iter().enumerate() {
            st.accumulate(&x[i * d..(i + 1) * d], l, 1.0, params.kind);
        }
        let (mut w, mut m, mut c) = m_step(&st, n, d, params);
        let mut curve = Vec::new();
        let mut converged = false;
        for it in 0..params.max_iter {
            let model = Gmm::from_covariances(params.kind, &w, &m, &c)
                .expect("regularised covariances are positive definite");
            let st = e_pass(x, d, &model, params.kind);
            let ll = st.ll / n as f64;
            on_iter(it, ll);
            let prev = curve.last().copied();
            curve.push(ll);
            (w, m, c) = m_step(&st, n, d, params);
            if let Some(p) = prev {
                if (ll - p).abs() < params.tol {
                    converged = true;
                    break;
                }
            }
        }
        // Score the final parameters too, so the curve ends on the model
        // that is returned.
        let model = Gmm::from_covariances(params.kind, &w, &m, &c)
            .expect("regularised covariances are positive definite");
        curve.push(e_pass(x, d, &model, params.kind).ll / n as f64);
        let fitted = FittedGmm {
            weights: w,
            means: m,
            covariances: c,
            kind: params.kind,
            curve,
            converged,
            n,
            d,
        };
        if best
            .as_ref()
            .is_none_or(|b| fitted.mean_log_likelihood() > b.mean_log_likelihood())
        {
            best = Some(fitted);
        }
    }
    best.expect("n_init >= 1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, Normal};

    /// Samples from a known 3-component mixture in 2-D.
    fn sample(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres = [[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]];
        let sds = [[1.0, 0.5], [0.5, 1.0], [0.8, 0.8]];
        let weights = [0.5, 0.3, 0.2];
        let mut x = Vec::with_capacity(n * 2);
        for _ in 0..n {
            let u: f64 = rng.gen();
            let c = if u < weights[0] {
                0
            } else if u < weights[0] + weights[1] {
                1
            } else {
                2
            };
            for j in 0..2 {
                x.push(
                    Normal::new(centres[c][j], sds[c][j])
                        .unwrap()
                        .sample(&mut rng),
                );
            }
        }
        x
    }

    #[test]
    fn recovers_a_known_mixture() {
        let x = sample(6000, 1);
        let p = GmmParams::new(3).seed(3).check(3000).unwrap();
        let g = fit(&x, 2, &p, |_, _| {});
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by(|a, b| {
            g.means[*a][0]
                .total_cmp(&g.means[*b][0])
                .then(g.means[*a][1].total_cmp(&g.means[*b][1]))
        });
        // Sorted by x: (-5,0), (0,5), (5,0).
        let want_means = [[-5.0, 0.0], [0.0, 5.0], [5.0, 0.0]];
        let want_w = [0.5, 0.3, 0.2];
        let want_var = [[1.0, 0.25], [0.25, 1.0], [0.64, 0.64]];
        for (slot, &c) in order.iter().enumerate() {
            assert!(
                (g.weights[c] - want_w[slot]).abs() < 0.03,
                "weights {:?}",
                g.weights
            );
            for j in 0..2 {
                assert!(
                    (g.means[c][j] - want_means[slot][j]).abs() < 0.1,
                    "means {:?}",
                    g.means
                );
                let var = g.covariances[c][j * 2 + j];
                assert!(
                    (var - want_var[slot][j]).abs() < 0.1 * want_var[slot][j] + 0.05,
                    "var {var}"
                );
            }
        }
        assert!(g.converged);
    }

    #[test]
    fn log_likelihood_never_decreases() {
        let x = sample(2000, 2);
        for kind in [CovarianceKind::Full, CovarianceKind::Diag] {
            let p = GmmParams::new(5)
                .covariance(kind)
                .tol(1e-9)
                .max_iter(60)
                .seed(1)
                .check(2000)
                .unwrap();
            let g = fit(&x, 2, &p, |_, _| {});
            for w in g.curve.windows(2) {
                assert!(w[1] >= w[0] - 1e-9, "{kind:?}: {:?}", g.curve);
            }
        }
    }

    #[test]
    fn same_seed_same_model() {
        let x = sample(1500, 3);
        let p = GmmParams::new(4).seed(9).check(1500).unwrap();
        let a = fit(&x, 2, &p, |_, _| {});
        let b = fit(&x, 2, &p, |_, _| {});
        assert_eq!(a.means, b.means);
        assert_eq!(a.covariances, b.covariances);
    }

    #[test]
    fn bic_prefers_the_true_number_of_components() {
        let x = sample(3000, 4);
        let bic = |k| {
            let p = GmmParams::new(k).seed(2).n_init(2).check(3000).unwrap();
            fit(&x, 2, &p, |_, _| {}).bic()
        };
        let (b1, b3, b6) = (bic(1), bic(3), bic(6));
        assert!(b3 < b1 && b3 < b6, "BIC 1:{b1} 3:{b3} 6:{b6}");
    }

    #[test]
    fn parameters_are_checked() {
        assert!(GmmParams::new(0).check(10).is_err());
        assert!(GmmParams::new(5).check(3).is_err());
        assert!(GmmParams::new(2).reg_covar(-1.0).check(10).is_err());
        assert!(GmmParams::new(2).tol(0.0).check(10).is_err());
    }
}
