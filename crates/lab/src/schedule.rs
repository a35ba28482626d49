//! Arrival schedules of the load generator: what to send, when, at which
//! rate, with which inter-arrival distribution.
//!
//! A [`LoadPlan`] is a set of [`Stream`]s (one per request type), each a
//! list of [`Phase`]s; arrivals are drawn from it by [`Stream::arrivals`]
//! ahead of time and independently of any response (open loop). Three
//! builders: [`LoadPlan::constant`] (Poisson at a fixed rate),
//! [`GenLoad`] (the research's `gen_load`) and [`DayNight`] (the day/night
//! feeder).

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::dist::Delay;

/// The day/night feeder's 24 hourly load fractions (peaks near 08:00 and
/// 17:00).
pub const DAY_NIGHT_FRACTIONS: [f64; 24] = [
    0.03, 0.06, 0.09, 0.12, 0.266, 0.412, 0.558, 0.704, 0.85, 0.7625, 0.675, 0.587, 0.5, 0.59,
    0.68, 0.77, 0.86, 0.97, 0.813, 0.656, 0.5, 0.343, 0.186, 0.03,
];

/// Inter-arrival shape of a phase (the mean follows from the rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Poisson arrivals.
    Exponential,
    /// Normal gaps with `sd = mean / 4`.
    Normal,
    /// Evenly spaced.
    Fixed,
    /// Zipf gaps (bursty), see [`Delay::Zipf`].
    Zipf,
}

impl Arrivals {
    /// All four, in `gen_load`'s order.
    pub const ALL: [Arrivals; 4] = [
        Arrivals::Exponential,
        Arrivals::Normal,
        Arrivals::Fixed,
        Arrivals::Zipf,
    ];

    /// The gap distribution for `rate` requests per second.
    pub fn gap(self, rate: f64) -> Delay {
        let shape = match self {
            Arrivals::Exponential => Delay::Exponential { mean_ms: 1.0 },
            Arrivals::Normal => "normal:1".parse().expect("static spec"),
            Arrivals::Fixed => Delay::Fixed { ms: 1.0 },
            Arrivals::Zipf => "zipf:1".parse().expect("static spec"),
        };
        shape.with_mean(1000.0 / rate)
    }
}

/// A stretch of time at one rate with one arrival shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Start, seconds from the beginning of the run.
    pub start_s: f64,
    /// Length, seconds.
    pub duration_s: f64,
    /// Requests per second; 0 = back off (send nothing).
    pub rps: f64,
    /// Inter-arrival shape.
    pub arrivals: Arrivals,
}

/// One request type's schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// Label in the summary (e.g. `home`).
    pub label: String,
    /// Request path.
    pub path: String,
    /// Phases in time order, not overlapping.
    pub phases: Vec<Phase>,
}

impl Stream {
    /// Intended send times (seconds from the start) in increasing order,
    /// drawn with `seed`: within each phase, gaps from the phase's shape with
    /// mean `1 / rps`, the first gap counted from the phase's start.
    pub fn arrivals(&self, seed: u64) -> impl Iterator<Item = f64> + '_ {
        let mut rng = SmallRng::seed_from_u64(seed);
        self.phases
            .iter()
            .filter(|p| p.rps > 0.0 && p.duration_s > 0.0)
            .flat_map(move |p| {
                let gap = p.arrivals.gap(p.rps);
                let end = p.start_s + p.duration_s;
                let mut t = p.start_s;
                let times: Vec<f64> = std::iter::from_fn(|| {
                    t += gap.sample(&mut rng) / 1000.0;
                    (t < end).then_some(t)
                })
                .collect();
                times
            })
    }

    /// Expected number of requests: `Σ rps · duration`.
    pub fn expected_requests(&self) -> f64 {
        self.phases.iter().map(|p| p.rps * p.duration_s).sum()
    }
}

/// What the load generator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadPlan {
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// One stream per request type.
    pub streams: Vec<Stream>,
}

