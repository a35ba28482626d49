//! The policy file: its JSON form ([`PolicyDocument`], schema in
//! `policies/policy.schema.json`) and the validated, ready-to-score
//! [`Policy`].
//!
//! Everything is checked when the file is read — syntax, unknown or
//! duplicate keys, version, finiteness, every dimension, positive
//! definiteness, index ranges — and every error names the file, the JSON
//! path and the problem, because that message is what `nginx -t` prints.

use serde::{Deserialize, Serialize};

use crate::directive::{INTERVAL_RANGE_MS, MAX_WEIGHT};
use crate::features::{AgentShape, FeatureSet, FeatureSpec, Standardization};
use crate::gmm::{CovarianceKind, Gmm};

/// The `format` value of a policy file.
pub const POLICY_FORMAT: &str = "deep_sched.policy";
/// The policy format version this build reads and writes.
pub const POLICY_VERSION: u32 = 1;

/// A policy file problem: which file, where in it, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy \"{source_name}\": at {path}: {problem}")]
pub struct PolicyError {
    /// The file (or the name given to [`Policy::from_json_str`]).
    pub source_name: String,
    /// JSON path (`gmm.covariances[3]`), `$` for the whole document.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// `full` or `diag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CovarianceType {
    /// A full `D×D` matrix per component.
    Full,
    /// `D` variances per component.
    Diag,
}

/// A matrix per component (full) or a vector per component (diag).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PerComponent {
    /// `[K][D][D]`.
    Matrices(Vec<Vec<Vec<f64>>>),
    /// `[K][D]`.
    Vectors(Vec<Vec<f64>>),
}

impl<'de> Deserialize<'de> for PerComponent {
    /// Decides by nesting depth, so a malformed entry gets an error that
    /// says which shapes are accepted.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let depth3 = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x.as_array())
            .and_then(|a| a.first())
            .is_some_and(|x| x.is_array());
        let shape = if depth3 {
            "[K][D][D] numbers (full covariance)"
        } else {
            "[K][D] numbers (diag covariance)"
        };
        let out = if depth3 {
            serde_json::from_value(v).map(PerComponent::Matrices)
        } else {
            serde_json::from_value(v).map(PerComponent::Vectors)
        };
        out.map_err(|e| D::Error::custom(format!("expected {shape}: {e}")))
    }
}

/// The GMM section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmmDocument {
    /// How `covariances` / `precisions_cholesky` are shaped.
    pub covariance: CovarianceType,
    /// Mixture weights, summing to 1.
    pub weights: Vec<f64>,
    /// `[K][D]`.
    pub means: Vec<Vec<f64>>,
    /// Covariances (exactly one of this and `precisions_cholesky`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariances: Option<PerComponent>,
    /// Upper Cholesky factors of the precisions (`Σ⁻¹ = U Uᵀ`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precisions_cholesky: Option<PerComponent>,
}

/// One action: a weight per peer of every upstream of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDocument {
    /// `weights[u][p]`.
    pub weights: Vec<Vec<u32>>,
}

/// The `agent` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDocument {
    /// The agent's upstreams and their peers, in agent order.
    pub upstreams: Vec<crate::features::UpstreamShape>,
}

/// Scaling advice for a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// The peers look saturated: add a replica.
    Add,
    /// The peers look idle: one can go.
    Remove,
    /// Neither.
    Hold,
}

impl Scaling {
    /// `add`, `remove` or `hold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scaling::Add => "add",
            Scaling::Remove => "remove",
            Scaling::Hold => "hold",
        }
    }
}

/// A policy file as written (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Always `deep_sched.policy`.
    pub format: String,
    /// Always [`POLICY_VERSION`].
    pub version: u32,
    /// Decision interval, ms.
    pub interval_ms: u64,
    /// The upstreams and peers the policy was learned for.
    pub agent: AgentDocument,
    /// The feature vector's layout.
    pub features: Vec<FeatureSpec>,
    /// Standardisation of the features (one entry per feature).
    pub standardization: Standardization,
    /// The state model.
    pub gmm: GmmDocument,
    /// Weight sets the policy can apply.
    pub actions: Vec<ActionDocument>,
    /// `table[state]` = action index.
    pub table: Vec<usize>,
    /// Action for observations unlike the training data.
    pub default_action: usize,
    /// Below this total log-likelihood an observation is out of distribution
    /// (`null`: never).
    // Required, though it may be `null` (serde would take a missing
    // Option as None; the schema and DESIGN.md require the key).
    #[serde(deserialize_with = "Option::deserialize")]
    pub ood_log_likelihood: Option<f64>,
    /// Per-state scaling advice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Vec<Scaling>>,
    /// Free-form provenance: learner, algorithm, samples, created, reward, seed.
    #[serde(default)]
    pub provenance: serde_json::Map<String, serde_json::Value>,
}

