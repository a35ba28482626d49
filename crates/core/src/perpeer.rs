//! Per-peer policies (policy format version 2, `"kind": "per_peer"`): one
//! shared model for every peer, so the policy does not care which peer is
//! the slow or small one, nor how many peers there are (issue #13, item 1).
//!
//! # Features
//!
//! Each peer `i` of an upstream (its *pool*) is described relative to the
//! pool. From the interval's counters (`dt` ms long): `m_i` the mean
//! response time of the tries that ended (ms; a peer with no ended try but
//! requests in flight is stuck: `m_i = dt`; a peer with neither is not
//! observed and takes the pool median), `o_i = response_msec_i / dt +
//! inflight_i` its occupancy (the time-averaged requests in service by
//! Little's law, plus the backlog left at the end), `b_i` its baseline
//! weight (capacity-proportional, see below), `u_i = o_i / b_i` its
//! occupancy per unit of capacity, `e_i` its error rate. With `M` the median
//! of the observed `m_j` and `U` the median of the `u_j` over the pool:
//!
//! ```text
//! latency_ratio = ln((m_i + 1) / (M + 1))
//! load_ratio    = ln((1 + u_i) / (1 + U))
//! error_rate    = e_i = (5xx_i + failures_i) / max(requests_i, 1)
//! pool_load     = ln(1 + U)
//! ```
//!
//! then standardised (`z = (x − mean) / std`). A peer's features depend on
//! its own counters and baseline and on the pool only through `(M, U)`:
//! permuting the peers permutes the features, and adding or removing a
//! peer changes another peer's features only as far as it moves the two
//! medians (a peer added at both medians changes nothing).
//!
//! # Decision
//!
//! The GMM classifies every peer's feature vector into a state `s_i`; one
//! shared table maps a state to a multiplier `k(s)`; the peer's weight is
//! `W_i = b_i · k(s_i)` (`default_multiplier` for a peer whose vector is out
//! of distribution), sent to the balancer as whole numbers scaled to the
//! pool's largest: `w_i = clamp(round(1000 · W_i / max_j W_j), 1, 1000)`.
//!
//! # Baseline
//!
//! `baseline.source = "capacity"`: the learner's capacity estimates, by
//! upstream and peer name; a peer the policy does not know gets the median
//! of its upstream's recorded baselines (a typical peer until re-learned),
//! and an upstream the policy has no baselines for uses its configured
//! weights. `"configured"`: the `weight=` of each peer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::counters::PeerCounters;
use crate::directive::{INTERVAL_RANGE_MS, MAX_WEIGHT};
use crate::features::{AgentShape, Standardization};
use crate::gmm::Gmm;
use crate::policy::{AgentDocument, GmmDocument, PeerMatch, PolicyError, POLICY_FORMAT};

/// The `version` of per-peer policy files.
pub const PER_PEER_VERSION: u32 = 2;
/// The `kind` of per-peer policy files.
pub const PER_PEER_KIND: &str = "per_peer";
/// Multipliers are kept within `[1/MAX_MULTIPLIER, MAX_MULTIPLIER]`.
pub const MAX_MULTIPLIER: f64 = 1000.0;

/// A per-peer feature (see the module documentation for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerFeature {
    /// `ln((m_i + 1) / (M + 1))`.
    LatencyRatio,
    /// `ln((1 + u_i) / (1 + U))`.
    LoadRatio,
    /// `e_i`.
    ErrorRate,
    /// `ln(1 + U)`.
    PoolLoad,
}

impl PeerFeature {
    /// Every feature, in the learner's default order.
    pub const ALL: [PeerFeature; 4] = [
        PeerFeature::LatencyRatio,
        PeerFeature::LoadRatio,
        PeerFeature::ErrorRate,
        PeerFeature::PoolLoad,
    ];