/// Short label of a request path: the three social-network endpoints get
/// `compose`/`home`/`user`, anything else its path.
pub fn path_label(path: &str) -> String {
    crate::backend::Endpoint::from_path(path)
        .map(|e| e.label().to_string())
        .unwrap_or_else(|| path.to_string())
}

impl LoadPlan {
    /// Poisson arrivals at `rps` in total, split evenly over `paths`.
    pub fn constant(rps: f64, duration: Duration, paths: &[String]) -> LoadPlan {
        let duration_s = duration.as_secs_f64();
        let per_path = rps / paths.len().max(1) as f64;
        LoadPlan {
            duration_s,
            streams: paths
                .iter()
                .map(|p| Stream {
                    label: path_label(p),
                    path: p.clone(),
                    phases: vec![Phase {
                        start_s: 0.0,
                        duration_s,
                        rps: per_path,
                        arrivals: Arrivals::Exponential,
                    }],
                })
                .collect(),
        }
    }
}

/// A closed range of values a random draw comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Range {
    fn draw(&self, rng: &mut SmallRng) -> f64 {
        if self.max <= self.min {
            self.min
        } else {
            rng.gen_range(self.min..=self.max)
        }
    }
}

/// The research's `gen_load`: per request type, repeatedly run at a random
/// rate with a random inter-arrival shape for a random time, then back off.
/// Times are multiplied by `time_scale`, rates by `rate_scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenLoad {
    /// Length of the run, seconds (not scaled).
    pub duration_s: f64,
    /// Length of a busy phase, seconds (default 30 – 600).
    pub run_s: Range,
    /// Rate of a busy phase, requests/s (default 1000 – 2000).
    pub rps: Range,
    /// Length of a back-off, seconds (default 10 – 100).
    pub backoff_s: Range,
    /// Multiplies run and back-off lengths.
    pub time_scale: f64,
    /// Multiplies rates.
    pub rate_scale: f64,
    /// Shapes to pick from (default all four).
    pub shapes: Vec<Arrivals>,
    /// Request paths, one stream each.
    pub paths: Vec<String>,
    /// Seed of the plan's draws.
    pub seed: u64,
}

impl Default for GenLoad {
    fn default() -> Self {
        GenLoad {
            duration_s: 600.0,
            run_s: Range {
                min: 30.0,
                max: 600.0,
            },
            rps: Range {
                min: 1000.0,
                max: 2000.0,
            },
            backoff_s: Range {
                min: 10.0,
                max: 100.0,
            },
            time_scale: 1.0,
            rate_scale: 1.0,
            shapes: Arrivals::ALL.to_vec(),
            paths: crate::backend::Endpoint::ALL
                .iter()
                .map(|e| e.path().to_string())
                .collect(),
            seed: 1,
        }
    }
}

impl GenLoad {
    /// Draws the plan: streams are independent (own RNG per path).
    pub fn plan(&self) -> LoadPlan {
        let streams = self
            .paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let mut rng = SmallRng::seed_from_u64(self.seed.wrapping_add(i as u64));
                let mut phases = Vec::new();
                let mut t = 0.0;
                while t < self.duration_s {
                    let arrivals = if self.shapes.is_empty() {
                        Arrivals::Exponential
                    } else {
                        self.shapes[rng.gen_range(0..self.shapes.len())]
                    };
                    let run = self.run_s.draw(&mut rng) * self.time_scale;
                    let rps = self.rps.draw(&mut rng) * self.rate_scale;
                    let backoff = self.backoff_s.draw(&mut rng) * self.time_scale;
                    for (len, rps) in [(run, rps), (backoff, 0.0)] {
                        let len = len.min(self.duration_s - t);
                        if len > 0.0 {
                            phases.push(Phase {
                                start_s: t,
                                duration_s: len,
                                rps,
                                arrivals,
                            });
                            t += len;
                        }
                    }
                    if run + backoff <= 0.0 {
                        break; // degenerate ranges: avoid looping forever
                    }
                }
                Stream {
                    label: path_label(path),
                    path: path.clone(),
                    phases,
                }
            })
            .collect();
        LoadPlan {
            duration_s: self.duration_s,
            streams,
        }
    }
}