/// A validated policy, ready to score observations.
#[derive(Debug, Clone)]
pub struct Policy {
    source: String,
    doc: PolicyDocument,
    shape: AgentShape,
    features: FeatureSet,
    gmm: Gmm,
}

struct Check<'a> {
    source: &'a str,
}

impl Check<'_> {
    fn err(&self, path: impl Into<String>, problem: impl Into<String>) -> PolicyError {
        PolicyError {
            source_name: self.source.to_owned(),
            path: path.into(),
            problem: problem.into(),
        }
    }

    fn finite(&self, path: &str, xs: &[f64]) -> Result<(), PolicyError> {
        match xs.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(self.err(format!("{path}[{i}]"), "not a finite number")),
            None => Ok(()),
        }
    }
}

fn flatten(
    check: &Check,
    path: &str,
    value: &PerComponent,
    kind: CovarianceType,
    k: usize,
    d: usize,
) -> Result<Vec<Vec<f64>>, PolicyError> {
    match (kind, value) {
        (CovarianceType::Full, PerComponent::Matrices(ms)) => {
            if ms.len() != k {
                return Err(check.err(path, format!("{} matrices for {k} components", ms.len())));
            }
            ms.iter()
                .enumerate()
                .map(|(c, m)| {
                    if m.len() != d || m.iter().any(|row| row.len() != d) {
                        return Err(
                            check.err(format!("{path}[{c}]"), format!("expected a {d}x{d} matrix"))
                        );
                    }
                    let flat: Vec<f64> = m.iter().flatten().copied().collect();
                    check.finite(&format!("{path}[{c}]"), &flat)?;
                    Ok(flat)
                })
                .collect()
        }
        (CovarianceType::Diag, PerComponent::Vectors(vs)) => {
            if vs.len() != k {
                return Err(check.err(path, format!("{} vectors for {k} components", vs.len())));
            }
            vs.iter()
                .enumerate()
                .map(|(c, v)| {
                    if v.len() != d {
                        return Err(check.err(
                            format!("{path}[{c}]"),
                            format!("expected {d} values, found {}", v.len()),
                        ));
                    }
                    check.finite(&format!("{path}[{c}]"), v)?;
                    Ok(v.clone())
                })
                .collect()
        }
        (CovarianceType::Full, _) => Err(check.err(
            path,
            "covariance \"full\" needs one DxD matrix per component",
        )),
        (CovarianceType::Diag, _) => Err(check.err(
            path,
            "covariance \"diag\" needs one vector of D values per component",
        )),
    }
}

/// Validates a GMM section for `d` features (shared by both policy kinds).
pub(crate) fn gmm_of(g: &GmmDocument, d: usize, source_name: &str) -> Result<Gmm, PolicyError> {
    let check = Check {
        source: source_name,
    };
    let k = g.weights.len();
    if k == 0 {
        return Err(check.err("gmm.weights", "no components"));
    }
    check.finite("gmm.weights", &g.weights)?;
    if let Some(i) = g.weights.iter().position(|w| *w <= 0.0) {
        return Err(check.err(
            format!("gmm.weights[{i}]"),
            "mixture weights must be positive",
        ));
    }
    let sum: f64 = g.weights.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(check.err(
            "gmm.weights",
            format!("mixture weights sum to {sum}, expected 1"),
        ));
    }
    if g.means.len() != k {
        return Err(check.err(
            "gmm.means",
            format!("{} means for {k} components", g.means.len()),
        ));
    }
    for (c, m) in g.means.iter().enumerate() {
        if m.len() != d {
            return Err(check.err(
                format!("gmm.means[{c}]"),
                format!("{} values for {d} features", m.len()),
            ));
        }
        check.finite(&format!("gmm.means[{c}]"), m)?;
    }
    let kind = match g.covariance {
        CovarianceType::Full => CovarianceKind::Full,
        CovarianceType::Diag => CovarianceKind::Diag,
    };
    let gmm = match (&g.covariances, &g.precisions_cholesky) {
        (Some(c), None) => {
            let covs = flatten(&check, "gmm.covariances", c, g.covariance, k, d)?;
            Gmm::from_covariances(kind, &g.weights, &g.means, &covs).map_err(|e| {
                check.err(
                    e.component.map_or("gmm.covariances".into(), |c| {
                        format!("gmm.covariances[{c}]")
                    }),
                    e.problem,
                )
            })?
        }
        (None, Some(p)) => {
            let prec = flatten(&check, "gmm.precisions_cholesky", p, g.covariance, k, d)?;
            Gmm::from_precisions_cholesky(kind, &g.weights, &g.means, &prec).map_err(|e| {
                check.err(
                    e.component.map_or("gmm.precisions_cholesky".into(), |c| {
                        format!("gmm.precisions_cholesky[{c}]")
                    }),
                    e.problem,
                )
            })?
        }
        (Some(_), Some(_)) => {
            return Err(check.err(
                "gmm",
                "give either \"covariances\" or \"precisions_cholesky\", not both",
            ))
        }
        (None, None) => {
            return Err(check.err(
                "gmm",
                "missing \"covariances\" (or \"precisions_cholesky\")",
            ))
        }
    };
    Ok(gmm)
}

