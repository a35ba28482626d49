//! Feature vectors: what the GMM sees of one interval.
//!
//! A feature is one metric of one peer (or of a whole upstream), optionally
//! `log1p`-transformed, then standardised: `z = (t(x) − mean) / std`.

use serde::{Deserialize, Serialize};

use crate::counters::{AgentInterval, PeerInterval};

/// The peers of an agent: upstream names and their peers, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentShape {
    /// The agent's upstreams.
    pub upstreams: Vec<UpstreamShape>,
}

/// One upstream of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamShape {
    /// `upstream NAME { ... }`.
    pub name: String,
    /// Primary peers in configuration order (`127.0.0.1:8081`).
    pub peers: Vec<String>,
}

impl AgentShape {
    /// Number of peers of upstream `u`.
    pub fn peers_of(&self, u: usize) -> usize {
        self.upstreams.get(u).map_or(0, |x| x.peers.len())
    }
}

/// A per-interval metric (see [`PeerInterval`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Tries per second.
    Rps,
    /// `(5xx + failures) / max(requests, 1)`.
    ErrorRate,
    /// Mean response time, ms.
    LatencyMeanMs,
    /// Median response time, ms (from the histogram).
    LatencyP50Ms,
    /// 95th percentile response time, ms (from the histogram).
    LatencyP95Ms,
    /// 99th percentile response time, ms (from the histogram).
    LatencyP99Ms,
    /// Requests in flight at the end of the interval.
    Inflight,
    /// Bytes per second received from the peer.
    InBytesRate,
    /// Bytes per second sent to the peer.
    OutBytesRate,
    /// The peer's share of its upstream's tries.
    Share,
}

impl Metric {
    /// The metric's value in an interval.
    pub fn of(self, i: &PeerInterval) -> f64 {
        match self {
            Metric::Rps => i.rps,
            Metric::ErrorRate => i.error_rate,
            Metric::LatencyMeanMs => i.latency_mean_ms,
            Metric::LatencyP50Ms => i.latency_p50_ms,
            Metric::LatencyP95Ms => i.latency_p95_ms,
            Metric::LatencyP99Ms => i.latency_p99_ms,
            Metric::Inflight => i.inflight,
            Metric::InBytesRate => i.in_bytes_rate,
            Metric::OutBytesRate => i.out_bytes_rate,
            Metric::Share => i.share,
        }
    }
}

/// A transform applied before standardisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// `x`.
    #[default]
    None,
    /// `ln(1 + max(x, 0))`: tames heavy-tailed rates and latencies.
    Log1p,
}

impl Transform {
    /// Applies the transform.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Transform::None => x,
            Transform::Log1p => x.max(0.0).ln_1p(),
        }
    }
}

/// One feature: a metric of a peer (`peer: Some`) or of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Upstream index in the agent.
    pub upstream: usize,
    /// Peer index in the upstream; `None` for the upstream as a whole.
    // Required, though it may be `null` (serde would take a missing
    // Option as None; the schema and DESIGN.md require the key).
    #[serde(deserialize_with = "Option::deserialize")]
    pub peer: Option<usize>,
    /// What is measured.
    pub metric: Metric,
    /// How it is transformed.
    #[serde(default)]
    pub transform: Transform,
}

impl FeatureSpec {
    /// The transformed (not yet standardised) value in an interval; 0 when
    /// the indices do not exist (validated policies never do that).
    pub fn raw(&self, interval: &AgentInterval) -> f64 {
        let source = match self.peer {
            Some(p) => interval.peers.get(self.upstream).and_then(|u| u.get(p)),
            None => interval.upstreams.get(self.upstream),
        };
        source.map_or(0.0, |i| self.transform.apply(self.metric.of(i)))
    }

    /// A readable name, e.g. `social/127.0.0.1:8081/latency_p95_ms(log1p)`.
    pub fn name(&self, shape: &AgentShape) -> String {
        let up = shape
            .upstreams
            .get(self.upstream)
            .map_or("?", |u| u.name.as_str());
        let peer = match self.peer {
            Some(p) => shape
                .upstreams
                .get(self.upstream)
                .and_then(|u| u.peers.get(p))
                .map_or("?", String::as_str),
            None => "*",
        };
        let metric = serde_json::to_value(self.metric)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match self.transform {
            Transform::None => format!("{up}/{peer}/{metric}"),
            Transform::Log1p => format!("{up}/{peer}/{metric}(log1p)"),
        }
    }
}

/// `z = (x − mean) / std`, per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardization {
    /// Per-feature mean (after the transform).
    pub mean: Vec<f64>,
    /// Per-feature standard deviation (> 0).
    pub std: Vec<f64>,
}

