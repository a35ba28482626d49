//! The `deep_sched_status` document: JSON (serde) and Prometheus text.
//!
//! The module fills a [`StatusDocument`] from the shared zone; how it is
//! rendered is decided here, without nginx. Per-peer counter names follow
//! nginx-module-vts (`requestCounter`, `inBytes`, `outBytes`, `responses`,
//! `requestMsecCounter`, `requestMsec`, `weight`) so vts readers are at home.

use std::fmt::Write as _;

use serde::Serialize;

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
    /// Number of actions.
    pub actions: usize,
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
    /// Requests now at the peer.
    pub inflight: u64,
    /// Peak-EWMA response time, ms: the latency `choose=p2c` compares
    /// (0 before the first response).
    #[serde(rename = "latencyEwmaMsec")]
    pub latency_ewma_msec: f64,
    /// Requests per second since the last decision.
    pub rps: f64,
    /// Weight in force (the current action's).
    pub weight: u32,
    /// Weight from the `server` line.
    #[serde(rename = "configuredWeight")]
    pub configured_weight: u32,
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
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP deep_sched_{name} {help}");
            let _ = writeln!(out, "# TYPE deep_sched_{name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "deep_sched_{name}{{{labels}}} {value}");
            }
        };

        let agent_rows = |f: &dyn Fn(&AgentStatus) -> Option<String>| -> Vec<(String, String)> {
            self.agents
                .iter()
                .filter_map(|a| f(a).map(|v| (format!("agent=\"{}\"", label(&a.name)), v)))
                .collect()
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

        let peer_rows = |f: &dyn Fn(&PeerStatus) -> String| -> Vec<(String, String)> {
            self.peers().map(|(l, p)| (l, f(p))).collect()
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
        family(
            "peer_response_msec_total",
            "counter",
            "Sum of response times, milliseconds.",
            peer_rows(&|p| p.request_msec_counter.to_string()),
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
                rows.push((format!("{labels},class=\"{class}\""), n.to_string()));
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
            let q = p.request_msecs;
            for (name, v) in [("0.5", q.p50), ("0.95", q.p95), ("0.99", q.p99)] {
                rows.push((format!("{labels},quantile=\"{name}\""), format!("{v}")));
            }
        }
        family(
            "peer_response_msec",
            "gauge",
            "Response time percentiles since start, milliseconds (from a fixed-bucket histogram).",
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            inflight: 2,
            latency_ewma_msec: 11.25,
            rps: 50.5,
            weight: w,
            configured_weight: 1,
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
                state: Some(3),
                action: None,
                log_likelihood: Some(-3.5),
                ood: false,
                explored: true,
                scaling: Some("add".into()),
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
        assert_eq!(v["agents"][0]["state"], 3);
        assert!(v["agents"][0]["action"].is_null());
    }

    #[test]
    fn prometheus_has_every_family_and_escapes_labels() {
        let text = doc().to_prometheus();
        for fam in [
            "decisions_total",
            "state",
            "action",
            "scaling_advice",
            "peer_requests_total",
            "peer_responses_total",
            "peer_response_msec",
            "peer_inflight",
            "peer_latency_ewma_msec",
            "peer_weight",
        ] {
            assert!(
                text.contains(&format!("# TYPE deep_sched_{fam} ")),
                "missing {fam}\n{text}"
            );
        }
        assert!(text.contains(r#"agent="pol\"icy.json""#), "{text}");
        assert!(text.contains(
            r#"deep_sched_peer_requests_total{agent="pol\"icy.json",upstream="backend",server="127.0.0.1:2"} 40"#
        ));
        assert!(
            text.contains(r#"server="127.0.0.1:1",class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"server="127.0.0.1:1",quantile="0.99"} 45.5"#),
            "{text}"
        );
        assert!(text.contains(r#"deep_sched_action{agent="pol\"icy.json"} -1"#));
        assert!(text.contains(r#"deep_sched_scaling_advice{agent="pol\"icy.json"} 1"#));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
