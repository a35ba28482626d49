//! Random delays with a given mean: service times of the backend emulator
//! and inter-arrival times of the load generator.
//!
//! One type serves both so that `exp:10` means the same thing on either
//! side. Every value is in milliseconds.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal, Normal, Zipf};

/// Default number of ranks of the Zipf delay.
pub const ZIPF_DEFAULT_N: u64 = 100;
/// Default exponent of the Zipf delay.
pub const ZIPF_DEFAULT_S: f64 = 1.2;
/// Default coefficient of variation (`sd / mean`) of the normal delay when
/// the spec gives only the mean (as `gen_load` does).
pub const NORMAL_DEFAULT_CV: f64 = 0.25;

/// A distribution of non-negative delays in milliseconds.
///
/// Text form (for flags): `exp:MEAN`, `normal:MEAN[,SD]`, `fixed:VALUE`,
/// `zipf:MEAN[,N[,S]]`, `lognormal:MEAN[,SIGMA]`, `bimodal:FAST,SLOW[,P]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    /// Exponential: density `λ e^{-λx}`, `λ = 1 / mean`; memoryless, the
    /// inter-arrival time of a Poisson process.
    Exponential {
        /// Mean, ms.
        mean_ms: f64,
    },
    /// Normal `N(mean, sd²)` truncated at zero by resampling (with the
    /// default `sd = mean / 4` the truncation moves the mean by < 1e-4).
    Normal {
        /// Mean, ms.
        mean_ms: f64,
        /// Standard deviation, ms.
        sd_ms: f64,
    },
    /// Always the same value.
    Fixed {
        /// The value, ms.
        ms: f64,
    },
    /// Zipf ranks `k ∈ 1..=n` with `P(k) ∝ k^{-s}`, scaled so that the mean
    /// is `mean_ms`: `x = mean_ms · k / E[k]`, `E[k] = Σ k^{1-s} / Σ k^{-s}`.
    /// Mostly short gaps with rare long ones (bursty arrivals).
    Zipf {
        /// Mean, ms.
        mean_ms: f64,
        /// Number of ranks.
        n: u64,
        /// Exponent.
        s: f64,
    },
    /// Log-normal: `ln x ~ N(μ, σ²)` with `μ = ln(mean) − σ²/2`, so that
    /// `E[x] = e^{μ + σ²/2} = mean`; coefficient of variation
    /// `sqrt(e^{σ²} − 1)` (σ = 1: 1.31). Heavier-tailed than the
    /// exponential for σ above about 0.83.
    LogNormal {
        /// Mean, ms.
        mean_ms: f64,
        /// σ of `ln x`.
        sigma: f64,
    },
    /// Two modes: with probability `p_slow` a draw of
    /// `N(slow, (slow/4)²)`, otherwise of `N(fast, (fast/4)²)` (each
    /// truncated at zero like [`Delay::Normal`]); mean
    /// `(1 − p_slow)·fast + p_slow·slow`. Cache hits and misses, say.
    Bimodal {
        /// Centre of the common, fast mode, ms.
        fast_ms: f64,
        /// Centre of the rare, slow mode, ms.
        slow_ms: f64,
        /// Probability of the slow mode.
        p_slow: f64,
    },
}

/// Default σ of `lognormal:MEAN`.
pub const LOGNORMAL_DEFAULT_SIGMA: f64 = 1.0;
/// Default probability of the slow mode of `bimodal:FAST,SLOW`.
pub const BIMODAL_DEFAULT_P_SLOW: f64 = 0.1;

/// A delay spec that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("delay `{input}`: {reason} (expected exp:MEAN, normal:MEAN[,SD], fixed:VALUE, zipf:MEAN[,N[,S]], lognormal:MEAN[,SIGMA] or bimodal:FAST,SLOW[,P], in ms)")]
pub struct DelayParseError {
    /// The text given.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl Delay {
    /// The mean in ms (exact for all kinds; for `Normal` before truncation).
    pub fn mean_ms(&self) -> f64 {
        match *self {
            Delay::Exponential { mean_ms }
            | Delay::Normal { mean_ms, .. }
            | Delay::Zipf { mean_ms, .. }
            | Delay::LogNormal { mean_ms, .. } => mean_ms,
            Delay::Fixed { ms } => ms,
            Delay::Bimodal {
                fast_ms,
                slow_ms,
                p_slow,
            } => (1.0 - p_slow) * fast_ms + p_slow * slow_ms,
        }
    }

