//! Gaussian mixture scoring, shared by the module (classification once per
//! interval) and the learner (the E-step), so both compute the same numbers.
//!
//! Each component keeps the Cholesky factor `U` of its precision
//! (`Σ⁻¹ = U Uᵀ`, `U` upper triangular, as scikit-learn's
//! `precisions_cholesky_`), so
//!
//! ```text
//! log N(x | μ, Σ) = −½·D·ln 2π + ln det U − ½·‖(x − μ)ᵀ U‖²,   ln det U = Σᵢ ln Uᵢᵢ
//! ```
//!
//! and `(x − μ)ᵀU = xᵀU − μᵀU` with `μᵀU` precomputed. Mixture scores are
//! combined with log-sum-exp, so no probability ever underflows.

/// `ln(2π)`.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// How component covariances are parameterised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CovarianceKind {
    /// A full `D×D` covariance per component.
    Full,
    /// A diagonal covariance (`D` variances) per component.
    Diag,
}

/// Why a mixture could not be built (the caller adds the file and path).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{problem}", component.map(|c| format!("component {c}: ")).unwrap_or_default())]
pub struct GmmError {
    /// Component index, when the problem is one component's.
    pub component: Option<usize>,
    /// What is wrong.
    pub problem: String,
}

/// `ln Σᵢ exp(xᵢ)`, stable for any finite inputs (−∞ for an empty slice or
/// all −∞).
pub fn log_sum_exp(xs: &[f64]) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Cholesky factor `L` (lower, row-major) of a symmetric positive-definite
/// `D×D` matrix `a` (row-major): `a = L Lᵀ`. `None` if not positive definite.
pub fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// `U = L⁻ᵀ` (upper, row-major) from a lower Cholesky factor `L` of `Σ`, so
/// that `Σ⁻¹ = U Uᵀ`.
pub fn precision_cholesky_from_cov_cholesky(l: &[f64], d: usize) -> Vec<f64> {
    // Solve L M = I column by column (M = L⁻¹, lower), then U = Mᵀ.
    let mut m = vec![0.0; d * d];
    for c in 0..d {
        for i in c..d {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * d + k] * m[k * d + c];
            }
            m[i * d + c] = s / l[i * d + i];
        }
    }
    let mut u = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            u[j * d + i] = m[i * d + j];
        }
    }
    u
}

/// `Σ aᵢ·bᵢ` with four partial sums (a fixed association, so the result is
/// the same on every machine, and the compiler can keep the sums in vector
/// registers).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// One Gaussian component, precomputed for scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct Component {
    /// `ln wₖ` (mixture weight).
    pub log_weight: f64,
    /// Mean `μ`.
    pub mean: Vec<f64>,
    /// `U` (full: `D×D` upper, row-major) or `1/σ` per dimension (diag).
    pub prec_chol: Vec<f64>,
    /// `μᵀU` (full) or `μ/σ` (diag).
    mu_u: Vec<f64>,
    /// Full only: the columns of `U` (rows of `Uᵀ`, lower triangle) packed
    /// one after the other, so `(xᵀU)ⱼ` is one contiguous dot product.
    ut_packed: Vec<f64>,
    /// `−½·D·ln 2π + ln det U`.
    log_norm: f64,
}

/// A mixture ready for scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct Gmm {
    /// Dimension.
    pub d: usize,
    /// Covariance parameterisation.
    pub kind: CovarianceKind,
    /// Components (states), in order.
    pub components: Vec<Component>,
    /// Full only: components scored together by the kernel (8 or 16,
    /// whichever pads `K` less; 16 on a tie).
    lanes: usize,
    /// Full only: every component's `U` laid out for scoring all
    /// components at once, `lanes` components at a time: for column `j`,
    /// for each block of `lanes` components, for `i ≤ j`, the values
    /// `Uₖ[i][j]` of the block's components (zero past the last
    /// component). `(xᵀUₖ)ⱼ` of a block is then a sum over `i` of `xᵢ` times
    /// one contiguous `[f64; lanes]`, accumulated in registers.
    batched: Vec<f64>,
    /// Full only: `−(μₖᵀUₖ)ⱼ` at `[(j·blocks + b)·lanes + lane]`, the
    /// starting value of each accumulator.
    batched_neg_mu_u: Vec<f64>,
}

