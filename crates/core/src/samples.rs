//! The sample log: one JSON line per decision of one agent (schema in
//! `policies/samples.schema.json`). The module writes [`SampleRecord`]s;
//! the learner reads them back with the same type.
//!
//! Counters are those of the interval that **ended** at `time_ms`; `weights`
//! is the action chosen at `time_ms`, in force during the **next** interval.

use serde::{Deserialize, Serialize};

use crate::counters::PeerCounters;

/// The `format` value of a sample line.
pub const SAMPLES_FORMAT: &str = "deep_sched.samples";
/// The sample format version this build writes.
pub const SAMPLES_VERSION: u32 = 1;

/// One peer in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplePeer {
    /// `127.0.0.1:8081`.
    pub name: String,
    /// The interval's counts (deltas); `inflight` at the interval's end.
    #[serde(flatten)]
    pub counters: PeerCounters,
    /// Weight in force during the interval.
    pub weight: u32,
    /// What the active health checks found at the interval's end (absent
    /// without `deep_sched_check`, and in logs written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<SampleHealth>,
}

/// One peer's active health check results in a sample line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleHealth {
    /// `up`, `down` or `checking`.
    pub state: String,
    /// Consecutive passed checks.
    pub passes: u32,
    /// Consecutive failed checks.
    pub fails: u32,
    /// Duration of the last check, ms.
    pub latency_ms: u64,
    /// Why the last check failed (`null` when it passed).
    pub error: Option<String>,
}

/// One upstream in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleUpstream {
    /// Upstream name.
    pub name: String,
    /// Its peers, in agent order.
    pub peers: Vec<SamplePeer>,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Always `deep_sched.samples`.
    pub format: String,
    /// Always [`SAMPLES_VERSION`].
    pub version: u32,
    /// Wall clock of the decision, ms since the Unix epoch.
    pub time_ms: u64,
    /// Length of the interval that ended, ms.
    pub interval_ms: u64,
    /// The agent (policy path, log path or `upstream:NAME`).
    pub agent: String,
    /// Decision number of the agent (1, 2, ...).
    pub seq: u64,
    /// `observe`, `explore` or `policy`.
    pub mode: String,
    /// Per-upstream, per-peer counter deltas of the interval.
    pub upstreams: Vec<SampleUpstream>,
    /// The standardised feature vector (the policy's features, or the
    /// default set without a policy).
    pub features: Vec<f64>,
    /// GMM state (`null` without a policy).
    // Required, though it may be `null` (serde would take a missing
    // Option as None; the schema and DESIGN.md require the key).
    #[serde(deserialize_with = "Option::deserialize")]
    pub state: Option<usize>,
    /// `ln p(features)` under the policy's GMM.
    #[serde(deserialize_with = "Option::deserialize")]
    pub log_likelihood: Option<f64>,
    /// The observation was out of distribution (default action used).
    #[serde(default)]
    pub ood: bool,
    /// Action index in the policy (`null` outside a policy's action set).
    #[serde(deserialize_with = "Option::deserialize")]
    pub action: Option<usize>,
    /// The new weights, `weights[u][p]`.
    pub weights: Vec<Vec<u32>>,
    /// The action was exploratory.
    pub explored: bool,
}

impl SampleRecord {
    /// Per-interval counters `[u][p]`.
    pub fn deltas(&self) -> Vec<Vec<PeerCounters>> {
        self.upstreams
            .iter()
            .map(|u| u.peers.iter().map(|p| p.counters).collect())
            .collect()
    }

    /// Weights in force during this record's interval `[u][p]`.
    pub fn weights_in_force(&self) -> Vec<Vec<u32>> {
        self.upstreams
            .iter()
            .map(|u| u.peers.iter().map(|p| p.weight).collect())
            .collect()
    }

    /// The agent's shape as seen in this record.
    pub fn shape(&self) -> crate::features::AgentShape {
        crate::features::AgentShape {
            upstreams: self
                .upstreams
                .iter()
                .map(|u| crate::features::UpstreamShape {
                    name: u.name.clone(),
                    peers: u.peers.iter().map(|p| p.name.clone()).collect(),
                })
                .collect(),
        }
    }
}
