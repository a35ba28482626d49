//! One decision of an agent: counters → interval statistics → features →
//! GMM state → action, as a pure function of (counters, time, randomness).
//!
//! The module calls [`Decider::decide`] once per interval in the worker
//! that won the interval; the learner replays the same steps offline.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::counters::{AgentInterval, PeerCounters};
use crate::features::{AgentShape, FeatureSet, UpstreamShape};
use crate::perpeer::{integer_weights, PeerObservation, PerPeerPolicy};
use crate::policy::{PeerMatch, Policy};
use crate::samples::{SamplePeer, SampleRecord, SampleUpstream, SAMPLES_FORMAT, SAMPLES_VERSION};

/// What the agent does every interval.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Keep the configured weights.
    Observe,
    /// A random weight per peer from the set.
    Explore {
        /// The weights to draw from (uniformly).
        weights: Vec<u32>,
    },
    /// Log-normal noise around the configured weights every interval
    /// (`explore spread=σ`): `w_i = weight_i · exp(σ · z_i)`, `z_i ~ N(0, 1)`
    /// independently (see [`Decider::decide`] for the density logged).
    Perturb {
        /// `σ` of `ln w`.
        spread: f64,
    },
    /// The policy's table; with probability `epsilon` an exploratory action
    /// (a uniformly random one of the table, or the table's weights under
    /// log-normal noise when [`Decider::with_spread`] is set).
    Policy {
        /// The validated policy.
        policy: Arc<Policy>,
        /// Probability of exploring instead (0..=1).
        epsilon: f64,
    },
    /// A per-peer policy: every peer's state and multiplier on its
    /// baseline weight; with probability `epsilon` the weights under
    /// log-normal noise (σ from [`Decider::with_spread`], default
    /// [`DEFAULT_SPREAD`]).
    PerPeer {
        /// The validated policy.
        policy: Arc<PerPeerPolicy>,
        /// Probability of perturbing the weights (0..=1).
        epsilon: f64,
    },
}

/// `σ` of the log-normal noise of `epsilon=` with a per-peer policy when
/// `spread=` is not given.
pub const DEFAULT_SPREAD: f64 = 0.5;

/// Multiplies `ws` by independent log-normal noise `exp(σ z_i)` and
/// returns the log-density of the drawn log-multipliers `y_i = σ z_i`:
/// `ln f(y) = Σ_i [ −y_i² / (2σ²) − ln(σ √(2π)) ]`.
fn perturb<R: Rng + ?Sized>(ws: &mut [f64], spread: f64, rng: &mut R) -> f64 {
    let mut log_density = 0.0;
    for w in ws {
        let z: f64 = rng.sample(rand_distr::StandardNormal);
        *w *= (spread * z).exp();
        log_density += -0.5 * z * z - (spread * (2.0 * std::f64::consts::PI).sqrt()).ln();
    }
    log_density
}

impl Mode {
    /// `observe`, `explore` or `policy`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Explore { .. } | Mode::Perturb { .. } => "explore",
            Mode::Policy { .. } | Mode::PerPeer { .. } => "policy",
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The most likely GMM state (policy mode, finite features).
    pub state: Option<usize>,
    /// `ln p(x)` under the mixture (policy mode, finite features).
    pub log_likelihood: Option<f64>,
    /// The features were out of distribution (below the policy's
    /// `ood_log_likelihood`, or not finite): the default action was taken.
    pub ood: bool,
    /// The action applied (policy mode).
    pub action: Option<usize>,
    /// New weights `[u][p]`.
    pub weights: Vec<Vec<u32>>,
    /// The weights were drawn at random (explore mode, or epsilon).
    pub explored: bool,
    /// Standardised features.
    pub features: Vec<f64>,
    /// The line for the sample log.
    pub sample: SampleRecord,
}

/// Decides for one agent; holds reusable buffers.
#[derive(Debug, Clone)]
pub struct Decider {
    mode: Mode,
    agent: String,
    shape: AgentShape,
    configured: Vec<Vec<u32>>,
    features: FeatureSet,
    scores: Vec<f64>,
    scratch: Vec<f64>,
    choose: Option<String>,
    spread: Option<f64>,
    /// Version-1 policy: per upstream, how its peers match the policy's.
    matches: Vec<PeerMatch>,
    /// Per-peer policy: the baseline weight of every peer `[u][p]`.
    baselines: Vec<Vec<f64>>,
}

