//! Scenarios generated from a seed, for judging a design on systems it was
//! not tuned on (issue #13, "How it is judged").
//!
//! A scenario *is* its seed: [`generate`] draws every parameter from a
//! ChaCha8 stream seeded with it (ChaCha8 rather than `SmallRng` because its
//! output is fixed across platforms and `rand` versions), so `G17` is the
//! same system on every machine. The ranges:
//!
//! | parameter | range |
//! |---|---|
//! | peers | 2..=6 |
//! | workers per peer | 2..=12 (see *small* below) |
//! | service-time distribution (all peers) | exponential, log-normal (σ ∈ [0.5, 1.2]) or bimodal (slow mode 4-10x the fast one, p ∈ [0.05, 0.2]) |
//! | mean service time of a read | 5..=20 ms |
//! | request types | one (`home`) or three (`compose` 2x, `home` 1x, `user` 0.5x the read mean) |
//! | affected peer | none, or one peer chosen uniformly, which is *small*, *noisy* or *degrading* (each kind 1/4, *none* 1/4) |
//! | small | that peer has 2..=3 workers, every other peer 6..=12 |
//! | noisy | ×3..=8 slower for the first 20-50% of every 10-30 s period |
//! | degrading | service times grow linearly from ×1 to ×2..=5 between 10-40% and 60-90% of each run |
//! | load | 50-90% of the capacity *with the affected peer at its slowest* |
//! | profile | constant (Poisson) or day/night (24 steps peaking at the load) |
//!
//! Load is relative to the worst-case capacity (`Σ workers / mean service
//! time` with the noisy or degrading peer at its full factor) so that every
//! generated system stays stable under a balancer that avoids the slow
//! peer: a scenario measures balancing, not overload.
//!
//! `deep-sched-lab scenario SEED` prints a scenario as JSON (schema
//! `policies/scenario.schema.json`); `deep-sched-lab run G17` runs it like
//! S1..S6. The seed lists are in `lab/seeds/`: `tuning.txt` may be used
//! freely, `heldout.txt` is never used to choose a design or a default
//! (report only).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::{Endpoint, ServiceTimes, SlowSchedule};
use crate::dist::Delay;
use crate::experiment::{BackendSpec, DegradeSpec, Layout, Scenario, Workload};

/// The `format` value of a generated scenario document.
pub const SCENARIO_FORMAT: &str = "deep_sched.scenario";
/// The version of that document.
pub const SCENARIO_VERSION: u32 = 1;

/// Fewest peers.
pub const MIN_PEERS: usize = 2;
/// Most peers.
pub const MAX_PEERS: usize = 6;
/// Fewest workers of a peer.
pub const MIN_WORKERS: usize = 2;
/// Most workers of a peer.
pub const MAX_WORKERS: usize = 12;
/// Lowest load, fraction of the worst-case capacity.
pub const MIN_LOAD: f64 = 0.5;
/// Highest load, fraction of the worst-case capacity.
pub const MAX_LOAD: f64 = 0.9;

/// Shape of the service-time distribution shared by the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// [`Delay::Exponential`].
    Exponential,
    /// [`Delay::LogNormal`].
    LogNormal,
    /// [`Delay::Bimodal`].
    Bimodal,
}

/// What is special about the affected peer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Affliction {
    /// Few workers (2..=3) while every other peer has 6..=12.
    Small,
    /// `factor` times slower during the first `slow_for_s` of every
    /// `period_s` ([`SlowSchedule`]).
    Noisy {
        /// Service-time multiplier while slow.
        factor: f64,
        /// Period, s.
        period_s: f64,
        /// Slow part at the start of each period, s.
        slow_for_s: f64,
    },
    /// Service times grow linearly from ×1 at `from` to ×`factor` at `to`
    /// (fractions of each run, [`DegradeSpec`]).
    Degrading {
        /// Multiplier at the end of the ramp.
        factor: f64,
        /// Start of the ramp, fraction of the run.
        from: f64,
        /// End of the ramp, fraction of the run.
        to: f64,
    },
}

impl Affliction {
    /// `small`, `noisy` or `degrading`.
    pub fn name(&self) -> &'static str {
        match self {
            Affliction::Small => "small",
            Affliction::Noisy { .. } => "noisy",
            Affliction::Degrading { .. } => "degrading",
        }
    }

    /// The largest service-time multiplier it imposes (1 for `small`).
    pub fn worst_factor(&self) -> f64 {
        match *self {
            Affliction::Small => 1.0,
            Affliction::Noisy { factor, .. } | Affliction::Degrading { factor, .. } => factor,
        }
    }
}