    /// The feature's value for a peer of a pool.
    pub fn of(self, peer: &PeerObservation, pool: &PoolStats, baseline: f64) -> f64 {
        let latency = peer.latency_ms.unwrap_or(pool.median_latency_ms);
        match self {
            PeerFeature::LatencyRatio => ((latency + 1.0) / (pool.median_latency_ms + 1.0)).ln(),
            PeerFeature::LoadRatio => {
                ((1.0 + peer.occupancy / baseline) / (1.0 + pool.median_load)).ln()
            }
            PeerFeature::ErrorRate => peer.error_rate,
            PeerFeature::PoolLoad => pool.median_load.ln_1p(),
        }
    }
}

/// What one interval says about one peer, before the pool is considered.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerObservation {
    /// Mean response time, ms; `None` when the peer was not observed (no
    /// try ended, none in flight).
    pub latency_ms: Option<f64>,
    /// Time-averaged requests in service plus the final backlog.
    pub occupancy: f64,
    /// `(5xx + failures) / max(requests, 1)`.
    pub error_rate: f64,
}

impl PeerObservation {
    /// From one interval's counter deltas (`inflight` at its end).
    pub fn of(d: &PeerCounters, dt_ms: u64) -> PeerObservation {
        let dt = dt_ms.max(1) as f64;
        let latency_ms = if d.requests > 0 {
            Some(d.response_msec as f64 / d.requests as f64)
        } else if d.inflight > 0 {
            // Nothing came back for a whole interval: at least dt.
            Some(dt)
        } else {
            None
        };
        PeerObservation {
            latency_ms,
            occupancy: d.response_msec as f64 / dt + d.inflight as f64,
            error_rate: (d.responses[4] + d.failures) as f64 / d.requests.max(1) as f64,
        }
    }
}

/// The pool statistics a peer's features depend on.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PoolStats {
    /// `M`: median mean latency of the observed peers (0 if none).
    pub median_latency_ms: f64,
    /// `U`: median occupancy per unit of baseline weight.
    pub median_load: f64,
}

/// The median of `xs` (mean of the middle two for an even count; 0 when
/// empty). Sorts `xs`.
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

impl PoolStats {
    /// `M` and `U` of a pool; `baselines[i] > 0`.
    pub fn of(peers: &[PeerObservation], baselines: &[f64]) -> PoolStats {
        let mut lat: Vec<f64> = peers.iter().filter_map(|p| p.latency_ms).collect();
        let mut load: Vec<f64> = peers
            .iter()
            .zip(baselines)
            .map(|(p, b)| p.occupancy / b)
            .collect();
        PoolStats {
            median_latency_ms: median(&mut lat),
            median_load: median(&mut load),
        }
    }
}

/// The baseline section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineDocument {
    /// `capacity` (the `weights` below) or `configured` (`weight=`).
    pub source: BaselineSource,
    /// `weights[upstream][peer]` > 0 (with `capacity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Where the baseline weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineSource {
    /// Capacity estimates recorded in the policy, by peer name.
    Capacity,
    /// The configured `weight=` of each peer.
    Configured,
}

/// A per-peer policy file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerPeerDocument {
    /// Always `deep_sched.policy`.
    pub format: String,
    /// Always [`PER_PEER_VERSION`].
    pub version: u32,
    /// Always [`PER_PEER_KIND`].
    pub kind: String,
    /// Decision interval, ms.
    pub interval_ms: u64,
    /// The upstreams the policy serves (their `peers` are those it was
    /// learned on, for information: any peers are served).
    pub agent: AgentDocument,
    /// The per-peer feature vector's layout.
    pub peer_features: Vec<PeerFeature>,
    /// Standardisation, one entry per feature.
    pub standardization: Standardization,
    /// The per-peer state model.
    pub gmm: GmmDocument,
    /// `multipliers[state]`: the factor on a peer's baseline weight.
    pub multipliers: Vec<f64>,
    /// The factor for a peer whose features are out of distribution.
    pub default_multiplier: f64,
    /// Below this log-likelihood a peer's vector is out of distribution
    /// (`null`: never).
    #[serde(deserialize_with = "Option::deserialize")]
    pub ood_log_likelihood: Option<f64>,
    /// The baseline weights.
    pub baseline: BaselineDocument,
    /// Free-form provenance.
    #[serde(default)]
    pub provenance: serde_json::Map<String, serde_json::Value>,
}

