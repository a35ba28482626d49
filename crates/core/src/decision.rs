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
use crate::policy::Policy;
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
    /// The policy's table; a random action with probability `epsilon`.
    Policy {
        /// The validated policy.
        policy: Arc<Policy>,
        /// Probability of a uniformly random action instead (0..=1).
        epsilon: f64,
    },
}

impl Mode {
    /// `observe`, `explore` or `policy`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Explore { .. } => "explore",
            Mode::Policy { .. } => "policy",
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
        }
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
            Mode::Policy { policy, .. } => {
                policy.actions()[policy.default_action()].weights.clone()
            }
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
        let interval = AgentInterval::from_deltas(&deltas, dt_ms);
        let features = self.features.compute(&interval);

        let (mut state, mut log_likelihood, mut ood, mut action, mut explored) =
            (None, None, false, None, false);
        let mut propensity = 1.0;
        let weights = match &self.mode {
            Mode::Observe => self.configured.clone(),
            Mode::Explore { weights } => {
                explored = true;
                let peers: usize = self.shape.upstreams.iter().map(|u| u.peers.len()).sum();
                propensity = (weights.len().max(1) as f64).powi(-(peers as i32));
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
            Mode::Policy { policy, epsilon } => {
                let finite = features.iter().all(|x| x.is_finite());
                let a = if finite {
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
                let a = if eps > 0.0 && rng.gen_bool(eps) {
                    explored = true;
                    rng.gen_range(0..policy.actions().len())
                } else {
                    a
                };
                let uniform = eps / policy.actions().len() as f64;
                propensity = if a == greedy {
                    uniform + (1.0 - eps)
                } else {
                    uniform
                };
                action = Some(a);
                policy.actions()[a].weights.clone()
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
            propensity: Some(propensity),
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
            let x = d.decide(
                &zero(),
                &counters([6, 6, 6], 10),
                1000,
                &[vec![1, 1, 1]],
                1,
                i,
                &mut rng,
            );
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
            let x = d.decide(
                &zero(),
                &counters([6, 6, 6], 10),
                1000,
                &[vec![1, 1, 1]],
                1,
                i,
                &mut rng,
            );
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
            let x = d.decide(
                &zero(),
                &counters([6, 6, 6], 10),
                1000,
                &[vec![1, 1, 1]],
                1,
                i,
                &mut rng,
            );
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
            let x = d.decide(
                &zero(),
                &counters([6, 6, 6], 10),
                1000,
                &[vec![1, 1, 1]],
                1,
                i,
                &mut rng,
            );
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
}