impl PolicyDocument {
    /// Validates the document; `source_name` goes into error messages.
    pub fn validate(self, source_name: &str) -> Result<Policy, PolicyError> {
        let check = Check {
            source: source_name,
        };
        let doc = self;
        if doc.format != POLICY_FORMAT {
            return Err(check.err(
                "format",
                format!("expected \"{POLICY_FORMAT}\", found \"{}\"", doc.format),
            ));
        }
        if doc.version != POLICY_VERSION {
            return Err(check.err(
                "version",
                format!(
                    "unsupported version {} (this build reads version {POLICY_VERSION}, and \
                     version 2 with \"kind\": \"per_peer\")",
                    doc.version
                ),
            ));
        }
        let (lo, hi) = INTERVAL_RANGE_MS;
        if !(lo..=hi).contains(&doc.interval_ms) {
            return Err(check.err(
                "interval_ms",
                format!("{} is outside {lo}..={hi}", doc.interval_ms),
            ));
        }

        let shape = AgentShape {
            upstreams: doc.agent.upstreams.clone(),
        };
        if shape.upstreams.is_empty() {
            return Err(check.err("agent.upstreams", "no upstreams"));
        }
        for (u, up) in shape.upstreams.iter().enumerate() {
            if up.name.is_empty() {
                return Err(check.err(format!("agent.upstreams[{u}].name"), "empty name"));
            }
            if shape.upstreams[..u].iter().any(|o| o.name == up.name) {
                return Err(check.err(
                    format!("agent.upstreams[{u}].name"),
                    format!("upstream \"{}\" is listed twice", up.name),
                ));
            }
            if up.peers.is_empty() {
                return Err(check.err(format!("agent.upstreams[{u}].peers"), "no peers"));
            }
            for (p, name) in up.peers.iter().enumerate() {
                if up.peers[..p].contains(name) {
                    return Err(check.err(
                        format!("agent.upstreams[{u}].peers[{p}]"),
                        format!("peer \"{name}\" is listed twice"),
                    ));
                }
            }
        }

        let d = doc.features.len();
        if d == 0 {
            return Err(check.err("features", "no features"));
        }
        for (i, f) in doc.features.iter().enumerate() {
            if f.upstream >= shape.upstreams.len() {
                return Err(check.err(
                    format!("features[{i}].upstream"),
                    format!(
                        "upstream index {} out of range (the agent has {})",
                        f.upstream,
                        shape.upstreams.len()
                    ),
                ));
            }
            if let Some(p) = f.peer {
                let n = shape.peers_of(f.upstream);
                if p >= n {
                    return Err(check.err(
                        format!("features[{i}].peer"),
                        format!("peer index {p} out of range (upstream has {n})"),
                    ));
                }
            }
        }
        let st = &doc.standardization;
        if st.mean.len() != d {
            return Err(check.err(
                "standardization.mean",
                format!("{} values for {d} features", st.mean.len()),
            ));
        }
        if st.std.len() != d {
            return Err(check.err(
                "standardization.std",
                format!("{} values for {d} features", st.std.len()),
            ));
        }
        check.finite("standardization.mean", &st.mean)?;
        check.finite("standardization.std", &st.std)?;
        if let Some(i) = st.std.iter().position(|s| *s <= 0.0) {
            return Err(check.err(format!("standardization.std[{i}]"), "must be positive"));
        }

        let gmm = gmm_of(&doc.gmm, d, source_name)?;
        let k = gmm.k();

        if doc.actions.is_empty() {
            return Err(check.err("actions", "no actions"));
        }
        for (a, action) in doc.actions.iter().enumerate() {
            if action.weights.len() != shape.upstreams.len() {
                return Err(check.err(
                    format!("actions[{a}].weights"),
                    format!(
                        "{} upstreams, the agent has {}",
                        action.weights.len(),
                        shape.upstreams.len()
                    ),
                ));
            }
            for (u, ws) in action.weights.iter().enumerate() {
                let n = shape.peers_of(u);
                if ws.len() != n {
                    return Err(check.err(
                        format!("actions[{a}].weights[{u}]"),
                        format!("{} weights for {n} peers", ws.len()),
                    ));
                }
                if let Some(p) = ws.iter().position(|w| *w == 0 || *w > MAX_WEIGHT) {
                    return Err(check.err(
                        format!("actions[{a}].weights[{u}][{p}]"),
                        format!("weight {} is outside 1..={MAX_WEIGHT}", ws[p]),
                    ));
                }
            }
        }
        if doc.table.len() != k {
            return Err(check.err(
                "table",
                format!("{} entries for {k} states", doc.table.len()),
            ));
        }
        if let Some(s) = doc.table.iter().position(|a| *a >= doc.actions.len()) {
            return Err(check.err(
                format!("table[{s}]"),
                format!(
                    "action {} out of range ({} actions)",
                    doc.table[s],
                    doc.actions.len()
                ),
            ));
        }
        if doc.default_action >= doc.actions.len() {
            return Err(check.err(
                "default_action",
                format!(
                    "action {} out of range ({} actions)",
                    doc.default_action,
                    doc.actions.len()
                ),
            ));
        }
        if let Some(t) = doc.ood_log_likelihood {
            if !t.is_finite() {
                return Err(check.err("ood_log_likelihood", "not a finite number"));
            }
        }
        if let Some(s) = &doc.scaling {
            if s.len() != k {
                return Err(check.err("scaling", format!("{} entries for {k} states", s.len())));
            }
        }
        let features = FeatureSet {
            specs: doc.features.clone(),
            standardization: doc.standardization.clone(),
        };
        Ok(Policy {
            source: source_name.to_owned(),
            doc,
            shape,
            features,
            gmm,
        })
    }
}