/// A validated per-peer policy.
#[derive(Debug, Clone)]
pub struct PerPeerPolicy {
    source: String,
    doc: PerPeerDocument,
    gmm: Gmm,
    shape: AgentShape,
    /// Per upstream of `doc.agent`, the median recorded baseline.
    unknown_baseline: Vec<Option<f64>>,
}

impl PerPeerDocument {
    /// Validates the document; `source_name` goes into error messages.
    pub fn validate(self, source_name: &str) -> Result<PerPeerPolicy, PolicyError> {
        let err = |path: &str, problem: String| PolicyError {
            source_name: source_name.to_owned(),
            path: path.to_owned(),
            problem,
        };
        let doc = self;
        if doc.format != POLICY_FORMAT {
            return Err(err(
                "format",
                format!("expected \"{POLICY_FORMAT}\", found \"{}\"", doc.format),
            ));
        }
        if doc.version != PER_PEER_VERSION {
            return Err(err(
                "version",
                format!(
                    "a per-peer policy has version {PER_PEER_VERSION}, found {}",
                    doc.version
                ),
            ));
        }
        if doc.kind != PER_PEER_KIND {
            return Err(err(
                "kind",
                format!("expected \"{PER_PEER_KIND}\", found \"{}\"", doc.kind),
            ));
        }
        let (lo, hi) = INTERVAL_RANGE_MS;
        if !(lo..=hi).contains(&doc.interval_ms) {
            return Err(err(
                "interval_ms",
                format!("{} is outside {lo}..={hi}", doc.interval_ms),
            ));
        }
        let ups = &doc.agent.upstreams;
        if ups.is_empty() {
            return Err(err("agent.upstreams", "no upstreams".into()));
        }
        for (u, up) in ups.iter().enumerate() {
            if up.name.is_empty() {
                return Err(err(
                    &format!("agent.upstreams[{u}].name"),
                    "empty name".into(),
                ));
            }
            if ups[..u].iter().any(|o| o.name == up.name) {
                return Err(err(
                    &format!("agent.upstreams[{u}].name"),
                    format!("upstream \"{}\" is listed twice", up.name),
                ));
            }
            for (p, name) in up.peers.iter().enumerate() {
                if up.peers[..p].contains(name) {
                    return Err(err(
                        &format!("agent.upstreams[{u}].peers[{p}]"),
                        format!("peer \"{name}\" is listed twice"),
                    ));
                }
            }
        }
        let d = doc.peer_features.len();
        if d == 0 {
            return Err(err("peer_features", "no features".into()));
        }
        for (i, f) in doc.peer_features.iter().enumerate() {
            if doc.peer_features[..i].contains(f) {
                return Err(err(
                    &format!("peer_features[{i}]"),
                    "the feature is listed twice".into(),
                ));
            }
        }
        let st = &doc.standardization;
        for (name, xs) in [("mean", &st.mean), ("std", &st.std)] {
            let path = format!("standardization.{name}");
            if xs.len() != d {
                return Err(err(&path, format!("{} values for {d} features", xs.len())));
            }
            if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
                return Err(err(&format!("{path}[{i}]"), "not a finite number".into()));
            }
        }
        if let Some(i) = st.std.iter().position(|s| *s <= 0.0) {
            return Err(err(
                &format!("standardization.std[{i}]"),
                "must be positive".into(),
            ));
        }
        let gmm = crate::policy::gmm_of(&doc.gmm, d, source_name)?;
        let k = gmm.k();
        if doc.multipliers.len() != k {
            return Err(err(
                "multipliers",
                format!("{} entries for {k} states", doc.multipliers.len()),
            ));
        }
        let range = 1.0 / MAX_MULTIPLIER..=MAX_MULTIPLIER;
        for (s, m) in doc.multipliers.iter().enumerate() {
            if !m.is_finite() || !range.contains(m) {
                return Err(err(
                    &format!("multipliers[{s}]"),
                    format!("{m} is not a number within 0.001..=1000"),
                ));
            }
        }
        if !doc.default_multiplier.is_finite() || !range.contains(&doc.default_multiplier) {
            return Err(err(
                "default_multiplier",
                format!(
                    "{} is not a number within 0.001..=1000",
                    doc.default_multiplier
                ),
            ));
        }
        if doc.ood_log_likelihood.is_some_and(|t| !t.is_finite()) {
            return Err(err("ood_log_likelihood", "not a finite number".into()));
        }
        let b = &doc.baseline;
        match b.source {
            BaselineSource::Configured if !b.weights.is_empty() => {
                return Err(err(
                    "baseline.weights",
                    "weights are only read with \"source\": \"capacity\"".into(),
                ))
            }
            BaselineSource::Capacity if b.weights.is_empty() => {
                return Err(err(
                    "baseline.weights",
                    "\"source\": \"capacity\" needs the weights by upstream and peer".into(),
                ))
            }
            _ => {}
        }
        for (up, peers) in &b.weights {
            if !ups.iter().any(|u| &u.name == up) {
                return Err(err(
                    &format!("baseline.weights.{up}"),
                    format!("upstream \"{up}\" is not in agent.upstreams"),
                ));
            }
            for (peer, w) in peers {
                if !w.is_finite() || *w <= 0.0 {
                    return Err(err(
                        &format!("baseline.weights.{up}.{peer}"),
                        format!("{w} is not a positive number"),
                    ));
                }
            }
        }
        let unknown_baseline = ups
            .iter()
            .map(|u| {
                b.weights.get(&u.name).and_then(|ps| {
                    let mut ws: Vec<f64> = ps.values().copied().collect();
                    (!ws.is_empty()).then(|| median(&mut ws))
                })
            })
            .collect();
        Ok(PerPeerPolicy {
            source: source_name.to_owned(),
            shape: AgentShape {
                upstreams: doc.agent.upstreams.clone(),
            },
            doc,
            gmm,
            unknown_baseline,
        })
    }
}