/// How many components the full-covariance kernel scores together: 8 or
/// 16 `f64` accumulators fit in the vector registers of any x86-64 or
/// aarch64 (16 is ~15% faster for K = 27, 8 pads less for small K).
fn lanes_for(k: usize) -> usize {
    if k.div_ceil(8) * 8 < k.div_ceil(16) * 16 {
        8
    } else {
        16
    }
}

/// The full-covariance kernel for blocks of `L` components: for each
/// column `j` and block, `yₖ = (xᵀUₖ − μₖᵀUₖ)ⱼ` accumulates in registers over
/// `i ≤ j` (one contiguous load per `xᵢ`, no stores), then `yₖ²` is added
/// to the block's squared norms `sq` (`blocks·L` values).
fn full_kernel<const L: usize>(x: &[f64], batched: &[f64], neg_mu_u: &[f64], sq: &mut [f64]) {
    sq.fill(0.0);
    let mut off = 0;
    let mut starts = neg_mu_u.chunks_exact(L);
    for j in 0..x.len() {
        for norms in sq.chunks_exact_mut(L) {
            let mut acc: [f64; L] = starts
                .next()
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0.0; L]);
            let len = (j + 1) * L;
            let rows = batched[off..off + len].chunks_exact(L);
            off += len;
            for (xi, row) in x.iter().zip(rows) {
                for (a, u) in acc.iter_mut().zip(row) {
                    *a += xi * u;
                }
            }
            for (n, a) in norms.iter_mut().zip(&acc) {
                *n += a * a;
            }
        }
    }
}

fn finite(xs: &[f64]) -> bool {
    xs.iter().all(|x| x.is_finite())
}

impl Gmm {
    /// Builds a mixture from weights, means and precision Cholesky factors
    /// (`prec_chol[k]`: `D×D` row-major upper `U` for full, `D` values
    /// `1/σ` for diag).
    pub fn from_precisions_cholesky(
        kind: CovarianceKind,
        weights: &[f64],
        means: &[Vec<f64>],
        prec_chol: &[Vec<f64>],
    ) -> Result<Gmm, GmmError> {
        let k = weights.len();
        if k == 0 {
            return Err(GmmError {
                component: None,
                problem: "the mixture has no components".into(),
            });
        }
        let d = means.first().map_or(0, Vec::len);
        if d == 0 {
            return Err(GmmError {
                component: Some(0),
                problem: "the mean has no dimensions".into(),
            });
        }
        if means.len() != k || prec_chol.len() != k {
            return Err(GmmError {
                component: None,
                problem: format!(
                    "{k} weights but {} means and {} precision factors",
                    means.len(),
                    prec_chol.len()
                ),
            });
        }
        let mut components = Vec::with_capacity(k);
        for (c, ((w, mean), u)) in weights.iter().zip(means).zip(prec_chol).enumerate() {
            let err = |problem: String| GmmError {
                component: Some(c),
                problem,
            };
            if mean.len() != d {
                return Err(err(format!(
                    "mean has {} dimensions, expected {d}",
                    mean.len()
                )));
            }
            if !finite(mean) || !finite(u) || !w.is_finite() {
                return Err(err("contains a value that is not a finite number".into()));
            }
            if *w <= 0.0 {
                return Err(err(format!("mixture weight {w} is not positive")));
            }
            let (mu_u, log_det) = match kind {
                CovarianceKind::Full => {
                    if u.len() != d * d {
                        return Err(err(format!(
                            "precision factor has {} values, expected {}",
                            u.len(),
                            d * d
                        )));
                    }
                    let mut log_det = 0.0;
                    for i in 0..d {
                        let diag = u[i * d + i];
                        if diag <= 0.0 {
                            return Err(err("precision factor is not positive definite".into()));
                        }
                        log_det += diag.ln();
                        if (0..i).any(|j| u[i * d + j] != 0.0) {
                            return Err(err("precision factor is not upper triangular".into()));
                        }
                    }
                    let mut mu_u = vec![0.0; d];
                    for i in 0..d {
                        for j in i..d {
                            mu_u[j] += mean[i] * u[i * d + j];
                        }
                    }
                    (mu_u, log_det)
                }
                CovarianceKind::Diag => {
                    if u.len() != d {
                        return Err(err(format!(
                            "precision factor has {} values, expected {d}",
                            u.len()
                        )));
                    }
                    if u.iter().any(|&x| x <= 0.0) {
                        return Err(err("precision factor is not positive".into()));
                    }
                    (
                        mean.iter().zip(u).map(|(m, s)| m * s).collect(),
                        u.iter().map(|x| x.ln()).sum(),
                    )
                }
            };
            let ut_packed = match kind {
                CovarianceKind::Full => (0..d)
                    .flat_map(|j| (0..=j).map(move |i| u[i * d + j]))
                    .collect(),
                CovarianceKind::Diag => Vec::new(),
            };
            components.push(Component {
                log_weight: w.ln(),
                mean: mean.clone(),
                prec_chol: u.clone(),
                mu_u,
                ut_packed,
                log_norm: -0.5 * d as f64 * LN_2PI + log_det,
            });
        }
        let lanes = lanes_for(k);
        let mut batched = Vec::new();
        let mut batched_neg_mu_u = Vec::new();
        if kind == CovarianceKind::Full {
            let blocks = k.div_ceil(lanes);
            // Value of lane `l` of block `b`: component `b·lanes + l`, or 0.
            let lane = |b: usize, l: usize, f: &dyn Fn(&Component) -> f64| {
                components.get(b * lanes + l).map_or(0.0, f)
            };
            batched.reserve(blocks * lanes * d * (d + 1) / 2);
            for j in 0..d {
                for b in 0..blocks {
                    batched_neg_mu_u.extend((0..lanes).map(|l| lane(b, l, &|c| -c.mu_u[j])));
                    for i in 0..=j {
                        batched.extend((0..lanes).map(|l| lane(b, l, &|c| c.prec_chol[i * d + j])));
                    }
                }
            }
        }
        Ok(Gmm {
            d,
            kind,
            components,
            lanes,
            batched,
            batched_neg_mu_u,
        })
    }