/// Turns a serde error into the path-and-problem form.
pub(crate) fn parse_error(
    source_name: &str,
    text: &str,
    e: serde_path_to_error::Error<serde_json::Error>,
) -> PolicyError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let problem = if text.trim().is_empty() {
        "the file is empty".to_owned()
    } else if inner.is_eof() {
        format!(
            "the JSON ends early (truncated?) at line {} column {}",
            inner.line(),
            inner.column()
        )
    } else {
        inner.to_string()
    };
    PolicyError {
        source_name: source_name.to_owned(),
        path: if path.is_empty() || path == "." {
            "$".into()
        } else {
            path
        },
        problem,
    }
}

impl Policy {
    /// Parses and validates a policy from JSON text.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<Policy, PolicyError> {
        let first = text.trim_start().chars().next();
        if first.is_some() && first != Some('{') {
            return Err(PolicyError {
                source_name: source_name.to_owned(),
                path: "$".into(),
                problem: "expected a JSON object (the policy document)".into(),
            });
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let doc: PolicyDocument =
            serde_path_to_error::deserialize(de).map_err(|e| parse_error(source_name, text, e))?;
        doc.validate(source_name)
    }

    /// Reads and validates a policy file (the core's only I/O); errors name
    /// the file as given.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            path: "$".into(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::from_json_str(&text, &name)
    }

    /// The file (or name) the policy was read from.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// The document (for writing it back or inspecting it).
    pub fn to_document(&self) -> PolicyDocument {
        self.doc.clone()
    }

    /// The agent's upstreams and peers.
    pub fn shape(&self) -> &AgentShape {
        &self.shape
    }

    /// Features and standardisation.
    pub fn features(&self) -> &FeatureSet {
        &self.features
    }

    /// The scoring mixture.
    pub fn gmm(&self) -> &Gmm {
        &self.gmm
    }

    /// Number of states.
    pub fn states(&self) -> usize {
        self.gmm.k()
    }

    /// The actions.
    pub fn actions(&self) -> &[ActionDocument] {
        &self.doc.actions
    }

    /// Action for a state.
    pub fn action_for(&self, state: usize) -> usize {
        self.doc
            .table
            .get(state)
            .copied()
            .unwrap_or(self.doc.default_action)
    }

    /// The default action.
    pub fn default_action(&self) -> usize {
        self.doc.default_action
    }

    /// Out-of-distribution threshold.
    pub fn ood_log_likelihood(&self) -> Option<f64> {
        self.doc.ood_log_likelihood
    }

    /// Decision interval, ms.
    pub fn interval_ms(&self) -> u64 {
        self.doc.interval_ms
    }

    /// The format version of the file.
    pub fn format_version(&self) -> u32 {
        self.doc.version
    }

    /// Scaling advice for a state, if the policy has any.
    pub fn scaling(&self, state: usize) -> Option<&'static str> {
        self.doc
            .scaling
            .as_ref()
            .and_then(|s| s.get(state))
            .map(|s| s.as_str())
    }

    /// The per-request choice (`wrr`, `p2c`) the policy's samples were
    /// logged under: `provenance.choose`, written by `deep-sched learn` from
    /// the samples' `choose` field; `None` for policies learned from logs
    /// that did not record it.
    pub fn learned_under(&self) -> Option<&str> {
        self.doc.provenance.get("choose").and_then(|v| v.as_str())
    }

    /// Provenance as JSON.
    pub fn provenance_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.doc.provenance.clone())
    }

    /// Matches an nginx upstream against the policy's by identity: the
    /// name must be one of the agent's upstreams (else the policy cannot
    /// serve it: an error); its peers are matched by name, in any order
    /// (see [`PeerMatch`]). Returns the upstream's index in the agent and
    /// the match.
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

    /// The weights of action `a` for upstream `u`, mapped onto the peers of
    /// a match: a known peer gets its weight, an unknown one
    /// [`unknown_peer_weight`] of the action's weights.
    pub fn weights_for(&self, a: usize, u: usize, m: &PeerMatch) -> Vec<u32> {
        let ws = &self.doc.actions[a].weights[u];
        let fill = unknown_peer_weight(ws);
        m.to_policy
            .iter()
            .map(|q| q.and_then(|q| ws.get(q).copied()).unwrap_or(fill))
            .collect()
    }
}

