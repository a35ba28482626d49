//! The `deep_sched_status` document: JSON (serde) and Prometheus text.
//!
//! The module fills a [`StatusDocument`] from the shared zone; how it is
//! rendered is decided here, without nginx. Per-peer counter names follow
//! nginx-module-vts (`requestCounter`, `inBytes`, `outBytes`, `responses`,
//! `requestMsecCounter`, `requestMsec`, `weight`) so vts readers are at home.
//!
//! The Prometheus text follows the exposition format 0.0.4 and the naming
//! conventions: one family per name, counters end in `_total`, and the
//! response time is a histogram in seconds
//! (`deep_sched_peer_response_seconds_bucket{le}`, `_sum`, `_count`) built
//! from the zone's fixed buckets ([`LATENCY_BOUNDS_MS`]), so it can be
//! summed across workers and instances and read with `histogram_quantile`.
//! The JSON keeps the percentiles (`requestMsecs`), which Prometheus does not
//! get: percentiles cannot be aggregated.

use std::fmt::Write as _;

use serde::Serialize;

use crate::counters::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// The whole status page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusDocument {
    /// Module name and version, e.g. `deep_sched/0.1.0`.
    pub module: String,
    /// Wall clock of the snapshot, ms since the Unix epoch.
    #[serde(rename = "nowMsec")]
    pub now_msec: u64,
    /// Every agent of the configuration.
    pub agents: Vec<AgentStatus>,
}

/// One agent: its decision and its upstreams.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentStatus {
    /// Policy path, log path or `upstream:NAME`.
    pub name: String,
    /// `observe`, `explore` or `policy`.
    pub mode: String,
    /// `wrr` or `p2c`.
    pub choose: String,
    /// Decision interval, ms.
    #[serde(rename = "intervalMsec")]
    pub interval_msec: u64,
    /// Policy file and provenance, when there is a policy.
    pub policy: Option<PolicyStatus>,
    /// Number of decisions published since the zone was created.
    pub decisions: u64,
    /// Wall clock of the last decision (ms), 0 before the first.
    #[serde(rename = "lastDecisionMsec")]
    pub last_decision_msec: u64,
    /// The process that made the last decision (a worker, or the single
    /// process with `master_process off`); 0 before the first.
    #[serde(rename = "lastDecisionPid")]
    pub last_decision_pid: u64,
    /// GMM state of the last decision (policy mode).
    pub state: Option<usize>,
    /// Action of the last decision (policy mode).
    pub action: Option<usize>,
    /// Log-likelihood of the last observation under the policy's GMM.
    #[serde(rename = "logLikelihood")]
    pub log_likelihood: Option<f64>,
    /// The observation was unlike the training data: default action used.
    pub ood: bool,
    /// The last action was exploratory.
    pub explored: bool,
    /// The policy's scaling advice for the current state (`add`, `remove`, `hold`).
    pub scaling: Option<String>,
    /// Decisions paused through the runtime API (`mode: observe`): the
    /// configured weights apply.
    pub paused: bool,
    /// Weights pinned through the runtime API.
    pub pinned: bool,
    /// The process that runs the agent's health checks now (absent without
    /// `deep_sched_check` or while nobody holds the lease).
    #[serde(rename = "checkerPid", skip_serializing_if = "Option::is_none")]
    pub checker_pid: Option<u64>,
    /// The agent's upstreams.
    pub upstreams: Vec<UpstreamStatus>,
}

/// Policy identity shown on the status page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyStatus {
    /// The policy file as configured.
    pub file: String,
    /// The file's format version.
    #[serde(rename = "formatVersion")]
    pub format_version: u32,
    /// Number of GMM states.
    pub states: usize,
    /// Number of actions (per-peer policies: of multipliers, one a state).
    pub actions: usize,
    /// `table` (version 1) or `per_peer` (version 2).
    pub kind: String,
    /// Provenance, as in the file (learner, algorithm, samples, created...).
    pub provenance: serde_json::Value,
}

/// One upstream of an agent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamStatus {
    /// Upstream name.
    pub name: String,
    /// Its peers, in agent order.
    pub peers: Vec<PeerStatus>,
}