/// Resamples `values` at `n` evenly spaced points by linear interpolation:
/// point `i` sits at `x = i (len - 1) / (n - 1)` and takes
/// `v[⌊x⌋] + (x - ⌊x⌋)(v[⌊x⌋+1] - v[⌊x⌋])`; `n = 1` gives the first value.
pub fn stretch(values: &[f64], n: usize) -> Vec<f64> {
    match (values.len(), n) {
        (0, _) | (_, 0) => Vec::new(),
        (1, _) => vec![values[0]; n],
        (_, 1) => vec![values[0]],
        (len, n) => (0..n)
            .map(|i| {
                let x = i as f64 * (len - 1) as f64 / (n - 1) as f64;
                let lo = (x.floor() as usize).min(len - 2);
                let frac = x - lo as f64;
                values[lo] + frac * (values[lo + 1] - values[lo])
            })
            .collect(),
    }
}

/// The day/night feeder: the hourly fractions stretched to `breakpoints`
/// steps, repeated `cycles` times over `duration_s`; step `j` sends
/// `fraction_j · max_rps` (split evenly over the paths) as Poisson arrivals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayNight {
    /// Load fractions of one day (default [`DAY_NIGHT_FRACTIONS`]).
    pub fractions: Vec<f64>,
    /// Steps per cycle.
    pub breakpoints: usize,
    /// Days in the run.
    pub cycles: usize,
    /// Length of the run, seconds.
    pub duration_s: f64,
    /// Rate at fraction 1.
    pub max_rps: f64,
    /// Request paths.
    pub paths: Vec<String>,
}

impl DayNight {
    /// The rate of each step, in order over the whole run.
    pub fn steps(&self) -> Vec<f64> {
        let day = stretch(&self.fractions, self.breakpoints);
        (0..self.cycles)
            .flat_map(|_| day.iter().map(|f| f * self.max_rps))
            .collect()
    }