/// Whether the policy knows a peer (for status and the `nginx -t` warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The peer's baseline is recorded in the policy.
    Recorded,
    /// Not recorded: the median recorded baseline of its upstream.
    Median,
    /// The configured `weight=` (source `configured`, or no baselines
    /// recorded for the upstream).
    Configured,
}

impl PerPeerPolicy {
    /// Parses and validates a per-peer policy from JSON text.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<PerPeerPolicy, PolicyError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let doc: PerPeerDocument = serde_path_to_error::deserialize(de)
            .map_err(|e| crate::policy::parse_error(source_name, text, e))?;
        doc.validate(source_name)
    }

    /// The file (or name) the policy was read from.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// The document.
    pub fn document(&self) -> &PerPeerDocument {
        &self.doc
    }

    /// The upstreams the policy serves (and the peers it was learned on).
    pub fn shape(&self) -> &AgentShape {
        &self.shape
    }

    /// Matches an upstream by name (an error if the policy does not list
    /// it); any peers are served, the match says which it was learned on.
    pub fn check_upstream(
        &self,
        name: &str,
        peers: &[&str],
    ) -> Result<(usize, PeerMatch), PolicyError> {
        let Some(u) = self.shape.upstreams.iter().position(|x| x.name == name) else {
            return Err(PolicyError {
                source_name: self.source.clone(),
                path: "agent.upstreams".into(),
                problem: format!("no upstream \"{name}\""),
            });
        };
        Ok((u, PeerMatch::of(&self.shape.upstreams[u].peers, peers)))
    }

    /// The state model.
    pub fn gmm(&self) -> &Gmm {
        &self.gmm
    }

    /// Number of states.
    pub fn states(&self) -> usize {
        self.gmm.k()
    }

    /// The multiplier of a state.
    pub fn multiplier(&self, state: usize) -> f64 {
        self.doc
            .multipliers
            .get(state)
            .copied()
            .unwrap_or(self.doc.default_multiplier)
    }

    /// The baseline weight of a peer of an upstream, and where it came from.
    pub fn baseline(&self, upstream: &str, peer: &str, configured: u32) -> (f64, Known) {
        let configured = (f64::from(configured.max(1)), Known::Configured);
        if self.doc.baseline.source == BaselineSource::Configured {
            return configured;
        }
        let Some(u) = self
            .doc
            .agent
            .upstreams
            .iter()
            .position(|u| u.name == upstream)
        else {
            return configured;
        };
        match self.doc.baseline.weights.get(upstream) {
            Some(ps) => match ps.get(peer) {
                Some(w) => (*w, Known::Recorded),
                None => match self.unknown_baseline[u] {
                    Some(m) => (m, Known::Median),
                    None => configured,
                },
            },
            None => configured,
        }
    }

    /// The standardised feature vector of one peer into `out`.
    pub fn features_into(
        &self,
        peer: &PeerObservation,
        pool: &PoolStats,
        baseline: f64,
        out: &mut [f64],
    ) {
        let st = &self.doc.standardization;
        for (((o, f), m), s) in out
            .iter_mut()
            .zip(&self.doc.peer_features)
            .zip(&st.mean)
            .zip(&st.std)
        {
            *o = (f.of(peer, pool, baseline) - m) / s;
        }
    }

    /// Decides one pool: per peer the state (`None` when out of
    /// distribution), the log-likelihood and the continuous weight
    /// `b_i · k(s_i)`; `features` receives the standardised vectors
    /// (`peers × D`, row-major).
    pub fn decide_pool(
        &self,
        peers: &[PeerObservation],
        baselines: &[f64],
        features: &mut Vec<f64>,
    ) -> Vec<PeerDecision> {
        let d = self.doc.peer_features.len();
        let pool = PoolStats::of(peers, baselines);
        let mut scores = vec![0.0; self.gmm.k()];
        let mut scratch = vec![0.0; self.gmm.scratch_len()];
        features.clear();
        features.resize(peers.len() * d, 0.0);
        peers
            .iter()
            .zip(baselines)
            .zip(features.chunks_mut(d))
            .map(|((p, &b), x)| {
                self.features_into(p, &pool, b, x);
                let (state, ll) = if x.iter().all(|v| v.is_finite()) {
                    let (s, ll) = self.gmm.classify_with(x, &mut scores, &mut scratch);
                    let ood =
                        !ll.is_finite() || self.doc.ood_log_likelihood.is_some_and(|t| ll < t);
                    ((!ood).then_some(s), Some(ll))
                } else {
                    (None, None)
                };
                let k = state.map_or(self.doc.default_multiplier, |s| self.multiplier(s));
                PeerDecision {
                    state,
                    log_likelihood: ll,
                    multiplier: k,
                    weight: b * k,
                }
            })
            .collect()
    }
}