    /// The same shape with a different mean (a `Normal` keeps its
    /// coefficient of variation, a `LogNormal` its σ, a `Bimodal` the ratio
    /// of its modes and their probabilities).
    pub fn with_mean(&self, mean: f64) -> Delay {
        match *self {
            Delay::Exponential { .. } => Delay::Exponential { mean_ms: mean },
            Delay::Normal { mean_ms, sd_ms } => Delay::Normal {
                mean_ms: mean,
                sd_ms: if mean_ms > 0.0 {
                    sd_ms * mean / mean_ms
                } else {
                    0.0
                },
            },
            Delay::Fixed { .. } => Delay::Fixed { ms: mean },
            Delay::Zipf { n, s, .. } => Delay::Zipf {
                mean_ms: mean,
                n,
                s,
            },
            Delay::LogNormal { sigma, .. } => Delay::LogNormal {
                mean_ms: mean,
                sigma,
            },
            Delay::Bimodal {
                fast_ms,
                slow_ms,
                p_slow,
            } => {
                let old = self.mean_ms();
                let k = if old > 0.0 { mean / old } else { 0.0 };
                Delay::Bimodal {
                    fast_ms: fast_ms * k,
                    slow_ms: slow_ms * k,
                    p_slow,
                }
            }
        }
    }

    /// Draws one delay, ms (never negative).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match *self {
            Delay::Exponential { mean_ms } => {
                if mean_ms <= 0.0 {
                    return 0.0;
                }
                Exp::new(1.0 / mean_ms).map_or(0.0, |d| d.sample(rng))
            }
            Delay::Normal { mean_ms, sd_ms } => truncated_normal(mean_ms, sd_ms, rng),
            Delay::Fixed { ms } => ms.max(0.0),
            Delay::Zipf { mean_ms, n, s } => {
                let Ok(d) = Zipf::new(n, s) else {
                    return mean_ms.max(0.0);
                };
                let k: f64 = d.sample(rng);
                mean_ms * k / zipf_mean_rank(n, s)
            }
            Delay::LogNormal { mean_ms, sigma } => {
                if mean_ms <= 0.0 {
                    return 0.0;
                }
                let mu = mean_ms.ln() - sigma * sigma / 2.0;
                LogNormal::new(mu, sigma).map_or(mean_ms, |d| d.sample(rng))
            }
            Delay::Bimodal {
                fast_ms,
                slow_ms,
                p_slow,
            } => {
                let centre = if rng.gen::<f64>() < p_slow {
                    slow_ms
                } else {
                    fast_ms
                };
                truncated_normal(centre, centre * NORMAL_DEFAULT_CV, rng)
            }
        }
    }
}

/// `N(mean, sd²)` truncated at zero by resampling the negative tail; gives
/// up after a few tries so that a silly spec (mean far below zero) cannot
/// loop forever.
fn truncated_normal<R: Rng + ?Sized>(mean_ms: f64, sd_ms: f64, rng: &mut R) -> f64 {
    let Ok(d) = Normal::new(mean_ms, sd_ms) else {
        return mean_ms.max(0.0);
    };
    for _ in 0..64 {
        let x = d.sample(rng);
        if x >= 0.0 {
            return x;
        }
    }
    0.0
}

/// `E[k]` of Zipf(n, s): `Σ_{k=1..n} k^{1-s} / Σ_{k=1..n} k^{-s}`.
pub fn zipf_mean_rank(n: u64, s: f64) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for k in 1..=n.max(1) {
        let w = (k as f64).powf(-s);
        num += k as f64 * w;
        den += w;
    }
    num / den
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Delay::Exponential { mean_ms } => write!(f, "exp:{mean_ms}"),
            Delay::Normal { mean_ms, sd_ms } => write!(f, "normal:{mean_ms},{sd_ms}"),
            Delay::Fixed { ms } => write!(f, "fixed:{ms}"),
            Delay::Zipf { mean_ms, n, s } => write!(f, "zipf:{mean_ms},{n},{s}"),
            Delay::LogNormal { mean_ms, sigma } => write!(f, "lognormal:{mean_ms},{sigma}"),
            Delay::Bimodal {
                fast_ms,
                slow_ms,
                p_slow,
            } => write!(f, "bimodal:{fast_ms},{slow_ms},{p_slow}"),
        }
    }
}