impl Standardization {
    /// No change: mean 0, std 1.
    pub fn identity(d: usize) -> Standardization {
        Standardization {
            mean: vec![0.0; d],
            std: vec![1.0; d],
        }
    }
}

/// The feature list and its standardisation.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    /// The features, in vector order.
    pub specs: Vec<FeatureSpec>,
    /// Their standardisation (same length).
    pub standardization: Standardization,
}

impl FeatureSet {
    /// The features logged by explore/observe agents and used by the learner
    /// unless told otherwise: per upstream `rps` (log1p), then per peer
    /// `latency_p95_ms` (log1p), `error_rate`, `inflight` (log1p).
    pub fn default_specs(shape: &AgentShape) -> Vec<FeatureSpec> {
        let mut specs = Vec::new();
        for u in 0..shape.upstreams.len() {
            specs.push(FeatureSpec {
                upstream: u,
                peer: None,
                metric: Metric::Rps,
                transform: Transform::Log1p,
            });
        }
        for (u, up) in shape.upstreams.iter().enumerate() {
            for p in 0..up.peers.len() {
                specs.push(FeatureSpec {
                    upstream: u,
                    peer: Some(p),
                    metric: Metric::LatencyP95Ms,
                    transform: Transform::Log1p,
                });
                specs.push(FeatureSpec {
                    upstream: u,
                    peer: Some(p),
                    metric: Metric::ErrorRate,
                    transform: Transform::None,
                });
                specs.push(FeatureSpec {
                    upstream: u,
                    peer: Some(p),
                    metric: Metric::Inflight,
                    transform: Transform::Log1p,
                });
            }
        }
        specs
    }

    /// The default features with no standardisation.
    pub fn default_for(shape: &AgentShape) -> FeatureSet {
        let specs = Self::default_specs(shape);
        let d = specs.len();
        FeatureSet {
            specs,
            standardization: Standardization::identity(d),
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True when there are no features.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Transformed, unstandardised values into `out` (`out.len() == len()`).
    pub fn raw_into(&self, interval: &AgentInterval, out: &mut [f64]) {
        for (o, s) in out.iter_mut().zip(&self.specs) {
            *o = s.raw(interval);
        }
    }

    /// Standardised values into `out`.
    pub fn compute_into(&self, interval: &AgentInterval, out: &mut [f64]) {
        self.raw_into(interval, out);
        let st = &self.standardization;
        for ((o, m), s) in out.iter_mut().zip(&st.mean).zip(&st.std) {
            *o = (*o - m) / s;
        }
    }

    /// Standardised values as a new vector.
    pub fn compute(&self, interval: &AgentInterval) -> Vec<f64> {
        let mut v = vec![0.0; self.len()];
        self.compute_into(interval, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{latency_bucket, PeerCounters};

    fn shape() -> AgentShape {
        AgentShape {
            upstreams: vec![UpstreamShape {
                name: "u".into(),
                peers: vec!["a".into(), "b".into()],
            }],
        }
    }

    #[test]
    fn default_set_layout() {
        let f = FeatureSet::default_for(&shape());
        assert_eq!(f.len(), 1 + 2 * 3);
        assert_eq!(f.specs[0].peer, None);
        assert_eq!(f.specs[1].metric, Metric::LatencyP95Ms);
        assert_eq!(f.specs[1].name(&shape()), "u/a/latency_p95_ms(log1p)");
    }

    #[test]
    fn compute_standardises() {
        let mut a = PeerCounters {
            requests: 100,
            ..PeerCounters::default()
        };
        a.latency_hist[latency_bucket(10)] = 100;
        let ai = AgentInterval::from_deltas(&[vec![a, PeerCounters::default()]], 1000);
        let mut f = FeatureSet::default_for(&shape());
        f.standardization.mean[0] = 1.0;
        f.standardization.std[0] = 2.0;
        let v = f.compute(&ai);
        assert!((v[0] - ((101f64).ln() - 1.0) / 2.0).abs() < 1e-12);
        assert!(
            (v[1] - (1.0 + 7.0 + 0.95 * 3.0f64).ln()).abs() < 1e-9,
            "{}",
            v[1]
        );
        assert_eq!(v[4], 0.0, "idle peer has p95 0");
    }

    #[test]
    fn metric_names_round_trip() {
        let s: FeatureSpec = serde_json::from_str(
            r#"{"upstream":0,"peer":null,"metric":"out_bytes_rate","transform":"log1p"}"#,
        )
        .unwrap();
        assert_eq!(s.metric, Metric::OutBytesRate);
        assert!(
            serde_json::from_str::<FeatureSpec>(r#"{"upstream":0,"peer":1,"metric":"vibes"}"#)
                .is_err()
        );
    }
}