/// The decision for one peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerDecision {
    /// GMM state; `None` out of distribution.
    pub state: Option<usize>,
    /// `ln p(x)` of the peer's vector.
    pub log_likelihood: Option<f64>,
    /// The multiplier applied.
    pub multiplier: f64,
    /// `baseline · multiplier`.
    pub weight: f64,
}

/// Whole-number weights for the balancer:
/// `w_i = clamp(round(MAX_WEIGHT · W_i / max_j W_j), 1, MAX_WEIGHT)`.
pub fn integer_weights(ws: &[f64]) -> Vec<u32> {
    let top = ws
        .iter()
        .copied()
        .filter(|w| w.is_finite())
        .fold(0.0, f64::max);
    ws.iter()
        .map(|&w| {
            if top <= 0.0 || !w.is_finite() {
                return 1;
            }
            let x = (f64::from(MAX_WEIGHT) * w / top).round();
            x.clamp(1.0, f64::from(MAX_WEIGHT)) as u32
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn policy_json(multipliers: [f64; 2]) -> serde_json::Value {
        serde_json::json!({
            "format": "deep_sched.policy", "version": 2, "kind": "per_peer",
            "interval_ms": 1000,
            "agent": {"upstreams": [{"name": "backend", "peers": ["a", "b", "c"]}]},
            "peer_features": ["latency_ratio", "load_ratio", "error_rate", "pool_load"],
            "standardization": {"mean": [0, 0, 0, 0], "std": [1, 1, 1, 1]},
            "gmm": {"covariance": "diag", "weights": [0.7, 0.3],
                    "means": [[0, 0, 0, 1], [2, 1.5, 0, 1]],
                    "covariances": [[0.3, 0.5, 0.01, 1], [0.5, 0.8, 0.01, 1]]},
            "multipliers": multipliers, "default_multiplier": 1.0,
            "ood_log_likelihood": null,
            "baseline": {"source": "configured"},
        })
    }

    fn obs(lat: f64, occ: f64) -> PeerObservation {
        PeerObservation {
            latency_ms: Some(lat),
            occupancy: occ,
            error_rate: 0.0,
        }
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn observation_of_counters() {
        let mut c = PeerCounters {
            requests: 10,
            response_msec: 500,
            failures: 1,
            inflight: 2,
            ..PeerCounters::default()
        };
        c.responses[4] = 1;
        let o = PeerObservation::of(&c, 1000);
        assert_eq!(o.latency_ms, Some(50.0));
        assert!((o.occupancy - 2.5).abs() < 1e-12);
        assert!((o.error_rate - 0.2).abs() < 1e-12);
        let stuck = PeerCounters {
            inflight: 3,
            ..PeerCounters::default()
        };
        assert_eq!(PeerObservation::of(&stuck, 2000).latency_ms, Some(2000.0));
        assert_eq!(
            PeerObservation::of(&PeerCounters::default(), 2000).latency_ms,
            None
        );
    }

    #[test]
    fn the_slow_peer_is_in_the_slow_state_wherever_it_is() {
        let p = PerPeerPolicy::from_json_str(&policy_json([1.0, 0.1]).to_string(), "t").unwrap();
        for slow in 0..3 {
            let peers: Vec<_> = (0..3)
                .map(|i| {
                    if i == slow {
                        obs(80.0, 8.0)
                    } else {
                        obs(8.0, 1.0)
                    }
                })
                .collect();
            let mut f = Vec::new();
            let ds = p.decide_pool(&peers, &[1.0; 3], &mut f);
            for (i, d) in ds.iter().enumerate() {
                assert_eq!(
                    d.state,
                    Some(usize::from(i == slow)),
                    "slow {slow}, peer {i}"
                );
            }
            let w = integer_weights(&ds.iter().map(|d| d.weight).collect::<Vec<_>>());
            assert_eq!(w[slow], 100);
            assert!(w.iter().enumerate().all(|(i, x)| i == slow || *x == 1000));
        }
    }

    #[test]
    fn integer_weights_scale_to_the_largest() {
        assert_eq!(integer_weights(&[2.0, 1.0, 0.0001]), vec![1000, 500, 1]);
        assert_eq!(integer_weights(&[0.0, 0.0]), vec![1, 1]);
        assert_eq!(integer_weights(&[f64::NAN, 1.0]), vec![1, 1000]);
    }

    #[test]
    fn baselines_by_identity_and_the_unknown_peer_rule() {
        let mut v = policy_json([1.0, 0.5]);
        v["baseline"] = serde_json::json!({"source": "capacity",
            "weights": {"backend": {"a": 4.0, "b": 2.0, "c": 1.0}}});
        let p = PerPeerPolicy::from_json_str(&v.to_string(), "t").unwrap();
        assert_eq!(p.baseline("backend", "b", 7), (2.0, Known::Recorded));
        assert_eq!(p.baseline("backend", "new", 7), (2.0, Known::Median));
        assert_eq!(p.baseline("other", "a", 7), (7.0, Known::Configured));
        let p = PerPeerPolicy::from_json_str(&policy_json([1.0, 0.5]).to_string(), "t").unwrap();
        assert_eq!(p.baseline("backend", "a", 3), (3.0, Known::Configured));
    }

    fn arb_obs() -> impl Strategy<Value = (PeerObservation, f64)> {
        (
            proptest::option::weighted(0.9, 1.0f64..500.0),
            0.0f64..30.0,
            0.0f64..0.3,
            0.5f64..8.0,
        )
            .prop_map(|(l, o, e, b)| {
                (
                    PeerObservation {
                        latency_ms: l,
                        occupancy: o,
                        error_rate: e,
                    },
                    b,
                )
            })
    }

    proptest! {
        /// Adding a peer that sits at both pool medians (its mean latency
        /// equals `M`, its occupancy per unit of baseline equals `U`), or
        /// removing it again, leaves every other peer's features bit for
        /// bit unchanged, hence its state, multiplier and continuous weight.
        #[test]
        fn a_peer_added_at_the_medians_changes_no_other_peer(
            pool in proptest::collection::vec(arb_obs(), 1..7),
            base in 0.5f64..8.0,
        ) {
            let p = PerPeerPolicy::from_json_str(&policy_json([1.0, 0.2]).to_string(), "t").unwrap();
            let (peers, bases): (Vec<_>, Vec<_>) = pool.iter().copied().unzip();
            let stats = PoolStats::of(&peers, &bases);
            let mut f0 = Vec::new();
            let before = p.decide_pool(&peers, &bases, &mut f0);
            let added = PeerObservation {
                latency_ms: Some(stats.median_latency_ms),
                occupancy: stats.median_load * base,
                error_rate: 0.0,
            };
            // occupancy / base must give back U exactly for the claim.
            prop_assume!(added.occupancy / base == stats.median_load);
            let (mut peers2, mut bases2) = (peers.clone(), bases.clone());
            peers2.insert(0, added);
            bases2.insert(0, base);
            prop_assume!(peers.iter().any(|p| p.latency_ms.is_some()));
            prop_assert_eq!(PoolStats::of(&peers2, &bases2), stats);
            let mut f1 = Vec::new();
            let after = p.decide_pool(&peers2, &bases2, &mut f1);
            prop_assert_eq!(&after[1..], &before[..]);
            prop_assert_eq!(&f1[4..], &f0[..]);
        }

        /// In general another peer's features move only through (M, U):
        /// two pools with the same statistics give a peer the same vector.
        #[test]
        fn features_depend_on_the_pool_only_through_its_medians(
            (peer, b) in arb_obs(),
            m in 1.0f64..300.0,
            u in 0.0f64..20.0,
        ) {
            let p = PerPeerPolicy::from_json_str(&policy_json([1.0, 0.2]).to_string(), "t").unwrap();
            let pool = PoolStats { median_latency_ms: m, median_load: u };
            let mut x = vec![0.0; 4];
            p.features_into(&peer, &pool, b, &mut x);
            let lat = peer.latency_ms.unwrap_or(m);
            prop_assert_eq!(x[0], ((lat + 1.0) / (m + 1.0)).ln());
            prop_assert_eq!(x[1], ((1.0 + peer.occupancy / b) / (1.0 + u)).ln());
            prop_assert_eq!(x[2], peer.error_rate);
            prop_assert_eq!(x[3], u.ln_1p());
        }
    }
}