/// The weight a version-1 policy gives a peer it does not know: the median
/// of the action's weights for the upstream's known peers (rounded; the
/// lower middle for an even count), i.e. a typical peer.
pub fn unknown_peer_weight(ws: &[u32]) -> u32 {
    let mut v = ws.to_vec();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(1)
        .max(1)
}

/// How an nginx upstream's peers match a policy's list, by name.
///
/// Rules (issue #14 item 3): a peer listed in both gets the policy's
/// features and weights whatever its position (reordered peers map
/// exactly); a peer the upstream has but the policy does not ("unknown")
/// gets [`unknown_peer_weight`]; a policy peer the upstream no longer has
/// ("missing") leaves a hole in the policy's feature vector, so every
/// observation is out of distribution and the default action is applied.
/// None of it fails `nginx -t`: it logs a warning that says what did not
/// match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMatch {
    /// For each upstream peer (nginx order), its index in the policy.
    pub to_policy: Vec<Option<usize>>,
    /// For each policy peer, its index in the upstream.
    pub from_policy: Vec<Option<usize>>,
    /// Upstream peers the policy does not know.
    pub unknown: Vec<String>,
    /// Policy peers the upstream does not have.
    pub missing: Vec<String>,
}

impl PeerMatch {
    /// Matches `peers` (the upstream's, in nginx order) against `policy`.
    pub fn of(policy: &[String], peers: &[&str]) -> PeerMatch {
        let to_policy: Vec<Option<usize>> = peers
            .iter()
            .map(|p| policy.iter().position(|q| q == p))
            .collect();
        let from_policy: Vec<Option<usize>> = policy
            .iter()
            .map(|q| peers.iter().position(|p| p == q))
            .collect();
        PeerMatch {
            unknown: peers
                .iter()
                .zip(&to_policy)
                .filter(|(_, q)| q.is_none())
                .map(|(p, _)| (*p).to_owned())
                .collect(),
            missing: policy
                .iter()
                .zip(&from_policy)
                .filter(|(_, p)| p.is_none())
                .map(|(q, _)| q.clone())
                .collect(),
            to_policy,
            from_policy,
        }
    }

