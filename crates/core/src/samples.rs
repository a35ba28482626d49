//! The sample log: one JSON line per decision of one agent (schema in
//! `policies/samples.schema.json`). The module writes [`SampleRecord`]s;
//! the learner reads them back with the same type.
//!
//! Counters are those of the interval that **ended** at `time_ms`; `weights`
//! is the action chosen at `time_ms`, in force during the **next** interval.

use serde::{Deserialize, Serialize};

use crate::counters::{PeerCounters, LATENCY_BUCKETS};

/// The `format` value of a sample line.
pub const SAMPLES_FORMAT: &str = "deep_sched.samples";
/// The sample format version this build writes.
pub const SAMPLES_VERSION: u32 = 1;

/// Tries of one peer charged to the decision interval in which they were
/// *dispatched* (not the one in which they ended): what the weights of that
/// interval caused, even when a queue made the responses arrive later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DispatchedCounts {
    /// Tries.
    pub requests: u64,
    /// Tries nginx counted as failures of the peer.
    pub failures: u64,
    /// Sum of their response times, ms.
    pub response_msec: u64,
    /// Their response times by bucket (the buckets of `latency_hist`).
    pub latency_hist: [u64; LATENCY_BUCKETS],
}

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
    /// Requests in flight at the interval's start (`inflight` is at its
    /// end): the backlog the interval inherited. Absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_start: Option<u64>,
    /// The tries dispatched in interval `dispatched_seq` of the record
    /// (the previous one), however late they ended. Absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched: Option<DispatchedCounts>,
    /// Tries that ended in this interval but were dispatched two or more
    /// intervals before it (too late for their own interval's record).
    /// Over a log, `dispatched` plus `late` add up to every try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<DispatchedCounts>,
    /// The peer's GMM state under a per-peer policy (absent otherwise, and
    /// when its features were out of distribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<usize>,
    /// The multiplier a per-peer policy applied to the peer's baseline
    /// weight (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
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
    /// The per-request choice the weights were applied with (`wrr`,
    /// `p2c`): a policy is learned for the choice it will be served with.
    /// Absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose: Option<String>,
    /// Probability that the decision rule took this `weights` vector, given
    /// what it observed (the propensity off-policy estimates divide by):
    /// 1 for observe and for a policy without `epsilon`; `(1/|W|)^n` for a
    /// uniform draw of `n` peers' weights from the set `W`;
    /// `ε/|A| + (1 − ε)·[a = table action]` for a policy with `epsilon=ε`
    /// over `|A|` actions. Absent in older logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
    /// For a continuous draw (`explore spread=σ`, or `epsilon=` that
    /// perturbed the weights): the natural log of the density of the drawn
    /// log-multipliers `y_i = ln(w_i / base_i)`, `Σ_i [−y_i²/(2σ²) −
    /// ln(σ√(2π))]`, plus `ln ε` when `epsilon=ε` chose to perturb
    /// (`propensity` is then absent). Densities are taken before the
    /// weights are rounded to whole numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_density: Option<f64>,
    /// The `seq` of the record whose interval the peers' `dispatched`
    /// counts were dispatched in (`seq − 1`: a record is written when its
    /// own interval's tries are still in flight). Absent in older logs and
    /// in an agent's first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_seq: Option<u64>,
    /// `paused` or `pinned` when the runtime API overrode the decision:
    /// `weights` are then the ones in force (configured or pinned), not the
    /// decision rule's. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

impl SampleRecord {
    /// Attaches the dispatch-interval credit: `counts[u][p]` is
    /// `(dispatched in interval dispatched_seq, ended late)` per peer.
    pub fn attach_dispatched(
        &mut self,
        dispatched_seq: u64,
        counts: &[Vec<(DispatchedCounts, DispatchedCounts)>],
    ) {
        self.dispatched_seq = Some(dispatched_seq);
        for (u, cs) in self.upstreams.iter_mut().zip(counts) {
            for (p, (d, l)) in u.peers.iter_mut().zip(cs) {
                p.dispatched = Some(*d);
                p.late = Some(*l);
            }
        }
    }

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