impl Decider {
    /// `upstreams`: names and peers in agent order; `configured`: the
    /// `weight=` of every peer.
    pub fn new(
        mode: Mode,
        agent: &str,
        upstreams: Vec<(String, Vec<String>)>,
        configured: Vec<Vec<u32>>,
    ) -> Decider {
        let shape = AgentShape {
            upstreams: upstreams
                .into_iter()
                .map(|(name, peers)| UpstreamShape { name, peers })
                .collect(),
        };
        let features = match &mode {
            Mode::Policy { policy, .. } => policy.features().clone(),
            _ => FeatureSet::default_for(&shape),
        };
        let matches = match &mode {
            Mode::Policy { policy, .. } => shape
                .upstreams
                .iter()
                .enumerate()
                .map(|(u, up)| {
                    let names: Vec<&str> = up.peers.iter().map(String::as_str).collect();
                    match policy.check_upstream(&up.name, &names) {
                        Ok((_, m)) => m,
                        // Not the policy's upstream (the module refuses
                        // that): nothing is known, nothing is missing.
                        Err(_) => PeerMatch::of(
                            policy
                                .shape()
                                .upstreams
                                .get(u)
                                .map_or(&[][..], |x| &x.peers),
                            &names,
                        ),
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let baselines = match &mode {
            Mode::PerPeer { policy, .. } => shape
                .upstreams
                .iter()
                .enumerate()
                .map(|(u, up)| {
                    up.peers
                        .iter()
                        .enumerate()
                        .map(|(p, name)| {
                            let c = configured.get(u).and_then(|w| w.get(p)).copied();
                            policy.baseline(&up.name, name, c.unwrap_or(1)).0
                        })
                        .collect()
                })
                .collect(),
            _ => Vec::new(),
        };
        let (k, d) = match &mode {
            Mode::Policy { policy, .. } => (policy.states(), policy.gmm().scratch_len()),
            _ => (0, features.len()),
        };
        Decider {
            mode,
            agent: agent.to_owned(),
            shape,
            configured,
            features,
            scores: vec![0.0; k],
            scratch: vec![0.0; d],
            choose: None,
            spread: None,
            matches,
            baselines,
        }
    }

    /// `spread=`: σ of the log-normal noise of `epsilon=` (a table policy
    /// without it explores by uniformly random actions).
    pub fn with_spread(mut self, spread: Option<f64>) -> Decider {
        self.spread = spread;
        self
    }

    /// Per-peer policy: the baseline weight of every peer `[u][p]`.
    pub fn baselines(&self) -> &[Vec<f64>] {
        &self.baselines
    }

    /// Version-1 policy: how each upstream's peers match the policy's.
    pub fn matches(&self) -> &[PeerMatch] {
        &self.matches
    }

    /// A table policy's action mapped onto the upstreams' peers by identity.
    fn table_weights(&self, policy: &Policy, a: usize) -> Vec<Vec<u32>> {
        self.matches
            .iter()
            .enumerate()
            .map(|(u, m)| policy.weights_for(a, u, m))
            .collect()
    }

    /// Records in every sample the per-request choice (`wrr`, `p2c`) the
    /// weights are applied with.
    pub fn with_choose(mut self, choose: &str) -> Decider {
        self.choose = Some(choose.to_owned());
        self
    }

    /// Weights before the first decision: the policy's default action, or
    /// the configured weights.
    pub fn initial_weights(&self) -> Vec<Vec<u32>> {
        match &self.mode {
            Mode::Policy { policy, .. } => self.table_weights(policy, policy.default_action()),
            Mode::PerPeer { policy, .. } => self
                .baselines
                .iter()
                .map(|b| {
                    let k = policy.document().default_multiplier;
                    integer_weights(&b.iter().map(|x| x * k).collect::<Vec<_>>())
                })
                .collect(),
            _ => self.configured.clone(),
        }
    }

    /// The agent's shape.
    pub fn shape(&self) -> &AgentShape {
        &self.shape
    }

    /// Decides at the end of an interval.
    ///
    /// `prev`/`cur`: cumulative counters `[u][p]` at the interval's start and
    /// end; `dt_ms`: its length; `in_force`: weights during it; `time_ms`:
    /// wall clock; `seq`: decision number.
    #[allow(clippy::too_many_arguments)]
    pub fn decide<R: Rng + ?Sized>(
        &mut self,
        prev: &[Vec<PeerCounters>],
        cur: &[Vec<PeerCounters>],
        dt_ms: u64,
        in_force: &[Vec<u32>],
        time_ms: u64,
        seq: u64,
        rng: &mut R,
    ) -> Decision {
        let deltas: Vec<Vec<PeerCounters>> = cur
            .iter()
            .zip(prev)
            .map(|(c, p)| c.iter().zip(p).map(|(c, p)| c.since(p)).collect())
            .collect();
        // A table policy scores the peers it knows, in its own order; a
        // peer it lists that the upstream lacks leaves a hole: out of
        // distribution.
        let mut hole = false;
        let interval = if self.matches.is_empty() {
            AgentInterval::from_deltas(&deltas, dt_ms)
        } else {
            let ordered: Vec<Vec<PeerCounters>> = self
                .matches
                .iter()
                .zip(&deltas)
                .map(|(m, ds)| {
                    m.from_policy
                        .iter()
                        .map(|p| match p.and_then(|p| ds.get(p)) {
                            Some(d) => *d,
                            None => {
                                hole = true;
                                PeerCounters::default()
                            }
                        })
                        .collect()
                })
                .collect();
            AgentInterval::from_deltas(&ordered, dt_ms)
        };
        let mut features = if matches!(self.mode, Mode::PerPeer { .. }) {
            Vec::new()
        } else {
            self.features.compute(&interval)
        };

        let (mut state, mut log_likelihood, mut ood, mut action, mut explored) =
            (None, None, false, None, false);
        let mut propensity = Some(1.0);
        let mut log_density = None;
        // Per-peer policies: every peer's state and multiplier.
        let mut peer_states: Vec<Vec<(Option<usize>, f64)>> = Vec::new();
        let weights = match &self.mode {
            Mode::Observe => self.configured.clone(),
            Mode::Explore { weights } => {
                explored = true;
                let peers: usize = self.shape.upstreams.iter().map(|u| u.peers.len()).sum();
                propensity = Some((weights.len().max(1) as f64).powi(-(peers as i32)));
                self.shape
                    .upstreams
                    .iter()
                    .map(|u| {
                        u.peers
                            .iter()
                            .map(|_| *weights.choose(rng).unwrap_or(&1))
                            .collect()
                    })
                    .collect()
            }
            Mode::Perturb { spread } => {
                explored = true;
                propensity = None;
                let mut total = 0.0;
                let ws = self
                    .configured
                    .iter()
                    .map(|c| {
                        let mut w: Vec<f64> = c.iter().map(|&x| f64::from(x.max(1))).collect();
                        total += perturb(&mut w, *spread, rng);
                        integer_weights(&w)
                    })
                    .collect();
                log_density = Some(total);
                ws
            }
            Mode::Policy { policy, epsilon } => {
                let finite = features.iter().all(|x| x.is_finite());
                let a = if finite && !hole {
                    let (s, ll) =
                        policy
                            .gmm()
                            .classify_with(&features, &mut self.scores, &mut self.scratch);
                    state = Some(s);
                    log_likelihood = Some(ll);
                    // A likelihood that is not finite (features so far out
                    // that the quadratic form overflows) says nothing about
                    // the state: out of distribution even without a threshold.
                    ood = !ll.is_finite() || policy.ood_log_likelihood().is_some_and(|t| ll < t);
                    if ood {
                        policy.default_action()
                    } else {
                        policy.action_for(s)
                    }
                } else {
                    ood = true;
                    policy.default_action()
                };
                let eps = epsilon.clamp(0.0, 1.0);
                let greedy = a;
                let explore = eps > 0.0 && rng.gen_bool(eps);
                match self.spread {
                    Some(spread) => {
                        action = Some(a);
                        let mut ws = self.table_weights(policy, a);
                        if explore {
                            explored = true;
                            propensity = None;
                            let mut total = eps.ln();
                            for w in &mut ws {
                                let mut x: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
                                total += perturb(&mut x, spread, rng);
                                *w = integer_weights(&x);
                            }
                            log_density = Some(total);
                        } else {
                            propensity = Some(1.0 - eps);
                        }
                        ws
                    }
                    None => {
                        let a = if explore {
                            explored = true;
                            rng.gen_range(0..policy.actions().len())
                        } else {
                            a
                        };
                        let uniform = eps / policy.actions().len() as f64;
                        propensity = Some(if a == greedy {
                            uniform + (1.0 - eps)
                        } else {
                            uniform
                        });
                        action = Some(a);
                        self.table_weights(policy, a)
                    }
                }
            }
            Mode::PerPeer { policy, epsilon } => {
                let d = policy.document().peer_features.len();
                let eps = epsilon.clamp(0.0, 1.0);
                let explore = eps > 0.0 && rng.gen_bool(eps);
                let spread = self.spread.unwrap_or(DEFAULT_SPREAD);
                let mut total = eps.ln();
                let mut pool_features = Vec::new();
                let ws = deltas
                    .iter()
                    .zip(&self.baselines)
                    .map(|(ds, bs)| {
                        let obs: Vec<PeerObservation> =
                            ds.iter().map(|c| PeerObservation::of(c, dt_ms)).collect();
                        let decided = policy.decide_pool(&obs, bs, &mut pool_features);
                        features.extend_from_slice(&pool_features);
                        ood |= decided.iter().any(|x| x.state.is_none());
                        peer_states.push(decided.iter().map(|x| (x.state, x.multiplier)).collect());
                        let mut w: Vec<f64> = decided.iter().map(|x| x.weight).collect();
                        if explore {
                            total += perturb(&mut w, spread, rng);
                        }
                        integer_weights(&w)
                    })
                    .collect();
                debug_assert!(features.len() % d.max(1) == 0);
                if explore {
                    explored = true;
                    propensity = None;
                    log_density = Some(total);
                } else {
                    propensity = Some(1.0 - eps);
                }
                ws
            }
        };

        let sample = SampleRecord {
            format: SAMPLES_FORMAT.into(),
            version: SAMPLES_VERSION,
            time_ms,
            interval_ms: dt_ms,
            agent: self.agent.clone(),
            seq,
            mode: self.mode.name().into(),
            upstreams: self
                .shape
                .upstreams
                .iter()
                .zip(&deltas)
                .enumerate()
                .map(|(u, (up, ds))| SampleUpstream {
                    name: up.name.clone(),
                    peers: up
                        .peers
                        .iter()
                        .zip(ds)
                        .enumerate()
                        .map(|(p, (name, d))| SamplePeer {
                            name: name.clone(),
                            counters: *d,
                            weight: in_force.get(u).and_then(|w| w.get(p)).copied().unwrap_or(0),
                            inflight_start: prev.get(u).and_then(|c| c.get(p)).map(|c| c.inflight),
                            dispatched: None,
                            late: None,
                            health: None,
                            state: peer_states.get(u).and_then(|s| s.get(p)).and_then(|s| s.0),
                            multiplier: peer_states.get(u).and_then(|s| s.get(p)).map(|s| s.1),
                        })
                        .collect(),
                })
                .collect(),
            features: features.clone(),
            state,
            log_likelihood,
            ood,
            action,
            weights: weights.clone(),
            explored,
            choose: self.choose.clone(),
            propensity,
            log_density,
            dispatched_seq: None,
            admin: None,
        };
        Decision {
            state,
            log_likelihood,
            ood,
            action,
            weights,
            explored,
            features,
            sample,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::latency_bucket;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const PEERS: [&str; 3] = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];

    fn slow_peer_policy(ood: Option<f64>) -> Arc<Policy> {
        let fast = 6f64.ln_1p();
        let slow = 100f64.ln_1p();
        let doc = serde_json::json!({
            "format": "deep_sched.policy", "version": 1, "interval_ms": 1000,
            "agent": {"upstreams": [{"name": "backend", "peers": PEERS}]},
            "features": (0..3).map(|p| serde_json::json!({"upstream": 0, "peer": p, "metric": "latency_p95_ms", "transform": "log1p"})).collect::<Vec<_>>(),
            "standardization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
            "gmm": {"covariance": "diag", "weights": [0.5, 0.5],
                    "means": [[fast, fast, fast], [fast, fast, slow]],
                    "covariances": [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]},
            "actions": [{"weights": [[1, 1, 1]]}, {"weights": [[5, 5, 1]]}],
            "table": [0, 1], "default_action": 0, "ood_log_likelihood": ood,
        });
        Arc::new(Policy::from_json_str(&doc.to_string(), "test").unwrap())
    }

    fn counters(latencies_ms: [u64; 3], n: u64) -> Vec<Vec<PeerCounters>> {
        vec![latencies_ms
            .iter()
            .map(|&ms| {
                let mut c = PeerCounters {
                    requests: n,
                    response_msec: n * ms,
                    ..PeerCounters::default()
                };
                c.responses[1] = n;
                c.latency_hist[latency_bucket(ms)] = n;
                c
            })
            .collect()]
    }

    fn decider(mode: Mode) -> Decider {
        Decider::new(
            mode,
            "test",
            vec![(
                "backend".into(),
                PEERS.iter().map(|s| s.to_string()).collect(),
            )],
            vec![vec![2, 2, 2]],
        )
    }

    fn zero() -> Vec<Vec<PeerCounters>> {
        vec![vec![PeerCounters::default(); 3]]
    }

    /// One decision on an interval where every peer answered 10 requests in
    /// 6 ms, with weights 1, 1, 1 in force.
    fn all_fast(d: &mut Decider, seq: u64, rng: &mut SmallRng) -> Decision {
        d.decide(
            &zero(),
            &counters([6, 6, 6], 10),
            1000,
            &[vec![1, 1, 1]],
            1,
            seq,
            rng,
        )
    }

    #[test]
    fn policy_picks_the_slow_peer_state() {
        let mut d = decider(Mode::Policy {
            policy: slow_peer_policy(None),
            epsilon: 0.0,
        });
        let mut rng = SmallRng::seed_from_u64(1);
        let fast = d.decide(
            &zero(),
            &counters([6, 6, 6], 100),
            1000,
            &[vec![1, 1, 1]],
            5,
            1,
            &mut rng,
        );
        assert_eq!(fast.state, Some(0));
        assert_eq!(fast.weights, vec![vec![1, 1, 1]]);
        let slow = d.decide(
            &zero(),
            &counters([6, 6, 100], 100),
            1000,
            &[vec![1, 1, 1]],
            6,
            2,
            &mut rng,
        );
        assert_eq!(slow.state, Some(1));
        assert_eq!(slow.action, Some(1));
        assert_eq!(slow.weights, vec![vec![5, 5, 1]]);
        assert!(!slow.explored);
        assert_eq!(slow.sample.upstreams[0].peers[2].counters.requests, 100);
        assert_eq!(slow.sample.upstreams[0].peers[2].weight, 1);
        assert_eq!(slow.sample.seq, 2);
    }

    #[test]
    fn out_of_distribution_takes_the_default_action() {
        let mut d = decider(Mode::Policy {
            policy: slow_peer_policy(Some(-10.0)),
            epsilon: 0.0,
        });
        let mut rng = SmallRng::seed_from_u64(1);
        // Peer 3 at 5 s: far from both states.
        let far = d.decide(
            &zero(),
            &counters([6, 6, 5000], 10),
            1000,
            &[vec![1, 1, 1]],
            1,
            1,
            &mut rng,
        );
        assert!(far.ood);
        assert_eq!(far.action, Some(0));
        let near = d.decide(
            &zero(),
            &counters([6, 6, 100], 10),
            1000,
            &[vec![1, 1, 1]],
            1,
            2,
            &mut rng,
        );
        assert!(!near.ood);
        assert_eq!(near.action, Some(1));
    }

    #[test]
    fn an_overflowing_likelihood_is_out_of_distribution_without_a_threshold() {
        // std 1e-300: finite features near 1e300, whose squares overflow.
        let mut doc = slow_peer_policy(None).to_document();
        doc.standardization.std = vec![1e-300; 3];
        doc.default_action = 1;
        let policy = Arc::new(doc.validate("tiny-std").unwrap());
        let mut d = decider(Mode::Policy {
            policy,
            epsilon: 0.0,
        });
        let mut rng = SmallRng::seed_from_u64(1);
        let x = d.decide(
            &zero(),
            &counters([6, 6, 6], 100),
            1000,
            &[vec![1, 1, 1]],
            1,
            1,
            &mut rng,
        );
        assert!(x.features.iter().all(|f| f.is_finite()));
        assert_eq!(x.log_likelihood, Some(f64::NEG_INFINITY));
        assert!(x.ood);
        assert_eq!(x.action, Some(1), "the default action, not table[0]");
    }

    #[test]
    fn epsilon_one_always_explores() {
        let mut d = decider(Mode::Policy {
            policy: slow_peer_policy(None),
            epsilon: 1.0,
        });
        let mut rng = SmallRng::seed_from_u64(9);
        let mut actions = std::collections::BTreeSet::new();
        for i in 0..50 {
            let x = all_fast(&mut d, i, &mut rng);
            assert!(x.explored);
            actions.insert(x.action.unwrap());
        }
        assert_eq!(actions.len(), 2);
    }

    /// The logged propensity is the frequency with which the decision rule
    /// takes the logged action (what importance weights divide by).
    #[test]
    fn propensity_is_the_frequency_of_the_logged_action() {
        let mut d = decider(Mode::Policy {
            policy: slow_peer_policy(None),
            epsilon: 0.3,
        });
        let mut rng = SmallRng::seed_from_u64(11);
        let n = 4000;
        let mut taken = [0usize; 2];
        let mut logged = [f64::NAN; 2];
        for i in 0..n {
            // Fast peers: the table's action is 0.
            let x = all_fast(&mut d, i, &mut rng);
            let a = x.action.unwrap();
            taken[a] += 1;
            logged[a] = x.sample.propensity.unwrap();
        }
        assert!((logged[0] - (0.7 + 0.15)).abs() < 1e-12, "{logged:?}");
        assert!((logged[1] - 0.15).abs() < 1e-12, "{logged:?}");
        for a in 0..2 {
            let p = logged[a];
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            let freq = taken[a] as f64 / n as f64;
            assert!((freq - p).abs() < 4.0 * sd, "action {a}: {freq} vs {p}");
        }

        let mut d = decider(Mode::Explore {
            weights: vec![1, 3, 5],
        });
        let mut ones = 0;
        for i in 0..n {
            let x = all_fast(&mut d, i, &mut rng);
            assert!((x.sample.propensity.unwrap() - 1.0 / 27.0).abs() < 1e-12);
            ones += usize::from(x.weights == vec![vec![1, 1, 1]]);
        }
        let (p, freq) = (1.0 / 27.0, ones as f64 / n as f64);
        assert!(
            (freq - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "{freq}"
        );

        let mut d = decider(Mode::Observe);
        let x = d.decide(
            &zero(),
            &counters([6, 6, 6], 10),
            1000,
            &[vec![2, 2, 2]],
            1,
            1,
            &mut rng,
        );
        assert_eq!(x.sample.propensity, Some(1.0));
    }

    #[test]
    fn samples_carry_the_choice_and_the_inherited_backlog() {
        let mut d = decider(Mode::Observe).with_choose("p2c");
        let mut rng = SmallRng::seed_from_u64(4);
        let mut prev = counters([5, 5, 5], 10);
        let mut cur = counters([5, 5, 5], 30);
        for (i, (p, c)) in prev[0].iter_mut().zip(cur[0].iter_mut()).enumerate() {
            p.inflight = 7 + i as u64;
            c.inflight = 1;
        }
        let x = d.decide(&prev, &cur, 1000, &[vec![2, 2, 2]], 1, 1, &mut rng);
        assert_eq!(x.sample.choose.as_deref(), Some("p2c"));
        let peers = &x.sample.upstreams[0].peers;
        let starts: Vec<_> = peers.iter().map(|p| p.inflight_start).collect();
        let ends: Vec<_> = peers.iter().map(|p| p.counters.inflight).collect();
        assert_eq!(starts, vec![Some(7), Some(8), Some(9)]);
        assert_eq!(ends, vec![1, 1, 1]);
        // Older lines without the new fields still load.
        let mut v = serde_json::to_value(&x.sample).unwrap();
        v.as_object_mut().unwrap().remove("choose");
        v.as_object_mut().unwrap().remove("propensity");
        v["upstreams"][0]["peers"][0]
            .as_object_mut()
            .unwrap()
            .remove("inflight_start");
        let old: SampleRecord = serde_json::from_value(v).unwrap();
        assert_eq!((old.choose, old.propensity), (None, None));
        assert_eq!(old.upstreams[0].peers[0].inflight_start, None);
    }

    #[test]
    fn explore_draws_from_the_set() {
        let mut d = decider(Mode::Explore {
            weights: vec![1, 3, 5],
        });
        let mut rng = SmallRng::seed_from_u64(4);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..40 {
            let x = all_fast(&mut d, i, &mut rng);
            assert!(x.explored && x.state.is_none() && x.action.is_none());
            for w in &x.weights[0] {
                assert!([1, 3, 5].contains(w));
                seen.insert(*w);
            }
            assert_eq!(x.features.len(), 1 + 3 * 3);
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn observe_keeps_configured_weights_and_resets_are_handled() {
        let mut d = decider(Mode::Observe);
        let mut rng = SmallRng::seed_from_u64(4);
        // cur < prev: the zone was re-created; counts are taken as they are.
        let x = d.decide(
            &counters([5, 5, 5], 100),
            &counters([5, 5, 5], 10),
            1000,
            &[vec![2, 2, 2]],
            1,
            1,
            &mut rng,
        );
        assert_eq!(x.weights, vec![vec![2, 2, 2]]);
        assert_eq!(x.sample.upstreams[0].peers[0].counters.requests, 10);
        assert_eq!(d.initial_weights(), vec![vec![2, 2, 2]]);
    }

    fn per_peer_policy(multipliers: [f64; 2]) -> Arc<PerPeerPolicy> {
        let doc = crate::perpeer::tests::policy_json(multipliers);
        Arc::new(PerPeerPolicy::from_json_str(&doc.to_string(), "pp").unwrap())
    }

    fn per_peer_decider(names: &[String], configured: Vec<u32>, epsilon: f64) -> Decider {
        Decider::new(
            Mode::PerPeer {
                policy: per_peer_policy([1.0, 0.1]),
                epsilon,
            },
            "pp",
            vec![("backend".into(), names.to_vec())],
            vec![configured],
        )
    }

    fn peer_counters(lat_ms: u64, n: u64, inflight: u64) -> PeerCounters {
        let mut c = PeerCounters {
            requests: n,
            response_msec: n * lat_ms,
            inflight,
            ..PeerCounters::default()
        };
        c.responses[1] = n;
        c.latency_hist[latency_bucket(lat_ms)] = n;
        c
    }

    #[test]
    fn a_per_peer_policy_steers_away_from_whichever_peer_is_slow() {
        let names: Vec<String> = (1..=4).map(|i| format!("127.0.0.1:{i}")).collect();
        let mut rng = SmallRng::seed_from_u64(3);
        for slow in 0..4 {
            let mut d = per_peer_decider(&names, vec![1; 4], 0.0);
            let cur = vec![(0..4)
                .map(|i| {
                    if i == slow {
                        peer_counters(80, 100, 8)
                    } else {
                        peer_counters(8, 100, 0)
                    }
                })
                .collect::<Vec<_>>()];
            let zero = vec![vec![PeerCounters::default(); 4]];
            let x = d.decide(&zero, &cur, 1000, &[vec![1; 4]], 1, 1, &mut rng);
            let w = &x.weights[0];
            for (i, wi) in w.iter().enumerate() {
                if i == slow {
                    assert_eq!(*wi, 100, "{w:?}");
                } else {
                    assert_eq!(*wi, 1000, "{w:?}");
                }
            }
            let states: Vec<_> = x.sample.upstreams[0]
                .peers
                .iter()
                .map(|p| p.state)
                .collect();
            assert_eq!(states[slow], Some(1));
            assert_eq!(x.sample.upstreams[0].peers[slow].multiplier, Some(0.1));
            assert_eq!(x.features.len(), 4 * 4);
            assert_eq!(x.sample.propensity, Some(1.0));
        }
    }

    proptest::proptest! {
        /// Permuting the peers of an interval (names, configured weights,
        /// counters together) permutes the weights, states, multipliers and
        /// per-peer feature vectors, and changes nothing else.
        #[test]
        fn permuting_the_peers_permutes_the_weights_and_nothing_else(
            peers in proptest::collection::vec((1u64..400, 0u64..200, 0u64..20, 1u32..6), 2..7),
            seed in 0u64..1000,
        ) {
            let n = peers.len();
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut SmallRng::seed_from_u64(seed));
            let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
            let run = |order: &[usize]| {
                let names: Vec<String> = order.iter().map(|&i| names[i].clone()).collect();
                let conf: Vec<u32> = order.iter().map(|&i| peers[i].3).collect();
                let cur = vec![order
                    .iter()
                    .map(|&i| peer_counters(peers[i].0, peers[i].1, peers[i].2))
                    .collect::<Vec<_>>()];
                let zero = vec![vec![PeerCounters::default(); n]];
                let mut d = per_peer_decider(&names, conf.clone(), 0.0);
                d.decide(&zero, &cur, 1000, &[conf], 1, 1, &mut SmallRng::seed_from_u64(1))
            };
            let id: Vec<usize> = (0..n).collect();
            let a = run(&id);
            let b = run(&perm);
            for (j, &i) in perm.iter().enumerate() {
                proptest::prop_assert_eq!(b.weights[0][j], a.weights[0][i]);
                let (pa, pb) = (&a.sample.upstreams[0].peers[i], &b.sample.upstreams[0].peers[j]);
                proptest::prop_assert_eq!(pa, pb);
                proptest::prop_assert_eq!(&b.features[j * 4..j * 4 + 4], &a.features[i * 4..i * 4 + 4]);
            }
            proptest::prop_assert_eq!((a.ood, a.explored, a.state), (b.ood, b.explored, b.state));
        }
    }

    #[test]
    fn a_table_policy_serves_reordered_and_added_peers_by_name() {
        let policy = slow_peer_policy(None);
        // nginx lists the slow peer (policy peer 3) first, and a new peer.
        let names: Vec<String> = ["127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:9", "127.0.0.1:2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut d = Decider::new(
            Mode::Policy {
                policy,
                epsilon: 0.0,
            },
            "test",
            vec![("backend".into(), names)],
            vec![vec![1, 1, 1, 1]],
        );
        assert_eq!(d.initial_weights(), vec![vec![1, 1, 1, 1]]);
        let mut rng = SmallRng::seed_from_u64(1);
        let cur = vec![vec![
            peer_counters(100, 100, 0),
            peer_counters(6, 100, 0),
            peer_counters(6, 100, 0),
            peer_counters(6, 100, 0),
        ]];
        let zero = vec![vec![PeerCounters::default(); 4]];
        let x = d.decide(&zero, &cur, 1000, &[vec![1; 4]], 1, 1, &mut rng);
        assert_eq!((x.state, x.ood), (Some(1), false));
        // Policy weights (5, 5, 1) by name; the new peer gets their median 5.
        assert_eq!(x.weights, vec![vec![1, 5, 5, 5]]);

        // A policy peer missing from the upstream: out of distribution,
        // the default action.
        let names: Vec<String> = ["127.0.0.1:3", "127.0.0.1:1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut d = Decider::new(
            Mode::Policy {
                policy: slow_peer_policy(None),
                epsilon: 0.0,
            },
            "test",
            vec![("backend".into(), names)],
            vec![vec![1, 1]],
        );
        let cur = vec![vec![peer_counters(100, 100, 0), peer_counters(6, 100, 0)]];
        let zero = vec![vec![PeerCounters::default(); 2]];
        let x = d.decide(&zero, &cur, 1000, &[vec![1; 2]], 1, 1, &mut rng);
        assert!(x.ood);
        assert_eq!(x.action, Some(0));
        assert_eq!(x.weights, vec![vec![1, 1]]);
    }

    #[test]
    fn explore_spread_draws_log_normal_weights_and_logs_their_density() {
        let mut d = decider(Mode::Perturb { spread: 0.5 });
        let mut rng = SmallRng::seed_from_u64(21);
        let n = 3000;
        let mut logs = Vec::new();
        for i in 0..n {
            let x = d.decide(
                &zero(),
                &counters([6, 6, 6], 10),
                1000,
                &[vec![2, 2, 2]],
                1,
                i,
                &mut rng,
            );
            assert!(x.explored && x.sample.propensity.is_none());
            let w = &x.weights[0];
            let top = *w.iter().max().unwrap();
            assert_eq!(top, 1000, "scaled to the largest");
            // Differences of log-weights are N(0, 2σ²) whatever the scale.
            logs.push((f64::from(w[0]) / f64::from(w[1])).ln());
            let ld = x.sample.log_density.unwrap();
            // Three independent N(0, σ²) densities: at most 3·(−ln(σ√2π)).
            assert!(ld <= 3.0 * -(0.5 * (2.0 * std::f64::consts::PI).sqrt()).ln() + 1e-12);
        }
        let mean = logs.iter().sum::<f64>() / n as f64;
        let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        // 2σ² = 0.5 (rounding to 1..=1000 adds a little).
        assert!((var - 0.5).abs() < 0.06, "{var}");
    }

    #[test]
    fn epsilon_with_spread_perturbs_the_table_weights() {
        let mut d = decider(Mode::Policy {
            policy: slow_peer_policy(None),
            epsilon: 0.25,
        })
        .with_spread(Some(0.3));
        let mut rng = SmallRng::seed_from_u64(8);
        let (mut perturbed, n) = (0, 2000);
        for i in 0..n {
            let x = d.decide(
                &zero(),
                &counters([6, 6, 100], 10),
                1000,
                &[vec![1, 1, 1]],
                1,
                i,
                &mut rng,
            );
            assert_eq!(x.action, Some(1), "the table's action, perturbed or not");
            if x.explored {
                perturbed += 1;
                assert!(x.sample.propensity.is_none());
                assert!(x.sample.log_density.is_some());
            } else {
                assert_eq!(x.weights, vec![vec![5, 5, 1]]);
                assert_eq!(x.sample.propensity, Some(0.75));
            }
        }
        let f = perturbed as f64 / n as f64;
        assert!(
            (f - 0.25).abs() < 4.0 * (0.25 * 0.75 / n as f64).sqrt(),
            "{f}"
        );
    }
}