    /// Same peers in the same order.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty()
            && self.to_policy.len() == self.from_policy.len()
            && self
                .to_policy
                .iter()
                .enumerate()
                .all(|(i, q)| *q == Some(i))
    }

    /// What did not match, in words (`None` when exact).
    pub fn describe(&self) -> Option<String> {
        if self.is_exact() {
            return None;
        }
        let mut parts = Vec::new();
        if !self.unknown.is_empty() {
            parts.push(format!(
                "peers unknown to the policy get the median weight of each action: {}",
                self.unknown.join(", ")
            ));
        }
        if !self.missing.is_empty() {
            parts.push(format!(
                "policy peers missing from the upstream make every observation out of \
                 distribution (default action): {}",
                self.missing.join(", ")
            ));
        }
        if parts.is_empty() {
            parts.push("the peers are in another order; matched by name".into());
        }
        Some(parts.join("; "))
    }
}

/// A policy of either kind, as the module and the learner load it: a
/// version-1 table policy ([`Policy`]) or a version-2 per-peer policy
/// ([`crate::perpeer::PerPeerPolicy`]).
#[derive(Debug, Clone)]
pub enum LoadedPolicy {
    /// Version 1: one state for the whole agent, a table state -> weights.
    Table(std::sync::Arc<Policy>),
    /// Version 2, `"kind": "per_peer"`.
    PerPeer(std::sync::Arc<crate::perpeer::PerPeerPolicy>),
}

/// Just enough of a document to tell the kinds apart.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    version: Option<serde_json::Value>,
    #[serde(default)]
    kind: Option<serde_json::Value>,
}

impl LoadedPolicy {
    /// Parses and validates either kind: a document with `"kind"` or
    /// `"version": 2` is read as a per-peer policy, anything else as
    /// version 1 (whose errors then say what is wrong).
    pub fn from_json_str(text: &str, source_name: &str) -> Result<LoadedPolicy, PolicyError> {
        // Only an object can be a per-peer document (serde would also read
        // the probe from an array).
        let object = text.trim_start().starts_with('{');
        let per_peer = object
            && serde_json::from_str::<Probe>(text).is_ok_and(|p| {
                p.kind.is_some()
                    || p.version.and_then(|v| v.as_u64())
                        == Some(u64::from(crate::perpeer::PER_PEER_VERSION))
            });
        if per_peer {
            crate::perpeer::PerPeerPolicy::from_json_str(text, source_name)
                .map(|p| LoadedPolicy::PerPeer(std::sync::Arc::new(p)))
        } else {
            Policy::from_json_str(text, source_name)
                .map(|p| LoadedPolicy::Table(std::sync::Arc::new(p)))
        }
    }