    /// Builds a mixture from covariances (`covs[k]`: `D×D` row-major for
    /// full, `D` variances for diag); fails on a matrix that is not
    /// symmetric positive definite.
    pub fn from_covariances(
        kind: CovarianceKind,
        weights: &[f64],
        means: &[Vec<f64>],
        covs: &[Vec<f64>],
    ) -> Result<Gmm, GmmError> {
        let d = means.first().map_or(0, Vec::len);
        let mut prec = Vec::with_capacity(covs.len());
        for (c, cov) in covs.iter().enumerate() {
            let err = |problem: String| GmmError {
                component: Some(c),
                problem,
            };
            if !finite(cov) {
                return Err(err("contains a value that is not a finite number".into()));
            }
            match kind {
                CovarianceKind::Full => {
                    if cov.len() != d * d {
                        return Err(err(format!(
                            "covariance has {} values, expected {d}x{d}",
                            cov.len()
                        )));
                    }
                    for i in 0..d {
                        for j in 0..i {
                            let (a, b) = (cov[i * d + j], cov[j * d + i]);
                            if (a - b).abs() > 1e-9 * (1.0 + a.abs().max(b.abs())) {
                                return Err(err(format!(
                                    "covariance is not symmetric at [{i}][{j}]"
                                )));
                            }
                        }
                    }
                    let l = cholesky(cov, d)
                        .ok_or_else(|| err("covariance is not positive definite".into()))?;
                    prec.push(precision_cholesky_from_cov_cholesky(&l, d));
                }
                CovarianceKind::Diag => {
                    if cov.len() != d {
                        return Err(err(format!(
                            "covariance has {} variances, expected {d}",
                            cov.len()
                        )));
                    }
                    if cov.iter().any(|&v| v <= 0.0) {
                        return Err(err(
                            "covariance is not positive definite (a variance is not positive)"
                                .into(),
                        ));
                    }
                    prec.push(cov.iter().map(|v| 1.0 / v.sqrt()).collect());
                }
            }
        }
        Self::from_precisions_cholesky(kind, weights, means, &prec)
    }