/// The affected peer and how.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    /// Index of the peer (0-based).
    pub peer: usize,
    /// What it suffers from.
    #[serde(flatten)]
    pub affliction: Affliction,
}

/// Service times of one peer per endpoint, in [`Delay`]'s text form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// `/wrk2-api/post/compose`.
    pub compose: String,
    /// `/wrk2-api/home-timeline/read`.
    pub home: String,
    /// `/wrk2-api/user-timeline/read`.
    pub user: String,
}

/// One generated peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedPeer {
    /// Workers (requests served at once).
    pub workers: usize,
    /// Requests per second it serves with nominal service times.
    pub capacity_rps: f64,
}

/// Arrival profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Poisson at the load all along.
    Constant,
    /// The lab's day/night profile, 24 steps, peaking at the load.
    DayNight,
}

/// A scenario generated from a seed: the JSON document
/// `deep-sched-lab scenario SEED` prints (`policies/scenario.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedScenario {
    /// Always [`SCENARIO_FORMAT`].
    pub format: String,
    /// Always [`SCENARIO_VERSION`].
    pub version: u32,
    /// The seed it was generated from.
    pub seed: u64,
    /// `G<seed>`.
    pub id: String,
    /// One line.
    pub title: String,
    /// The peers, in upstream order.
    pub peers: Vec<GeneratedPeer>,
    /// Shape of the service-time distribution.
    pub service_kind: ServiceKind,
    /// Service times of every peer (before any affliction).
    pub service: ServiceDoc,
    /// The request types sent, in equal parts (`compose`, `home`, `user`).
    pub request_types: Vec<String>,
    /// The affected peer, if any.
    pub affected: Option<Affected>,
    /// Load: fraction of `worst_capacity_rps` (peak for day/night).
    pub load: f64,
    /// Arrival profile.
    pub profile: Profile,
    /// Requests per second all peers serve with nominal service times.
    pub capacity_rps: f64,
    /// The same with the affected peer at its slowest.
    pub worst_capacity_rps: f64,
    /// Offered requests per second (peak for day/night): `load ×
    /// worst_capacity_rps`.
    pub offered_rps: f64,
    /// First backend port; peer `i` listens on `port_base + i`.
    pub port_base: u16,
}

fn delay_of(kind: ServiceKind, mean_ms: f64, rng: &mut ChaCha8Rng) -> Delay {
    match kind {
        ServiceKind::Exponential => Delay::Exponential { mean_ms },
        ServiceKind::LogNormal => Delay::LogNormal {
            mean_ms,
            sigma: round_to(rng.gen_range(0.5..=1.2), 0.05),
        },
        ServiceKind::Bimodal => {
            let ratio = round_to(rng.gen_range(4.0..=10.0), 0.5);
            let p_slow = round_to(rng.gen_range(0.05..=0.2), 0.01);
            // mean = fast·(1 − p + p·ratio)
            let fast_ms = mean_ms / (1.0 - p_slow + p_slow * ratio);
            Delay::Bimodal {
                fast_ms,
                slow_ms: fast_ms * ratio,
                p_slow,
            }
        }
    }
}

/// `x` rounded to a multiple of `step` (keeps the JSON readable).
fn round_to(x: f64, step: f64) -> f64 {
    ((x / step).round() * step * 1e9).round() / 1e9
}