    /// Reads and validates a policy file of either kind.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<LoadedPolicy, PolicyError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            source_name: name.clone(),
            path: "$".into(),
            problem: format!("cannot read the file: {e}"),
        })?;
        Self::from_json_str(&text, &name)
    }

    /// The decision mode serving it, `epsilon=` as given.
    pub fn mode(&self, epsilon: f64) -> crate::decision::Mode {
        match self {
            LoadedPolicy::Table(p) => crate::decision::Mode::Policy {
                policy: std::sync::Arc::clone(p),
                epsilon,
            },
            LoadedPolicy::PerPeer(p) => crate::decision::Mode::PerPeer {
                policy: std::sync::Arc::clone(p),
                epsilon,
            },
        }
    }

    /// `table` or `per_peer`.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadedPolicy::Table(_) => "table",
            LoadedPolicy::PerPeer(_) => crate::perpeer::PER_PEER_KIND,
        }
    }

    /// The agent's upstreams as the policy lists them.
    pub fn shape(&self) -> &AgentShape {
        match self {
            LoadedPolicy::Table(p) => p.shape(),
            LoadedPolicy::PerPeer(p) => p.shape(),
        }
    }

    /// Decision interval, ms.
    pub fn interval_ms(&self) -> u64 {
        match self {
            LoadedPolicy::Table(p) => p.interval_ms(),
            LoadedPolicy::PerPeer(p) => p.document().interval_ms,
        }
    }

    /// `provenance.choose` (see [`Policy::learned_under`]).
    pub fn learned_under(&self) -> Option<&str> {
        self.provenance().get("choose").and_then(|v| v.as_str())
    }

    fn provenance(&self) -> &serde_json::Map<String, serde_json::Value> {
        match self {
            LoadedPolicy::Table(p) => &p.doc.provenance,
            LoadedPolicy::PerPeer(p) => &p.document().provenance,
        }
    }

    /// Provenance as JSON.
    pub fn provenance_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.provenance().clone())
    }

    /// The file's format version.
    pub fn format_version(&self) -> u32 {
        match self {
            LoadedPolicy::Table(p) => p.format_version(),
            LoadedPolicy::PerPeer(p) => p.document().version,
        }
    }

    /// Number of states.
    pub fn states(&self) -> usize {
        match self {
            LoadedPolicy::Table(p) => p.states(),
            LoadedPolicy::PerPeer(p) => p.states(),
        }
    }

    /// Number of actions (table) or of multipliers (per peer: one a state).
    pub fn actions(&self) -> usize {
        match self {
            LoadedPolicy::Table(p) => p.actions().len(),
            LoadedPolicy::PerPeer(p) => p.states(),
        }
    }

    /// Scaling advice of a state (table policies only).
    pub fn scaling(&self, state: usize) -> Option<&'static str> {
        match self {
            LoadedPolicy::Table(p) => p.scaling(state),
            LoadedPolicy::PerPeer(_) => None,
        }
    }

    /// Matches an upstream (see [`Policy::check_upstream`]); a per-peer
    /// policy serves any peers, so its match only says which peers have a
    /// recorded baseline.
    pub fn check_upstream(
        &self,
        name: &str,
        peers: &[&str],
    ) -> Result<(usize, PeerMatch), PolicyError> {
        match self {
            LoadedPolicy::Table(p) => p.check_upstream(name, peers),
            LoadedPolicy::PerPeer(p) => p.check_upstream(name, peers),
        }
    }

    /// The `nginx -t` warning for a match (`None`: nothing to say). A
    /// per-peer policy serves any set of peers; it only says which peers
    /// have no recorded baseline.
    pub fn mismatch_warning(&self, upstream: &str, m: &PeerMatch) -> Option<String> {
        match self {
            LoadedPolicy::Table(_) => m.describe(),
            LoadedPolicy::PerPeer(p) => {
                let unknown: Vec<&str> = m
                    .unknown
                    .iter()
                    .filter(|q| p.baseline(upstream, q, 1).1 != crate::perpeer::Known::Recorded)
                    .map(String::as_str)
                    .collect();
                (!unknown.is_empty()
                    && p.document().baseline.source == crate::perpeer::BaselineSource::Capacity)
                    .then(|| {
                        format!(
                            "peers without a recorded capacity get the median baseline of the \
                             upstream: {}",
                            unknown.join(", ")
                        )
                    })
            }
        }
    }

    /// What the policy makes of a peer, for the status: `known`,
    /// `unknown` (v1: the median weight; per peer: the median baseline) or
    /// `configured` (per peer: the configured weight as baseline).
    pub fn peer_knowledge(&self, upstream: &str, peer: &str) -> &'static str {
        match self {
            LoadedPolicy::Table(p) => {
                let known = p
                    .shape()
                    .upstreams
                    .iter()
                    .find(|u| u.name == upstream)
                    .is_some_and(|u| u.peers.iter().any(|q| q == peer));
                if known {
                    "known"
                } else {
                    "unknown"
                }
            }
            LoadedPolicy::PerPeer(p) => match p.baseline(upstream, peer, 1).1 {
                crate::perpeer::Known::Recorded => "known",
                crate::perpeer::Known::Median => "unknown",
                crate::perpeer::Known::Configured => "configured",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_a_path_and_names_it_in_errors() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/examples");
        let p = Policy::load(dir.join("three-peers.json")).unwrap();
        assert!(p.source_name().ends_with("three-peers.json"));
        let missing = dir.join("no-such-policy.json");
        let e = Policy::load(&missing).unwrap_err();
        assert_eq!(e.source_name, missing.display().to_string());
        assert_eq!(e.path, "$");
        assert!(e.problem.starts_with("cannot read the file: "), "{e}");
    }
}