    /// Number of components.
    pub fn k(&self) -> usize {
        self.components.len()
    }

    /// `ln N(x | μₖ, Σₖ)` (without the mixture weight). `scratch` needs `D`
    /// values; nothing is allocated.
    pub fn log_density(&self, k: usize, x: &[f64], scratch: &mut [f64]) -> f64 {
        let c = &self.components[k];
        let d = self.d;
        let y = &mut scratch[..d];
        match self.kind {
            CovarianceKind::Full => {
                let mut off = 0;
                for (j, yj) in y.iter_mut().enumerate() {
                    let col = &c.ut_packed[off..off + j + 1];
                    off += j + 1;
                    *yj = dot(col, &x[..=j]) - c.mu_u[j];
                }
            }
            CovarianceKind::Diag => {
                for (((y, xi), s), m) in y.iter_mut().zip(x).zip(&c.prec_chol).zip(&c.mu_u) {
                    *y = xi * s - m;
                }
            }
        }
        let sq: f64 = y.iter().map(|v| v * v).sum();
        c.log_norm - 0.5 * sq
    }

    /// Weighted log densities `ln wₖ + ln N(x | k)` into `out` (K values)
    /// and their log-sum-exp, the log-likelihood `ln p(x)`. `scratch` needs
    /// [`Gmm::scratch_len`] values (`K` rounded up to a multiple of 8 or 16
    /// for a full mixture, `D` for diagonal); nothing is
    /// allocated.
    pub fn weighted_log_densities(&self, x: &[f64], out: &mut [f64], scratch: &mut [f64]) -> f64 {
        let (k, d) = (self.k(), self.d);
        match self.kind {
            CovarianceKind::Full => {
                let sq = &mut scratch[..k.div_ceil(self.lanes) * self.lanes];
                let (x, b, m) = (&x[..d], &self.batched, &self.batched_neg_mu_u);
                if self.lanes == 8 {
                    full_kernel::<8>(x, b, m, sq);
                } else {
                    full_kernel::<16>(x, b, m, sq);
                }
                let out = &mut out[..k];
                out.copy_from_slice(&sq[..k]);
                for (o, comp) in out.iter_mut().zip(&self.components) {
                    *o = comp.log_weight + comp.log_norm - 0.5 * *o;
                }
            }
            CovarianceKind::Diag => {
                for (c, o) in out.iter_mut().enumerate().take(k) {
                    *o = self.components[c].log_weight + self.log_density(c, x, scratch);
                }
            }
        }
        log_sum_exp(&out[..k])
    }

    /// Scratch size [`Gmm::weighted_log_densities`] and
    /// [`Gmm::classify_with`] need.
    pub fn scratch_len(&self) -> usize {
        match self.kind {
            CovarianceKind::Full => self.k().div_ceil(self.lanes) * self.lanes,
            CovarianceKind::Diag => self.d,
        }
    }

    /// The most likely component and `ln p(x)`. `out` needs K values and
    /// `scratch` [`Gmm::scratch_len`] values; nothing is allocated.
    pub fn classify_with(&self, x: &[f64], out: &mut [f64], scratch: &mut [f64]) -> (usize, f64) {
        let ll = self.weighted_log_densities(x, out, scratch);
        let best = out[..self.k()]
            .iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0;
        (best, ll)
    }