/// Response counts by class, as vts names them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Responses {
    /// 1xx responses.
    #[serde(rename = "1xx")]
    pub r1xx: u64,
    /// 2xx responses.
    #[serde(rename = "2xx")]
    pub r2xx: u64,
    /// 3xx responses.
    #[serde(rename = "3xx")]
    pub r3xx: u64,
    /// 4xx responses.
    #[serde(rename = "4xx")]
    pub r4xx: u64,
    /// 5xx responses.
    #[serde(rename = "5xx")]
    pub r5xx: u64,
}

impl From<[u64; 5]> for Responses {
    fn from(r: [u64; 5]) -> Self {
        Self {
            r1xx: r[0],
            r2xx: r[1],
            r3xx: r[2],
            r4xx: r[3],
            r5xx: r[4],
        }
    }
}

/// Latency percentiles (ms) of all requests since the zone was created.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One peer: cumulative counters, the last interval's rate, weights.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    /// Peer address as nginx names it.
    pub server: String,
    /// Tries finished since the zone was created.
    #[serde(rename = "requestCounter")]
    pub request_counter: u64,
    /// Bytes received from the peer.
    #[serde(rename = "inBytes")]
    pub in_bytes: u64,
    /// Bytes sent to the peer.
    #[serde(rename = "outBytes")]
    pub out_bytes: u64,
    /// Responses by status class.
    pub responses: Responses,
    /// Tries nginx counted as failures of the peer.
    pub failures: u64,
    /// Sum of response times, ms.
    #[serde(rename = "requestMsecCounter")]
    pub request_msec_counter: u64,
    /// Mean response time, ms (vts: `requestMsec`).
    #[serde(rename = "requestMsec")]
    pub request_msec: u64,
    /// Response-time percentiles, ms.
    #[serde(rename = "requestMsecs")]
    pub request_msecs: Percentiles,
    /// Tries by response-time bucket ([`LATENCY_BOUNDS_MS`], per bucket,
    /// not cumulative) since the zone was created: the Prometheus
    /// histogram `deep_sched_peer_response_seconds`. Not in the JSON.
    #[serde(skip)]
    pub latency_hist: [u64; LATENCY_BUCKETS],
    /// Requests now at the peer.
    pub inflight: u64,
    /// Peak-EWMA time to the response header, ms, as `choose=p2c` reads
    /// it now (decayed since the last sample; 0 before the first response).
    #[serde(rename = "latencyEwmaMsec")]
    pub latency_ewma_msec: f64,
    /// Share multiplier of the peer's slow start (`slow_start=`): 1 when
    /// it is not ramping, from 0.1 up while it is.
    #[serde(rename = "slowStartFactor")]
    pub slow_start_factor: f64,
    /// Requests per second since the last decision.
    pub rps: f64,
    /// Weight in force (the current action's).
    pub weight: u32,
    /// Weight from the `server` line.
    #[serde(rename = "configuredWeight")]
    pub configured_weight: u32,
    /// The peer's id for the runtime API (`PATCH .../peers/<id>`): its
    /// index in the zone, the same in every worker while the configuration
    /// lasts.
    pub id: usize,
    /// What the runtime API made of the peer: `up`, `draining` (drain set,
    /// requests still in flight), `drained` or `down`.
    pub state: String,
    /// Weight set through the runtime API (`null`: none).
    #[serde(rename = "adminWeight")]
    pub admin_weight: Option<u32>,
    /// What the agent's policy makes of the peer (absent without a
    /// policy): `known` (listed in it), `unknown` (a table policy gives it
    /// the median weight of each action; a per-peer policy the median
    /// recorded baseline) or `configured` (a per-peer policy's baseline is
    /// the peer's `weight=`).
    #[serde(rename = "policyPeer", skip_serializing_if = "Option::is_none")]
    pub policy_peer: Option<String>,
    /// What the active health checks found (absent without
    /// `deep_sched_check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<PeerHealth>,
}

/// One peer's active health check results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerHealth {
    /// `up`, `down` or `checking` (no answer yet).
    pub state: String,
    /// Consecutive passed checks.
    #[serde(rename = "consecutivePasses")]
    pub passes: u32,
    /// Consecutive failed checks.
    #[serde(rename = "consecutiveFails")]
    pub fails: u32,
    /// Checks finished since the zone was created.
    pub checks: u64,
    /// Wall clock of the last finished check, ms since the epoch (0: none).
    #[serde(rename = "lastCheckMsec")]
    pub last_check_msec: u64,
    /// How long the last check took, ms.
    #[serde(rename = "lastLatencyMsec")]
    pub last_latency_msec: u64,
    /// Why the last check failed (`refused`, `reset`, `timeout`, `closed`,
    /// `garbage`, `status`, `tls`, `connect`, `internal`), `null` when it
    /// passed.
    #[serde(rename = "lastError")]
    pub last_error: Option<String>,
    /// HTTP status of the last answer, `null` without one.
    #[serde(rename = "lastStatus")]
    pub last_status: Option<u16>,
}