/// The scenario of `seed`. Deterministic: the same seed always gives the
/// same scenario.
pub fn generate(seed: u64) -> GeneratedScenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.gen_range(MIN_PEERS..=MAX_PEERS);
    let service_kind = match rng.gen_range(0..3) {
        0 => ServiceKind::Exponential,
        1 => ServiceKind::LogNormal,
        _ => ServiceKind::Bimodal,
    };
    let read_ms = rng.gen_range(5..=20) as f64;
    let read = delay_of(service_kind, read_ms, &mut rng);
    let three = rng.gen_bool(0.5);
    let service = ServiceTimes {
        compose: read.with_mean(2.0 * read_ms),
        home_timeline: read,
        user_timeline: read.with_mean(0.5 * read_ms),
    };
    let endpoints: &'static [Endpoint] = if three {
        &Endpoint::ALL
    } else {
        &[Endpoint::HomeTimeline]
    };
    let kind = rng.gen_range(0..4);
    let peer = rng.gen_range(0..n);
    let affliction = match kind {
        0 => None,
        1 => Some(Affliction::Small),
        2 => {
            let period_s = rng.gen_range(10..=30) as f64;
            Some(Affliction::Noisy {
                factor: round_to(rng.gen_range(3.0..=8.0), 0.5),
                period_s,
                slow_for_s: round_to(period_s * rng.gen_range(0.2..=0.5), 0.5),
            })
        }
        _ => Some(Affliction::Degrading {
            factor: round_to(rng.gen_range(2.0..=5.0), 0.5),
            from: round_to(rng.gen_range(0.1..=0.4), 0.05),
            to: round_to(rng.gen_range(0.6..=0.9), 0.05),
        }),
    };
    let affected = affliction.map(|affliction| Affected { peer, affliction });
    let workers: Vec<usize> = (0..n)
        .map(|i| match affected {
            Some(Affected {
                peer,
                affliction: Affliction::Small,
            }) if peer == i => rng.gen_range(MIN_WORKERS..=3),
            Some(Affected {
                affliction: Affliction::Small,
                ..
            }) => rng.gen_range(6..=MAX_WORKERS),
            _ => rng.gen_range(MIN_WORKERS..=MAX_WORKERS),
        })
        .collect();
    let load = round_to(rng.gen_range(MIN_LOAD..=MAX_LOAD), 0.01);
    let profile = if rng.gen_bool(0.5) {
        Profile::Constant
    } else {
        Profile::DayNight
    };
    let mean_ms = endpoints
        .iter()
        .map(|e| service.of(*e).mean_ms())
        .sum::<f64>()
        / endpoints.len() as f64;
    let peer_rps = |w: usize| w as f64 * 1000.0 / mean_ms;
    let capacity_rps: f64 = workers.iter().map(|&w| peer_rps(w)).sum();
    let worst_capacity_rps = capacity_rps
        - affected.map_or(0.0, |a| {
            peer_rps(workers[a.peer]) * (1.0 - 1.0 / a.affliction.worst_factor())
        });
    let title = format!(
        "generated: {n} peers ({}), {} {read_ms} ms, {}, {} {:.0}% of the worst-case capacity, {}",
        workers
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        match service_kind {
            ServiceKind::Exponential => "exponential",
            ServiceKind::LogNormal => "log-normal",
            ServiceKind::Bimodal => "bimodal",
        },
        match affected {
            None => "no affected peer".to_string(),
            Some(a) => format!("peer {} {}", a.peer + 1, a.affliction.name()),
        },
        match profile {
            Profile::Constant => "constant",
            Profile::DayNight => "day/night, peak",
        },
        load * 100.0,
        if three {
            "three request types"
        } else {
            "one request type"
        }
    );
    GeneratedScenario {
        format: SCENARIO_FORMAT.to_string(),
        version: SCENARIO_VERSION,
        seed,
        id: format!("G{seed}"),
        title,
        peers: workers
            .iter()
            .map(|&w| GeneratedPeer {
                workers: w,
                capacity_rps: peer_rps(w),
            })
            .collect(),
        service_kind,
        service: ServiceDoc {
            compose: service.compose.to_string(),
            home: service.home_timeline.to_string(),
            user: service.user_timeline.to_string(),
        },
        request_types: endpoints.iter().map(|e| e.label().to_string()).collect(),
        affected,
        load,
        profile,
        capacity_rps,
        worst_capacity_rps,
        offered_rps: load * worst_capacity_rps,
        // 100 slots of 8 ports: 19200..=19999
        port_base: 19200 + 8 * (seed % 100) as u16,
    }
}

impl GeneratedScenario {
    /// The service times every peer has before any affliction.
    pub fn service_times(&self) -> ServiceTimes {
        let parse = |s: &str| {
            s.parse::<Delay>()
                .expect("generated delays are written in Delay's own text form")
        };
        ServiceTimes {
            compose: parse(&self.service.compose),
            home_timeline: parse(&self.service.home),
            user_timeline: parse(&self.service.user),
        }
    }

    /// The request types as endpoints.
    pub fn endpoints(&self) -> &'static [Endpoint] {
        if self.request_types.len() == 1 {
            &[Endpoint::HomeTimeline]
        } else {
            &Endpoint::ALL
        }
    }

    /// The runnable [`Scenario`] (what `deep-sched-lab run G<seed>` runs).
    pub fn scenario(&self) -> Scenario {
        let service = self.service_times();
        let backends = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mine = self.affected.filter(|a| a.peer == i);
                BackendSpec {
                    workers: p.workers,
                    service,
                    slow: match mine.map(|a| a.affliction) {
                        Some(Affliction::Noisy {
                            factor,
                            period_s,
                            slow_for_s,
                        }) => Some(SlowSchedule {
                            factor,
                            period: Duration::from_secs_f64(period_s),
                            slow_for: Duration::from_secs_f64(slow_for_s),
                        }),
                        _ => None,
                    },
                    degrade: match mine.map(|a| a.affliction) {
                        Some(Affliction::Degrading { factor, from, to }) => {
                            Some(DegradeSpec { factor, from, to })
                        }
                        _ => None,
                    },
                }
            })
            .collect();
        // Workload loads are fractions of the nominal capacity.
        let nominal = self.offered_rps / self.capacity_rps;
        Scenario {
            id: self.id.clone(),
            title: self.title.clone(),
            endpoints: self.endpoints(),
            port_base: self.port_base,
            backends,
            workload: match self.profile {
                Profile::Constant => Workload::Rate { load: nominal },
                Profile::DayNight => Workload::DayNight {
                    peak_load: nominal,
                    breakpoints: 24,
                },
            },
            layout: Layout::Single,
            event: None,
        }
    }
}