impl FromStr for Delay {
    type Err = DelayParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DelayParseError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (kind, args) = input
            .split_once(':')
            .ok_or_else(|| err("missing `:` after the kind"))?;
        let nums: Vec<f64> = args
            .split(',')
            .map(|a| a.trim().trim_end_matches("ms").parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| err(&format!("bad number: {e}")))?;
        if nums.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(err("numbers must be finite and >= 0"));
        }
        let arity = |lo: usize, hi: usize| {
            if nums.len() < lo || nums.len() > hi {
                Err(err(&format!(
                    "`{kind}` takes {lo}..={hi} numbers, got {}",
                    nums.len()
                )))
            } else {
                Ok(())
            }
        };
        match kind {
            "exp" | "exponential" => {
                arity(1, 1)?;
                Ok(Delay::Exponential { mean_ms: nums[0] })
            }
            "normal" => {
                arity(1, 2)?;
                Ok(Delay::Normal {
                    mean_ms: nums[0],
                    sd_ms: nums.get(1).copied().unwrap_or(nums[0] * NORMAL_DEFAULT_CV),
                })
            }
            "fixed" => {
                arity(1, 1)?;
                Ok(Delay::Fixed { ms: nums[0] })
            }
            "zipf" => {
                arity(1, 3)?;
                let n = nums.get(1).copied().unwrap_or(ZIPF_DEFAULT_N as f64);
                if n < 1.0 || n.fract() != 0.0 {
                    return Err(err("zipf N must be a whole number >= 1"));
                }
                Ok(Delay::Zipf {
                    mean_ms: nums[0],
                    n: n as u64,
                    s: nums.get(2).copied().unwrap_or(ZIPF_DEFAULT_S),
                })
            }
            "lognormal" => {
                arity(1, 2)?;
                Ok(Delay::LogNormal {
                    mean_ms: nums[0],
                    sigma: nums.get(1).copied().unwrap_or(LOGNORMAL_DEFAULT_SIGMA),
                })
            }
            "bimodal" => {
                arity(2, 3)?;
                let p_slow = nums.get(2).copied().unwrap_or(BIMODAL_DEFAULT_P_SLOW);
                if p_slow > 1.0 {
                    return Err(err("bimodal P (probability of the slow mode) must be <= 1"));
                }
                if nums[1] < nums[0] {
                    return Err(err("bimodal SLOW must be >= FAST"));
                }
                Ok(Delay::Bimodal {
                    fast_ms: nums[0],
                    slow_ms: nums[1],
                    p_slow,
                })
            }
            other => Err(err(&format!("unknown kind `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn moments(d: &Delay, n: usize, seed: u64) -> (f64, f64, Vec<f64>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let xs: Vec<f64> = (0..n).map(|_| d.sample(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        (mean, var.sqrt(), xs)
    }

    #[test]
    fn exponential_has_its_mean_and_unit_cv_and_median_ln2() {
        let d: Delay = "exp:10".parse().unwrap();
        let (mean, sd, mut xs) = moments(&d, 200_000, 1);
        // standard error of the mean = 10 / sqrt(2e5) ≈ 0.022; allow ~5 se.
        assert!((mean - 10.0).abs() < 0.12, "mean {mean}");
        assert!((sd / mean - 1.0).abs() < 0.02, "cv {}", sd / mean);
        xs.sort_by(f64::total_cmp);
        let median = xs[xs.len() / 2];
        assert!((median - 10.0 * 2f64.ln()).abs() < 0.15, "median {median}");
        // the p99 of an exponential is mean * ln(100): the lab's "floor".
        let p99 = xs[xs.len() * 99 / 100];
        assert!((p99 / (10.0 * 100f64.ln()) - 1.0).abs() < 0.05, "p99 {p99}");
    }

    #[test]
    fn normal_has_its_mean_and_sd_and_is_symmetric() {
        let d: Delay = "normal:8".parse().unwrap();
        assert_eq!(
            d,
            Delay::Normal {
                mean_ms: 8.0,
                sd_ms: 2.0
            }
        );
        let (mean, sd, xs) = moments(&d, 100_000, 2);
        assert!((mean - 8.0).abs() < 0.03, "mean {mean}");
        assert!((sd - 2.0).abs() < 0.03, "sd {sd}");
        let below = xs.iter().filter(|&&x| x < 8.0).count() as f64 / xs.len() as f64;
        assert!(
            (below - 0.5).abs() < 0.01,
            "fraction below the mean {below}"
        );
    }

    #[test]
    fn fixed_never_varies() {
        let d: Delay = "fixed:2.5".parse().unwrap();
        let (mean, sd, _) = moments(&d, 1000, 3);
        assert_eq!(mean, 2.5);
        assert_eq!(sd, 0.0);
    }

    #[test]
    fn zipf_has_its_mean_and_power_law_ranks() {
        let d: Delay = "zipf:5".parse().unwrap();
        let (mean, _, xs) = moments(&d, 200_000, 4);
        assert!((mean / 5.0 - 1.0).abs() < 0.03, "mean {mean}");
        // Values are rank multiples of `unit`; P(k=1) / P(k=2) = 2^s.
        let unit = 5.0 / zipf_mean_rank(ZIPF_DEFAULT_N, ZIPF_DEFAULT_S);
        let rank = |k: f64| xs.iter().filter(|&&x| (x / unit - k).abs() < 1e-6).count() as f64;
        let ratio = rank(1.0) / rank(2.0);
        assert!(
            (ratio - 2f64.powf(ZIPF_DEFAULT_S)).abs() < 0.05,
            "P(1)/P(2) = {ratio}"
        );
    }

    #[test]
    fn lognormal_has_its_mean_and_median_and_cv() {
        let d: Delay = "lognormal:10,0.8".parse().unwrap();
        let (mean, sd, mut xs) = moments(&d, 400_000, 5);
        // cv = sqrt(e^{0.64} - 1) = 0.9473; se of the mean ≈ 9.5/632 = 0.015
        assert!((mean - 10.0).abs() < 0.08, "mean {mean}");
        let cv = (0.64f64.exp() - 1.0).sqrt();
        assert!((sd / mean - cv).abs() < 0.03, "cv {} vs {cv}", sd / mean);
        // the median is e^μ = mean · e^{-σ²/2}
        xs.sort_by(f64::total_cmp);
        let median = xs[xs.len() / 2];
        let want = 10.0 * (-0.32f64).exp();
        assert!(
            (median / want - 1.0).abs() < 0.01,
            "median {median} vs {want}"
        );
        assert!(xs[0] > 0.0);
        assert_eq!(d.with_mean(20.0), "lognormal:20,0.8".parse().unwrap());
    }

    #[test]
    fn bimodal_has_two_modes_in_the_right_proportion() {
        let d: Delay = "bimodal:5,50,0.2".parse().unwrap();
        assert!((d.mean_ms() - 14.0).abs() < 1e-12);
        let (mean, _, xs) = moments(&d, 200_000, 6);
        assert!((mean - 14.0).abs() < 0.15, "mean {mean}");
        // the modes are 45 ms apart with sd 1.25 and 12.5: nothing between
        // 15 and 20 ms (8 sd above the fast mode, 2.4 below the slow one
        // leaves ≈ 0.8% of the slow mode's draws there)
        let slow = xs.iter().filter(|&&x| x > 17.5).count() as f64 / xs.len() as f64;
        assert!((slow - 0.2).abs() < 0.01, "slow share {slow}");
        let fast_mode = xs.iter().filter(|&&x| (3.75..6.25).contains(&x)).count();
        let valley = xs.iter().filter(|&&x| (15.0..17.5).contains(&x)).count();
        assert!(fast_mode > 50 * valley.max(1), "{fast_mode} vs {valley}");
        let doubled = d.with_mean(28.0);
        assert_eq!(doubled, "bimodal:10,100,0.2".parse().unwrap());
    }

    #[test]
    fn zipf_mean_rank_matches_uniform_case() {
        // s = 0 is the uniform distribution on 1..=n: mean (n + 1) / 2.
        assert!((zipf_mean_rank(9, 0.0) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn parse_rejects_bad_specs_naming_the_input() {
        for bad in [
            "exp",
            "exp:",
            "exp:-1",
            "gamma:3",
            "fixed:1,2",
            "zipf:1,0.5",
            "exp:nan",
            "lognormal:",
            "lognormal:1,2,3",
            "bimodal:5",
            "bimodal:5,50,1.5",
            "bimodal:50,5",
        ] {
            let e = bad.parse::<Delay>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "exp:10",
            "normal:8,3",
            "fixed:1",
            "zipf:4,50,1.5",
            "lognormal:10,0.5",
            "bimodal:2,20,0.1",
        ] {
            let d: Delay = s.parse().unwrap();
            assert_eq!(d.to_string().parse::<Delay>().unwrap(), d);
        }
    }

    #[test]
    fn with_mean_keeps_shape() {
        let d = Delay::Normal {
            mean_ms: 10.0,
            sd_ms: 3.0,
        }
        .with_mean(20.0);
        assert_eq!(
            d,
            Delay::Normal {
                mean_ms: 20.0,
                sd_ms: 6.0
            }
        );
    }
}