/// Escapes a Prometheus label value (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl StatusDocument {
    /// Every peer with its Prometheus labels (agent, upstream, server).
    fn peers(&self) -> impl Iterator<Item = (String, &PeerStatus)> {
        self.agents.iter().flat_map(|a| {
            a.upstreams.iter().flat_map(move |u| {
                u.peers.iter().map(move |p| {
                    (
                        format!(
                            "agent=\"{}\",upstream=\"{}\",server=\"{}\"",
                            label(&a.name),
                            label(&u.name),
                            label(&p.server)
                        ),
                        p,
                    )
                })
            })
        })
    }

    /// Pretty JSON, as served by `deep_sched_status`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        // `# HELP` and `# TYPE` of a family, then its samples (`suffix` is
        // appended to the family name: empty, or `_bucket`/`_sum`/`_count`).
        let mut family =
            |name: &str, kind: &str, help: &str, rows: Vec<(&'static str, String, String)>| {
                let _ = writeln!(out, "# HELP deep_sched_{name} {help}");
                let _ = writeln!(out, "# TYPE deep_sched_{name} {kind}");
                for (suffix, labels, value) in rows {
                    let _ = writeln!(out, "deep_sched_{name}{suffix}{{{labels}}} {value}");
                }
            };

        let agent_rows = |f: &dyn Fn(&AgentStatus) -> Option<String>| {
            self.agents
                .iter()
                .filter_map(|a| f(a).map(|v| ("", format!("agent=\"{}\"", label(&a.name)), v)))
                .collect::<Vec<_>>()
        };
        family(
            "decisions_total",
            "counter",
            "Decisions published by the agent.",
            agent_rows(&|a| Some(a.decisions.to_string())),
        );
        family(
            "state",
            "gauge",
            "Current GMM state of the agent (-1: none).",
            agent_rows(&|a| Some(a.state.map_or(-1, |s| s as i64).to_string())),
        );
        family(
            "action",
            "gauge",
            "Current action index of the agent (-1: none).",
            agent_rows(&|a| Some(a.action.map_or(-1, |s| s as i64).to_string())),
        );
        family(
            "out_of_distribution",
            "gauge",
            "1 when the last observation was out of distribution.",
            agent_rows(&|a| Some(u8::from(a.ood).to_string())),
        );
        family(
            "scaling_advice",
            "gauge",
            "Scaling advice for the current state: 1 add a replica, -1 remove one, 0 hold.",
            agent_rows(&|a| {
                a.scaling.as_deref().map(|s| {
                    match s {
                        "add" => "1",
                        "remove" => "-1",
                        _ => "0",
                    }
                    .to_owned()
                })
            }),
        );

        let peer_rows = |f: &dyn Fn(&PeerStatus) -> String| {
            self.peers().map(|(l, p)| ("", l, f(p))).collect::<Vec<_>>()
        };
        family(
            "peer_requests_total",
            "counter",
            "Tries that finished at the peer.",
            peer_rows(&|p| p.request_counter.to_string()),
        );
        family(
            "peer_in_bytes_total",
            "counter",
            "Bytes received from the peer.",
            peer_rows(&|p| p.in_bytes.to_string()),
        );
        family(
            "peer_out_bytes_total",
            "counter",
            "Bytes sent to the peer.",
            peer_rows(&|p| p.out_bytes.to_string()),
        );
        family(
            "peer_failures_total",
            "counter",
            "Tries nginx counted as failures of the peer.",
            peer_rows(&|p| p.failures.to_string()),
        );
        let mut rows = Vec::new();
        for (labels, p) in self.peers() {
            let r = p.responses;
            for (class, n) in [
                ("1xx", r.r1xx),
                ("2xx", r.r2xx),
                ("3xx", r.r3xx),
                ("4xx", r.r4xx),
                ("5xx", r.r5xx),
            ] {
                rows.push(("", format!("{labels},class=\"{class}\""), n.to_string()));
            }
        }
        family(
            "peer_responses_total",
            "counter",
            "Responses by status class.",
            rows,
        );
        let mut rows = Vec::new();
        for (labels, p) in self.peers() {
            rows.extend(histogram_rows(
                &labels,
                &p.latency_hist,
                p.request_msec_counter,
            ));
        }
        family(
            "peer_response_seconds",
            "histogram",
            "Response times of the tries that finished at the peer, seconds \
             (fixed buckets, millisecond resolution).",
            rows,
        );
        family(
            "peer_inflight",
            "gauge",
            "Requests now at the peer.",
            peer_rows(&|p| p.inflight.to_string()),
        );
        family(
            "peer_latency_ewma_msec",
            "gauge",
            "Peak-EWMA response time, milliseconds (what choose=p2c compares).",
            peer_rows(&|p| format!("{}", p.latency_ewma_msec)),
        );
        family(
            "peer_rps",
            "gauge",
            "Requests per second over the last decision interval.",
            peer_rows(&|p| format!("{}", p.rps)),
        );
        family(
            "peer_weight",
            "gauge",
            "Weight in force for the peer.",
            peer_rows(&|p| p.weight.to_string()),
        );
        family(
            "peer_admin_down",
            "gauge",
            "1 when the runtime API drained the peer or marked it down.",
            peer_rows(&|p| u8::from(p.state != "up").to_string()),
        );
        family(
            "paused",
            "gauge",
            "1 when the agent's decisions are paused or its weights pinned through the runtime API.",
            agent_rows(&|a| Some(u8::from(a.paused || a.pinned).to_string())),
        );

        // Active health checks: only peers of upstreams with checks.
        let checked = || {
            self.peers()
                .filter_map(|(l, p)| p.health.as_ref().map(|h| (l, h)))
        };
        let health_rows = |f: &dyn Fn(&PeerHealth) -> String| {
            checked().map(|(l, h)| ("", l, f(h))).collect::<Vec<_>>()
        };
        let mut rows = Vec::new();
        for (labels, h) in checked() {
            for state in ["up", "down", "checking"] {
                rows.push((
                    "",
                    format!("{labels},state=\"{state}\""),
                    u8::from(h.state == state).to_string(),
                ));
            }
        }
        family(
            "peer_health",
            "gauge",
            "Health of the peer by the active checks: 1 for its state (up, down, checking).",
            rows,
        );
        family(
            "peer_check_consecutive_passes",
            "gauge",
            "Consecutive passed health checks.",
            health_rows(&|h| h.passes.to_string()),
        );
        family(
            "peer_check_consecutive_fails",
            "gauge",
            "Consecutive failed health checks.",
            health_rows(&|h| h.fails.to_string()),
        );
        family(
            "peer_checks_total",
            "counter",
            "Health checks finished.",
            health_rows(&|h| h.checks.to_string()),
        );
        family(
            "peer_check_last_timestamp_seconds",
            "gauge",
            "Unix time of the last finished health check (0: none).",
            health_rows(&|h| seconds(h.last_check_msec)),
        );
        family(
            "peer_check_latency_seconds",
            "gauge",
            "Duration of the last health check, seconds.",
            health_rows(&|h| seconds(h.last_latency_msec)),
        );
        family(
            "peer_check_last_error",
            "gauge",
            "1 with the reason the last health check failed (no sample when it passed).",
            checked()
                .filter_map(|(l, h)| {
                    h.last_error
                        .as_ref()
                        .map(|e| ("", format!("{l},error=\"{}\"", label(e)), "1".to_owned()))
                })
                .collect(),
        );
        out
    }
}