    /// The plan: equal-length steps.
    pub fn plan(&self) -> LoadPlan {
        let steps = self.steps();
        let step_s = self.duration_s / steps.len().max(1) as f64;
        let per_path = 1.0 / self.paths.len().max(1) as f64;
        LoadPlan {
            duration_s: self.duration_s,
            streams: self
                .paths
                .iter()
                .map(|path| Stream {
                    label: path_label(path),
                    path: path.clone(),
                    phases: steps
                        .iter()
                        .enumerate()
                        .map(|(j, rps)| Phase {
                            start_s: j as f64 * step_s,
                            duration_s: step_s,
                            rps: rps * per_path,
                            arrivals: Arrivals::Exponential,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretch_to_the_same_length_is_identity() {
        assert_eq!(
            stretch(&DAY_NIGHT_FRACTIONS, 24),
            DAY_NIGHT_FRACTIONS.to_vec()
        );
    }

    #[test]
    fn stretch_matches_linear_interpolation() {
        // 47 points over 24 values: even points are the values, odd points
        // the midpoints between neighbours.
        let s = stretch(&DAY_NIGHT_FRACTIONS, 47);
        assert_eq!(s.len(), 47);
        for (i, v) in s.iter().enumerate() {
            let expect = if i % 2 == 0 {
                DAY_NIGHT_FRACTIONS[i / 2]
            } else {
                (DAY_NIGHT_FRACTIONS[i / 2] + DAY_NIGHT_FRACTIONS[i / 2 + 1]) / 2.0
            };
            assert!((v - expect).abs() < 1e-12, "point {i}: {v} vs {expect}");
        }
        // endpoints are kept, and a 3-point ramp interpolates exactly
        let s = stretch(&[0.0, 1.0, 4.0], 5);
        assert_eq!(s, vec![0.0, 0.5, 1.0, 2.5, 4.0]);
        assert_eq!(stretch(&[0.2, 0.8], 1), vec![0.2]);
        assert!(stretch(&[], 3).is_empty());
    }

    #[test]
    fn day_night_repeats_cycles_and_scales_to_max_rps() {
        let dn = DayNight {
            fractions: DAY_NIGHT_FRACTIONS.to_vec(),
            breakpoints: 12,
            cycles: 2,
            duration_s: 48.0,
            max_rps: 1000.0,
            paths: vec!["/a".into(), "/b".into()],
        };
        let steps = dn.steps();
        assert_eq!(steps.len(), 24);
        assert_eq!(steps[..12], steps[12..]);
        assert!((steps[0] - 30.0).abs() < 1e-9 && (steps[11] - 30.0).abs() < 1e-9);
        let plan = dn.plan();
        assert_eq!(plan.streams.len(), 2);
        let p = &plan.streams[1].phases[5];
        assert!((p.start_s - 10.0).abs() < 1e-9 && (p.duration_s - 2.0).abs() < 1e-9);
        assert!((p.rps - steps[5] / 2.0).abs() < 1e-9);
    }

    #[test]
    fn gen_load_phases_tile_the_run_within_their_ranges() {
        let g = GenLoad {
            duration_s: 3600.0,
            seed: 9,
            ..GenLoad::default()
        };
        let plan = g.plan();
        assert_eq!(plan.streams.len(), 3);
        let mut shapes_seen = std::collections::HashSet::new();
        for s in &plan.streams {
            let mut t = 0.0;
            for (i, p) in s.phases.iter().enumerate() {
                assert!((p.start_s - t).abs() < 1e-9, "gap before phase {i}");
                t += p.duration_s;
                let last = i + 1 == s.phases.len();
                if p.rps > 0.0 {
                    assert!((1000.0..=2000.0).contains(&p.rps));
                    assert!(p.duration_s <= 600.0 && (last || p.duration_s >= 30.0));
                    shapes_seen.insert(p.arrivals);
                } else {
                    assert!(p.duration_s <= 100.0 && (last || p.duration_s >= 10.0));
                }
            }
            assert!((t - 3600.0).abs() < 1e-6);
        }
        assert_eq!(shapes_seen.len(), 4, "an hour should use every shape");
        // the same seed gives the same plan, another seed another
        assert_eq!(g.plan(), plan);
        assert_ne!(GenLoad { seed: 10, ..g }.plan(), plan);
    }

    #[test]
    fn gen_load_scale_shrinks_times_and_rates() {
        let g = GenLoad {
            duration_s: 120.0,
            time_scale: 0.05,
            rate_scale: 0.1,
            ..GenLoad::default()
        };
        for s in &g.plan().streams {
            for p in &s.phases {
                assert!(p.duration_s <= 600.0 * 0.05 + 1e-9);
                assert!(p.rps == 0.0 || (100.0..=200.0).contains(&p.rps));
            }
        }
    }

    #[test]
    fn arrivals_follow_the_phase_rates() {
        let s = Stream {
            label: "x".into(),
            path: "/x".into(),
            phases: vec![
                Phase {
                    start_s: 0.0,
                    duration_s: 20.0,
                    rps: 500.0,
                    arrivals: Arrivals::Zipf,
                },
                Phase {
                    start_s: 20.0,
                    duration_s: 10.0,
                    rps: 0.0,
                    arrivals: Arrivals::Fixed,
                },
                Phase {
                    start_s: 30.0,
                    duration_s: 10.0,
                    rps: 100.0,
                    arrivals: Arrivals::Fixed,
                },
            ],
        };
        let times: Vec<f64> = s.arrivals(3).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let busy = times.iter().filter(|&&t| t < 20.0).count() as f64;
        assert!(
            (busy / 10_000.0 - 1.0).abs() < 0.05,
            "{busy} in the zipf phase"
        );
        assert!(
            !times.iter().any(|&t| (20.0..30.0).contains(&t)),
            "sent while backing off"
        );
        // fixed gaps of 10 ms from t=30: 30.01, 30.02, ... < 40 (999, or
        // 1000 when rounding lands the last sum just under 40)
        let fixed = times.iter().filter(|&&t| t >= 30.0).count();
        assert!((999..=1000).contains(&fixed), "{fixed} in the fixed phase");
        assert!((s.expected_requests() - 11_000.0).abs() < 1e-9);
    }
}