/// Reads a seed list: one seed a line, `#` comments and blank lines
/// ignored. Errors name the line.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let mut seeds = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let seed = line
            .parse::<u64>()
            .map_err(|e| format!("line {}: \"{line}\" is not a seed: {e}", i + 1))?;
        if seeds.contains(&seed) {
            return Err(format!("line {}: seed {seed} appears twice", i + 1));
        }
        seeds.push(seed);
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Workload;
    use proptest::prelude::*;

    const TUNING: &str = include_str!("../../../lab/seeds/tuning.txt");
    const HELDOUT: &str = include_str!("../../../lab/seeds/heldout.txt");

    #[test]
    fn generation_is_deterministic_per_seed() {
        for seed in [0, 1, 17, 1001, u64::MAX] {
            assert_eq!(generate(seed), generate(seed));
            let json = serde_json::to_string(&generate(seed)).unwrap();
            assert_eq!(json, serde_json::to_string(&generate(seed)).unwrap());
        }
        // different seeds: different systems (not one fixed scenario)
        let distinct: std::collections::BTreeSet<String> = (0..50)
            .map(|s| {
                let mut g = generate(s);
                g.seed = 0;
                g.id.clear();
                g.port_base = 0;
                serde_json::to_string(&g).unwrap()
            })
            .collect();
        assert_eq!(distinct.len(), 50);
    }

    #[test]
    fn the_json_round_trips() {
        let g = generate(42);
        let text = serde_json::to_string_pretty(&g).unwrap();
        let back: GeneratedScenario = serde_json::from_str(&text).unwrap();
        assert_eq!(back, g);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn every_field_is_within_its_range(seed in any::<u64>()) {
            let g = generate(seed);
            prop_assert!((MIN_PEERS..=MAX_PEERS).contains(&g.peers.len()));
            for p in &g.peers {
                prop_assert!((MIN_WORKERS..=MAX_WORKERS).contains(&p.workers));
            }
            prop_assert!((MIN_LOAD..=MAX_LOAD).contains(&g.load), "load {}", g.load);
            prop_assert!(g.request_types.len() == 1 || g.request_types.len() == 3);
            let st = g.service_times();
            let read = st.home_timeline.mean_ms();
            prop_assert!((5.0 - 1e-9..=20.0 + 1e-9).contains(&read), "read mean {read}");
            match (g.service_kind, st.home_timeline) {
                (ServiceKind::Exponential, Delay::Exponential { .. }) => {}
                (ServiceKind::LogNormal, Delay::LogNormal { sigma, .. }) => {
                    prop_assert!((0.5..=1.2).contains(&sigma));
                }
                (ServiceKind::Bimodal, Delay::Bimodal { fast_ms, slow_ms, p_slow }) => {
                    prop_assert!((0.05..=0.2).contains(&p_slow));
                    let r = slow_ms / fast_ms;
                    prop_assert!((4.0 - 1e-9..=10.0 + 1e-9).contains(&r), "ratio {r}");
                }
                (k, d) => prop_assert!(false, "{k:?} with {d}"),
            }
            prop_assert!((st.compose.mean_ms() - 2.0 * read).abs() < 1e-9);
            prop_assert!((st.user_timeline.mean_ms() - 0.5 * read).abs() < 1e-9);
            if let Some(a) = g.affected {
                prop_assert!(a.peer < g.peers.len());
                match a.affliction {
                    Affliction::Small => {
                        for (i, p) in g.peers.iter().enumerate() {
                            if i == a.peer {
                                prop_assert!(p.workers <= 3);
                            } else {
                                prop_assert!(p.workers >= 6);
                            }
                        }
                    }
                    Affliction::Noisy { factor, period_s, slow_for_s } => {
                        prop_assert!((3.0..=8.0).contains(&factor));
                        prop_assert!((10.0..=30.0).contains(&period_s));
                        let f = slow_for_s / period_s;
                        // rounded to half a second
                        prop_assert!((0.2 - 0.25 / period_s..=0.5 + 0.25 / period_s).contains(&f));
                        prop_assert!(slow_for_s > 0.0 && slow_for_s < period_s);
                    }
                    Affliction::Degrading { factor, from, to } => {
                        prop_assert!((2.0..=5.0).contains(&factor));
                        prop_assert!((0.1..=0.4).contains(&from));
                        prop_assert!((0.6..=0.9).contains(&to));
                    }
                }
            }
            let worst = g.worst_capacity_rps;
            prop_assert!(worst > 0.0 && worst <= g.capacity_rps + 1e-9);
            prop_assert!((g.offered_rps - g.load * worst).abs() < 1e-9);
            prop_assert!((19200..=19999 - 5).contains(&g.port_base));
            // the runnable scenario matches the document
            let s = g.scenario();
            prop_assert_eq!(s.backends.len(), g.peers.len());
            prop_assert!((s.capacity_rps() - g.capacity_rps).abs() < 1e-6 * g.capacity_rps);
            let offered = match s.workload {
                Workload::Rate { load } => load,
                Workload::DayNight { peak_load, .. } => peak_load,
                Workload::GenLoad { .. } => f64::NAN,
            } * s.capacity_rps();
            prop_assert!((offered - g.offered_rps).abs() < 1e-6 * g.offered_rps);
            prop_assert_eq!(s.one_pool().is_some(), !matches!(
                g.affected.map(|a| a.affliction),
                Some(Affliction::Noisy { .. } | Affliction::Degrading { .. })
            ));
            prop_assert_eq!(Scenario::by_id(&g.id).map(|s| s.title), Some(g.title.clone()));
        }
    }

    #[test]
    fn the_seed_lists_parse_and_are_disjoint() {
        let tuning = parse_seeds(TUNING).unwrap();
        let heldout = parse_seeds(HELDOUT).unwrap();
        assert!(tuning.len() >= 10, "{} tuning seeds", tuning.len());
        assert!(
            (12..=16).contains(&heldout.len()),
            "{} held-out seeds",
            heldout.len()
        );
        for s in &heldout {
            assert!(!tuning.contains(s), "seed {s} is in both lists");
        }
    }

    #[test]
    fn held_out_scenarios_vary_the_affected_peer_and_cover_every_kind() {
        let heldout = parse_seeds(HELDOUT).unwrap();
        let gens: Vec<GeneratedScenario> = heldout.iter().map(|&s| generate(s)).collect();
        let kinds: std::collections::BTreeSet<&str> = gens
            .iter()
            .map(|g| g.affected.map_or("none", |a| a.affliction.name()))
            .collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["degrading", "noisy", "none", "small"]
        );
        let positions: std::collections::BTreeSet<usize> = gens
            .iter()
            .filter_map(|g| g.affected.map(|a| a.peer))
            .collect();
        assert!(positions.len() >= 3, "affected positions {positions:?}");
        // and not always the last peer either (the lab's S2/S3 habit)
        assert!(gens
            .iter()
            .filter_map(|g| g.affected.map(|a| (a.peer, g.peers.len())))
            .any(|(p, n)| p + 1 != n));
        // ports of one list do not collide (they may run one after another
        // in a script, with a policy naming peers by address)
        let ports: std::collections::BTreeSet<u16> = gens.iter().map(|g| g.port_base).collect();
        assert_eq!(ports.len(), gens.len());
    }

    #[test]
    fn seed_lists_reject_bad_lines_naming_them() {
        assert_eq!(parse_seeds("# c\n\n1\n2 # two\n"), Ok(vec![1, 2]));
        let e = parse_seeds("1\nx\n").unwrap_err();
        assert!(e.starts_with("line 2: \"x\" is not a seed"), "{e}");
        let e = parse_seeds("1\n-3\n").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
        let e = parse_seeds("5\n5\n").unwrap_err();
        assert_eq!(e, "line 2: seed 5 appears twice");
    }

    #[test]
    fn by_id_reads_generated_ids() {
        let s = Scenario::by_id("G7").unwrap();
        assert_eq!(s.id, "G7");
        assert_eq!(Scenario::by_id("g7").unwrap().title, s.title);
        assert!(Scenario::by_id("Gx").is_none());
        assert!(Scenario::by_id("G").is_none());
        assert_eq!(
            s.peer_ports(),
            (0..s.backends.len() as u16)
                .map(|i| 19200 + 8 * 7 + i)
                .collect::<Vec<_>>()
        );
    }
}