/// Milliseconds as a decimal number of seconds (`1` -> `0.001`,
/// `10000` -> `10`), exact for every integer.
fn seconds(ms: u64) -> String {
    let frac = ms % 1000;
    if frac == 0 {
        return (ms / 1000).to_string();
    }
    let frac = format!("{frac:03}");
    format!("{}.{}", ms / 1000, frac.trim_end_matches('0'))
}

/// One peer's histogram samples: cumulative `_bucket`s at every bound (`le`
/// in seconds) and `+Inf`, then `_sum` (seconds) and `_count`. `+Inf` and
/// `_count` are the histogram's total, so they agree by construction.
fn histogram_rows(
    labels: &str,
    hist: &[u64; LATENCY_BUCKETS],
    sum_ms: u64,
) -> Vec<(&'static str, String, String)> {
    let mut rows = Vec::with_capacity(LATENCY_BUCKETS + 2);
    let mut cumulative = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        cumulative = cumulative.saturating_add(n);
        let le = LATENCY_BOUNDS_MS
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |&b| seconds(b));
        rows.push((
            "_bucket",
            format!("{labels},le=\"{le}\""),
            cumulative.to_string(),
        ));
    }
    rows.push(("_sum", labels.to_owned(), seconds(sum_ms)));
    rows.push(("_count", labels.to_owned(), cumulative.to_string()));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::latency_bucket;
    use proptest::prelude::*;

    fn doc() -> StatusDocument {
        let peer = |server: &str, n: u64, w: u32| PeerStatus {
            server: server.into(),
            request_counter: n,
            in_bytes: 10 * n,
            out_bytes: 5 * n,
            responses: [0, n - 1, 0, 0, 1].into(),
            failures: 1,
            request_msec_counter: 12 * n,
            request_msec: 12,
            request_msecs: Percentiles {
                p50: 10.0,
                p95: 30.0,
                p99: 45.5,
            },
            latency_hist: {
                let mut h = [0; LATENCY_BUCKETS];
                h[latency_bucket(8)] = n - 10;
                h[latency_bucket(20)] = 8;
                h[latency_bucket(20_000)] = 2;
                h
            },
            inflight: 2,
            slow_start_factor: 1.0,
            latency_ewma_msec: 11.25,
            rps: 50.5,
            weight: w,
            configured_weight: 1,
            id: n as usize,
            state: "up".into(),
            admin_weight: None,
            health: (server == "127.0.0.1:1").then(|| PeerHealth {
                state: "down".into(),
                passes: 0,
                fails: 3,
                checks: 12,
                last_check_msec: 1_700_000_000_250,
                last_latency_msec: 1000,
                last_error: Some("timeout".into()),
                last_status: None,
            }),
            policy_peer: None,
        };
        StatusDocument {
            module: "deep_sched/0.1.0".into(),
            now_msec: 1,
            agents: vec![AgentStatus {
                name: "pol\"icy.json".into(),
                mode: "policy".into(),
                choose: "wrr".into(),
                interval_msec: 2000,
                policy: None,
                decisions: 7,
                last_decision_msec: 5,
                last_decision_pid: 4242,
                state: Some(3),
                action: None,
                log_likelihood: Some(-3.5),
                ood: false,
                explored: true,
                scaling: Some("add".into()),
                paused: false,
                pinned: false,
                checker_pid: Some(4243),
                upstreams: vec![UpstreamStatus {
                    name: "backend".into(),
                    peers: vec![peer("127.0.0.1:1", 100, 5), peer("127.0.0.1:2", 40, 1)],
                }],
            }],
        }
    }

    #[test]
    fn json_uses_vts_names() {
        let v: serde_json::Value = serde_json::from_str(&doc().to_json()).unwrap();
        let p = &v["agents"][0]["upstreams"][0]["peers"][0];
        assert_eq!(p["requestCounter"], 100);
        assert_eq!(p["inBytes"], 1000);
        assert_eq!(p["outBytes"], 500);
        assert_eq!(p["responses"]["2xx"], 99);
        assert_eq!(p["responses"]["5xx"], 1);
        assert_eq!(p["requestMsecCounter"], 1200);
        assert_eq!(p["weight"], 5);
        assert_eq!(p["latencyEwmaMsec"], 11.25);
        assert_eq!(p["requestMsecs"]["p99"], 45.5);
        assert!(p.get("latency_hist").is_none() && p.get("latencyHist").is_none());
        let h = &p["health"];
        assert_eq!(h["state"], "down");
        assert_eq!(h["consecutiveFails"], 3);
        assert_eq!(h["lastLatencyMsec"], 1000);
        assert_eq!(h["lastError"], "timeout");
        assert!(h["lastStatus"].is_null());
        let unchecked = &v["agents"][0]["upstreams"][0]["peers"][1];
        assert!(unchecked.get("health").is_none());
        assert_eq!(v["agents"][0]["state"], 3);
        assert_eq!(v["agents"][0]["checkerPid"], 4243);
        assert!(v["agents"][0]["action"].is_null());
    }

    /// One family of an exposition, as [`lint`] read it.
    #[derive(Debug)]
    struct Family {
        name: String,
        kind: String,
        /// Sample name, labels (inside the braces), value.
        samples: Vec<(String, String, f64)>,
    }

    /// Reads a Prometheus text exposition strictly, as far as this module
    /// writes it: `# HELP` then `# TYPE` before each family's samples, one
    /// family per name, no name that is another family's plus a suffix the
    /// format reserves, counters and only counters ending in `_total`, every
    /// sample inside its family, every series once, histograms with
    /// ascending `le`, non-decreasing cumulative buckets, `+Inf` last and
    /// equal to `_count`, and a `_sum`.
    fn lint(text: &str) -> Result<Vec<Family>, String> {
        let mut fams: Vec<Family> = Vec::new();
        let mut help: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest.split_once(' ').ok_or(format!("no help: {line}"))?;
                if doc.trim().is_empty() || help.is_some() {
                    return Err(format!("bad HELP: {line}"));
                }
                help = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(format!("no type: {line}"))?;
                if help.take() != Some(name) {
                    return Err(format!("TYPE without its HELP: {line}"));
                }
                if !["counter", "gauge", "histogram"].contains(&kind) {
                    return Err(format!("unexpected type: {line}"));
                }
                if (kind == "counter") != name.ends_with("_total") {
                    return Err(format!("counters, and only they, end in _total: {line}"));
                }
                fams.push(Family {
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    samples: Vec::new(),
                });
            } else {
                let fam = fams
                    .last_mut()
                    .filter(|_| help.is_none() && !line.starts_with('#'))
                    .ok_or(format!("sample outside a family: {line}"))?;
                let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
                let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
                let (name, labels) = series
                    .strip_suffix('}')
                    .and_then(|s| s.split_once('{'))
                    .ok_or(format!("no labels: {line}"))?;
                let allowed: &[&str] = match fam.kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                if !allowed.iter().any(|s| format!("{}{s}", fam.name) == name) {
                    return Err(format!("{name} is not of family {}", fam.name));
                }
                fam.samples
                    .push((name.to_owned(), labels.to_owned(), value));
            }
        }
        if help.is_some() {
            return Err("HELP without TYPE at the end".into());
        }
        let base = |n: &str| n.strip_suffix("_total").unwrap_or(n).to_owned();
        for (i, a) in fams.iter().enumerate() {
            for b in &fams[i + 1..] {
                let clash = base(&a.name) == base(&b.name)
                    || ["_total", "_sum", "_count", "_bucket", "_created"]
                        .iter()
                        .any(|s| {
                            a.name == format!("{}{s}", base(&b.name))
                                || b.name == format!("{}{s}", base(&a.name))
                        });
                if clash {
                    return Err(format!("families {} and {} clash", a.name, b.name));
                }
            }
        }
        let mut series = std::collections::BTreeSet::new();
        for f in &fams {
            for (name, labels, _) in &f.samples {
                if !series.insert((name.clone(), labels.clone())) {
                    return Err(format!("series twice: {name}{{{labels}}}"));
                }
            }
        }
        for f in fams.iter().filter(|f| f.kind == "histogram") {
            let mut by_peer: std::collections::BTreeMap<&str, Vec<(&str, f64)>> =
                Default::default();
            let mut sums = std::collections::BTreeMap::new();
            let mut counts = std::collections::BTreeMap::new();
            for (name, labels, v) in &f.samples {
                match &name[f.name.len()..] {
                    "_bucket" => {
                        let (peer, le) = labels
                            .rsplit_once(",le=\"")
                            .and_then(|(p, le)| Some((p, le.strip_suffix('"')?)))
                            .ok_or(format!("bucket without le: {labels}"))?;
                        by_peer.entry(peer).or_default().push((le, *v));
                    }
                    "_sum" => {
                        sums.insert(labels.as_str(), *v);
                    }
                    _ => {
                        counts.insert(labels.as_str(), *v);
                    }
                }
            }
            for (peer, buckets) in &by_peer {
                let les: Vec<f64> = buckets
                    .iter()
                    .map(|(le, _)| match *le {
                        "+Inf" => Ok(f64::INFINITY),
                        le => le.parse().map_err(|_| format!("bad le {le}")),
                    })
                    .collect::<Result<_, _>>()?;
                if les.windows(2).any(|w| w[0] >= w[1]) || les.last() != Some(&f64::INFINITY) {
                    return Err(format!("le not ascending to +Inf: {peer}"));
                }
                if buckets.windows(2).any(|w| w[0].1 > w[1].1) {
                    return Err(format!("buckets decrease: {peer}"));
                }
                if counts.get(peer) != buckets.last().map(|b| &b.1) || !sums.contains_key(peer) {
                    return Err(format!("+Inf, _count and _sum disagree: {peer}"));
                }
            }
            if by_peer.len() != sums.len() || by_peer.len() != counts.len() {
                return Err(format!("{}: series without buckets", f.name));
            }
        }
        Ok(fams)
    }

    #[test]
    fn lint_rejects_what_a_scraper_would_misread() {
        let ok = "# HELP a_total h\n# TYPE a_total counter\na_total{x=\"1\"} 1\n";
        assert!(lint(ok).is_ok());
        for bad in [
            // The 0.1 exposition: counter `x_msec_total` and gauge `x_msec`
            // are one family to a parser.
            "# HELP x_msec_total h\n# TYPE x_msec_total counter\nx_msec_total{a=\"1\"} 1\n\
             # HELP x_msec h\n# TYPE x_msec gauge\nx_msec{a=\"1\",quantile=\"0.5\"} 2\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"+Inf\"} 1\nx_sum{} 1\nx_count{} 1\n\
             # HELP x_count h\n# TYPE x_count gauge\nx_count{a=\"1\"} 1\n",
            "# HELP a h\n# TYPE a counter\na{} 1\n",
            "# TYPE a gauge\na{} 1\n",
            "# HELP a h\n# TYPE a gauge\nb{} 1\n",
            "# HELP a h\n# TYPE a gauge\na{} 1\na{} 2\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\n\
             x_sum{} 1\nx_count{} 1\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"+Inf\"} 2\nx_sum{} 1\nx_count{} 1\n",
            "# HELP x h\n# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_sum{} 1\nx_count{} 1\n",
        ] {
            assert!(lint(bad).is_err(), "accepted:\n{bad}");
        }
    }

    #[test]
    fn seconds_are_exact_decimals() {
        for (ms, s) in [
            (0, "0"),
            (1, "0.001"),
            (10, "0.01"),
            (75, "0.075"),
            (1500, "1.5"),
            (10_000, "10"),
            (1_234_567, "1234.567"),
        ] {
            assert_eq!(seconds(ms), s);
            assert_eq!(s.parse::<f64>().unwrap(), ms as f64 / 1000.0);
        }
    }

    #[test]
    fn prometheus_has_every_family_and_escapes_labels() {
        let text = doc().to_prometheus();
        let fams = lint(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<(&str, &str)> = fams
            .iter()
            .map(|f| (f.name.as_str(), f.kind.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("deep_sched_decisions_total", "counter"),
                ("deep_sched_state", "gauge"),
                ("deep_sched_action", "gauge"),
                ("deep_sched_out_of_distribution", "gauge"),
                ("deep_sched_scaling_advice", "gauge"),
                ("deep_sched_peer_requests_total", "counter"),
                ("deep_sched_peer_in_bytes_total", "counter"),
                ("deep_sched_peer_out_bytes_total", "counter"),
                ("deep_sched_peer_failures_total", "counter"),
                ("deep_sched_peer_responses_total", "counter"),
                ("deep_sched_peer_response_seconds", "histogram"),
                ("deep_sched_peer_inflight", "gauge"),
                ("deep_sched_peer_latency_ewma_msec", "gauge"),
                ("deep_sched_peer_rps", "gauge"),
                ("deep_sched_peer_weight", "gauge"),
                ("deep_sched_peer_admin_down", "gauge"),
                ("deep_sched_paused", "gauge"),
                ("deep_sched_peer_health", "gauge"),
                ("deep_sched_peer_check_consecutive_passes", "gauge"),
                ("deep_sched_peer_check_consecutive_fails", "gauge"),
                ("deep_sched_peer_checks_total", "counter"),
                ("deep_sched_peer_check_last_timestamp_seconds", "gauge"),
                ("deep_sched_peer_check_latency_seconds", "gauge"),
                ("deep_sched_peer_check_last_error", "gauge"),
            ]
        );
        let one = r#"agent="pol\"icy.json",upstream="backend",server="127.0.0.1:1""#;
        for line in [
            format!("deep_sched_peer_health{{{one},state=\"down\"}} 1"),
            format!("deep_sched_peer_health{{{one},state=\"up\"}} 0"),
            format!("deep_sched_peer_check_consecutive_fails{{{one}}} 3"),
            format!("deep_sched_peer_checks_total{{{one}}} 12"),
            format!("deep_sched_peer_check_last_timestamp_seconds{{{one}}} 1700000000.25"),
            format!("deep_sched_peer_check_latency_seconds{{{one}}} 1"),
            format!("deep_sched_peer_check_last_error{{{one},error=\"timeout\"}} 1"),
        ] {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        // The unchecked peer has no health series.
        assert!(!text.contains(r#"server="127.0.0.1:2",state="#), "{text}");
        assert!(text.contains(r#"agent="pol\"icy.json""#), "{text}");
        assert!(text.contains(
            r#"deep_sched_peer_requests_total{agent="pol\"icy.json",upstream="backend",server="127.0.0.1:2"} 40"#
        ));
        assert!(
            text.contains(r#"server="127.0.0.1:1",class="5xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"deep_sched_action{agent="pol\"icy.json"} -1"#));
        assert!(text.contains(r#"deep_sched_scaling_advice{agent="pol\"icy.json"} 1"#));
        // Percentiles stay in the JSON: as gauges they cannot be aggregated.
        assert!(!text.contains("quantile"), "{text}");
        assert!(!text.contains("_msec_total"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        let mut d = doc();
        d.agents[0].upstreams[0].name = "up\\stream\nx".into();
        let text = d.to_prometheus();
        lint(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains(r#"upstream="up\\stream\nx""#), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.contains("up\\")).count(),
            // Both peers' series, and the checked peer's health ones
            // (3 states, 5 values, its last error).
            2 * (4 + 5 + 32 + 5) + (3 + 5 + 1)
        );
    }

    #[test]
    fn response_time_is_a_cumulative_histogram_in_seconds() {
        let text = doc().to_prometheus();
        let peer = r#"agent="pol\"icy.json",upstream="backend",server="127.0.0.1:1""#;
        let value = |series: &str| -> u64 {
            let prefix = format!("deep_sched_peer_response_seconds{series} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no {prefix}\n{text}"))
                .parse()
                .unwrap()
        };
        let bucket = |le: &str| value(&format!("_bucket{{{peer},le=\"{le}\"}}"));
        // 90 tries at 8 ms, 8 at 20 ms, 2 at 20 s (the open bucket).
        assert_eq!(bucket("0.001"), 0);
        assert_eq!(bucket("0.007"), 0);
        assert_eq!(bucket("0.01"), 90);
        assert_eq!(bucket("0.015"), 90);
        assert_eq!(bucket("0.02"), 98);
        assert_eq!(bucket("10"), 98);
        assert_eq!(bucket("+Inf"), 100);
        assert_eq!(value(&format!("_count{{{peer}}}")), 100);
        // 1200 ms in all.
        assert!(text.contains(&format!(
            "deep_sched_peer_response_seconds_sum{{{peer}}} 1.2\n"
        )));
        let les = text
            .lines()
            .filter(|l| {
                l.starts_with("deep_sched_peer_response_seconds_bucket{") && l.contains(peer)
            })
            .count();
        assert_eq!(les, LATENCY_BUCKETS);
    }

    proptest! {
        #[test]
        fn any_histogram_renders_cumulative_and_consistent(
            hist in proptest::array::uniform30(0u64..1_000_000),
            // Below 2^53 ms the exact decimal and the f64 quotient agree.
            sum_ms in 0u64..1 << 53,
        ) {
            let mut d = doc();
            d.agents[0].upstreams[0].peers.truncate(1);
            let p = &mut d.agents[0].upstreams[0].peers[0];
            p.latency_hist = hist;
            p.request_counter = hist.iter().sum();
            p.request_msec_counter = sum_ms;
            let text = d.to_prometheus();
            let fams = lint(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let h = fams.iter().find(|f| f.kind == "histogram").unwrap();
            let buckets: Vec<f64> = h.samples.iter()
                .filter(|s| s.0.ends_with("_bucket")).map(|s| s.2).collect();
            let mut acc = 0u64;
            for (i, n) in hist.iter().enumerate() {
                acc += n;
                prop_assert_eq!(buckets[i], acc as f64);
            }
            let get = |suffix: &str| h.samples.iter().find(|s| s.0.ends_with(suffix)).unwrap().2;
            prop_assert_eq!(get("_count"), acc as f64);
            prop_assert_eq!(get("_sum"), sum_ms as f64 / 1000.0);
        }
    }
}