    /// As [`Gmm::classify_with`], allocating its buffers.
    pub fn classify(&self, x: &[f64]) -> (usize, f64) {
        let mut out = vec![0.0; self.k()];
        let mut scratch = vec![0.0; self.scratch_len()];
        self.classify_with(x, &mut out, &mut scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_log_density(x: &[f64], mean: &[f64], cov: &[f64], d: usize) -> f64 {
        // Via the inverse computed by Gauss-Jordan and the determinant from
        // the Cholesky factor: an independent route to the same number.
        let l = cholesky(cov, d).unwrap();
        let log_det: f64 = (0..d).map(|i| 2.0 * l[i * d + i].ln()).sum();
        let mut a = cov.to_vec();
        let mut inv = vec![0.0; d * d];
        for i in 0..d {
            inv[i * d + i] = 1.0;
        }
        for c in 0..d {
            let p = a[c * d + c];
            for j in 0..d {
                a[c * d + j] /= p;
                inv[c * d + j] /= p;
            }
            for r in 0..d {
                if r != c {
                    let f = a[r * d + c];
                    for j in 0..d {
                        a[r * d + j] -= f * a[c * d + j];
                        inv[r * d + j] -= f * inv[c * d + j];
                    }
                }
            }
        }
        let diff: Vec<f64> = x.iter().zip(mean).map(|(a, b)| a - b).collect();
        let mut q = 0.0;
        for i in 0..d {
            for j in 0..d {
                q += diff[i] * inv[i * d + j] * diff[j];
            }
        }
        -0.5 * (d as f64 * LN_2PI + log_det + q)
    }

    #[test]
    fn full_density_matches_the_textbook_formula() {
        let d = 3;
        let cov = vec![2.0, 0.3, 0.1, 0.3, 1.0, -0.2, 0.1, -0.2, 0.5];
        let mean = vec![1.0, -1.0, 0.5];
        let g = Gmm::from_covariances(
            CovarianceKind::Full,
            &[1.0],
            std::slice::from_ref(&mean),
            std::slice::from_ref(&cov),
        )
        .unwrap();
        let x = [0.3, 0.2, -0.4];
        let mut s = [0.0; 3];
        let got = g.log_density(0, &x, &mut s);
        let want = naive_log_density(&x, &mean, &cov, d);
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    }

    #[test]
    fn batched_scores_equal_per_component_densities() {
        let d = 3;
        let covs = vec![
            vec![2.0, 0.3, 0.1, 0.3, 1.0, -0.2, 0.1, -0.2, 0.5],
            vec![1.0, 0.0, 0.2, 0.0, 1.5, 0.1, 0.2, 0.1, 0.8],
        ];
        let means = vec![vec![1.0, -1.0, 0.5], vec![0.0, 2.0, -1.0]];
        let g = Gmm::from_covariances(CovarianceKind::Full, &[0.4, 0.6], &means, &covs).unwrap();
        let x = [0.3, 0.2, -0.4];
        let mut out = [0.0; 2];
        let mut scratch = vec![0.0; g.scratch_len()];
        let ll = g.weighted_log_densities(&x, &mut out, &mut scratch);
        let mut s = [0.0; 3];
        for c in 0..2 {
            let want = g.components[c].log_weight + g.log_density(c, &x, &mut s);
            assert!((out[c] - want).abs() < 1e-10, "{} vs {want}", out[c]);
            let naive = [0.4f64, 0.6][c].ln() + naive_log_density(&x, &means[c], &covs[c], d);
            assert!((out[c] - naive).abs() < 1e-9);
        }
        assert!((ll - log_sum_exp(&out)).abs() < 1e-12);
    }

    #[test]
    fn batched_scores_cover_several_blocks_of_components() {
        // K = 19: blocks of 8 (two full, one padded); K = 27: blocks of 16
        // (one padded); K = 3: one padded block of 8.
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(11);
        for (k, d) in [(19, 6), (27, 5), (3, 4)] {
            let mut covs = Vec::new();
            let mut means = Vec::new();
            for _ in 0..k {
                let a: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let mut c = vec![0.0; d * d];
                for i in 0..d {
                    for j in 0..d {
                        c[i * d + j] = (0..d).map(|t| a[i * d + t] * a[j * d + t]).sum::<f64>();
                    }
                    c[i * d + i] += 0.5;
                }
                covs.push(c);
                means.push(
                    (0..d)
                        .map(|_| rng.gen_range(-2.0..2.0))
                        .collect::<Vec<f64>>(),
                );
            }
            let weights: Vec<f64> = (1..=k)
                .map(|i| i as f64 / (k * (k + 1) / 2) as f64)
                .collect();
            let g = Gmm::from_covariances(CovarianceKind::Full, &weights, &means, &covs).unwrap();
            let mut out = vec![0.0; k];
            let mut scratch = vec![0.0; g.scratch_len()];
            let mut s = vec![0.0; d];
            for _ in 0..20 {
                let x: Vec<f64> = (0..d).map(|_| rng.gen_range(-3.0..3.0)).collect();
                g.weighted_log_densities(&x, &mut out, &mut scratch);
                for c in 0..k {
                    let naive = weights[c].ln() + naive_log_density(&x, &means[c], &covs[c], d);
                    let single = g.components[c].log_weight + g.log_density(c, &x, &mut s);
                    assert!((out[c] - naive).abs() < 1e-8 * (1.0 + naive.abs()), "{c}");
                    assert!((out[c] - single).abs() < 1e-9 * (1.0 + single.abs()), "{c}");
                }
            }
        }
    }

    #[test]
    fn diag_equals_full_with_diagonal_covariance() {
        let means = vec![vec![0.0, 1.0], vec![2.0, -1.0]];
        let diag = Gmm::from_covariances(
            CovarianceKind::Diag,
            &[0.3, 0.7],
            &means,
            &[vec![1.0, 4.0], vec![0.5, 2.0]],
        )
        .unwrap();
        let full = Gmm::from_covariances(
            CovarianceKind::Full,
            &[0.3, 0.7],
            &means,
            &[vec![1.0, 0.0, 0.0, 4.0], vec![0.5, 0.0, 0.0, 2.0]],
        )
        .unwrap();
        let x = [0.7, 0.1];
        let (a, la) = diag.classify(&x);
        let (b, lb) = full.classify(&x);
        assert_eq!(a, b);
        assert!((la - lb).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_covariances() {
        let m = vec![vec![0.0, 0.0]];
        let singular = Gmm::from_covariances(
            CovarianceKind::Full,
            &[1.0],
            &m,
            &[vec![1.0, 1.0, 1.0, 1.0]],
        );
        assert_eq!(
            singular.unwrap_err().to_string(),
            "component 0: covariance is not positive definite"
        );
        let asym = Gmm::from_covariances(
            CovarianceKind::Full,
            &[1.0],
            &m,
            &[vec![1.0, 0.5, 0.0, 1.0]],
        );
        assert!(asym.unwrap_err().problem.contains("symmetric"));
        let neg = Gmm::from_covariances(CovarianceKind::Diag, &[1.0], &m, &[vec![1.0, -1.0]]);
        assert!(neg.unwrap_err().problem.contains("positive"));
    }

    #[test]
    fn far_points_do_not_underflow() {
        let g = Gmm::from_covariances(
            CovarianceKind::Diag,
            &[0.5, 0.5],
            &[vec![0.0], vec![10.0]],
            &[vec![0.01], vec![0.01]],
        )
        .unwrap();
        let (k, ll) = g.classify(&[1e4]);
        assert_eq!(k, 1);
        assert!(ll.is_finite() && ll < -1e6);
    }

    proptest! {
        #[test]
        fn log_sum_exp_matches_naive(xs in prop::collection::vec(-50.0f64..50.0, 1..20)) {
            let naive = xs.iter().map(|x| x.exp()).sum::<f64>().ln();
            prop_assert!((log_sum_exp(&xs) - naive).abs() < 1e-9);
        }

        #[test]
        fn classification_is_invariant_to_component_order(x in -3.0f64..3.0, y in -3.0f64..3.0) {
            let means = vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![-1.0, 2.0]];
            let covs = vec![vec![1.0, 0.2, 0.2, 1.0], vec![0.5, 0.0, 0.0, 2.0], vec![1.0, -0.3, -0.3, 0.7]];
            let w = [0.2, 0.5, 0.3];
            let g = Gmm::from_covariances(CovarianceKind::Full, &w, &means, &covs).unwrap();
            let perm = [2usize, 0, 1];
            let g2 = Gmm::from_covariances(
                CovarianceKind::Full,
                &perm.map(|i| w[i]),
                &perm.iter().map(|&i| means[i].clone()).collect::<Vec<_>>(),
                &perm.iter().map(|&i| covs[i].clone()).collect::<Vec<_>>(),
            ).unwrap();
            let (a, la) = g.classify(&[x, y]);
            let (b, lb) = g2.classify(&[x, y]);
            prop_assert_eq!(a, perm[b]);
            prop_assert!((la - lb).abs() < 1e-9);
        }
    }
}
