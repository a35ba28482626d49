//! Readers of the learner's inputs, streamed record by record:
//! - the module's sample log (JSON Lines of [`SampleRecord`]);
//! - nginx-module-vts status snapshots (`/status/format/json` saved over
//!   time, one document per line or a JSON array of them), differenced into
//!   intervals.
//!
//! Each record becomes an [`Observation`]: the agent's per-interval
//! counters and the weights in force, plus the weights chosen at its end.
//! A bad record is an error naming `file:line` and the reason, or — with
//! `skip_bad` — counted and skipped.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use deep_sched_core::counters::{PeerCounters, LATENCY_BUCKETS};
use deep_sched_core::features::AgentShape;
use deep_sched_core::samples::SampleRecord;
use serde_json::Value;

/// A bad input record.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// A record is malformed or inconsistent.
    #[error("{file}:{line}: {reason}")]
    Record {
        file: PathBuf,
        line: usize,
        reason: String,
    },
}

/// One interval of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Where it came from (`file:line`), for messages.
    pub origin: String,
    /// Wall clock at the interval's end, ms.
    pub time_ms: u64,
    /// Interval length, ms.
    pub interval_ms: u64,
    /// Per-interval counters `[u][p]`.
    pub deltas: Vec<Vec<PeerCounters>>,
    /// Weights in force during the interval `[u][p]`.
    pub weights_in_force: Vec<Vec<u32>>,
    /// Weights chosen at the interval's end (in force during the next);
    /// `None` when unknown (the last vts snapshot).
    pub next_weights: Option<Vec<Vec<u32>>>,
    /// Features logged by the module, if any.
    pub logged_features: Option<Vec<f64>>,
    /// The per-request choice (`wrr`, `p2c`) the weights were applied
    /// with, when the log says (sample logs from this version on).
    pub choose: Option<String>,
    /// The record's decision number (sample logs).
    pub seq: Option<u64>,
    /// The decision whose interval the `dispatched` counts belong to.
    pub dispatched_seq: Option<u64>,
    /// Per peer `[u][p]`, the tries dispatched in interval
    /// `dispatched_seq` (sample logs from the dispatch-interval credit on).
    pub dispatched: Option<Vec<Vec<deep_sched_core::samples::DispatchedCounts>>>,
}

/// Counts of a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub records: usize,
    pub skipped: usize,
}

fn record_err(file: &Path, line: usize, reason: impl Into<String>) -> ReadError {
    ReadError::Record {
        file: file.to_owned(),
        line,
        reason: reason.into(),
    }
}

/// Checks one sample record for consistency with itself and with the
/// agent's shape (fixed by the first good record).
fn check_sample(r: &SampleRecord, shape: &mut Option<AgentShape>) -> Result<(), String> {
    if r.format != deep_sched_core::samples::SAMPLES_FORMAT {
        return Err(format!(
            "\"format\" is \"{}\", expected \"{}\"",
            r.format,
            deep_sched_core::samples::SAMPLES_FORMAT
        ));
    }
    if r.version != deep_sched_core::samples::SAMPLES_VERSION {
        return Err(format!("unsupported sample version {}", r.version));
    }
    if r.interval_ms == 0 {
        return Err("\"interval_ms\" is 0".into());
    }
    if r.upstreams.is_empty() {
        return Err("no upstreams".into());
    }
    for u in &r.upstreams {
        for p in &u.peers {
            let c = &p.counters;
            let hist: u64 = c.latency_hist.iter().sum();
            if hist != c.requests {
                return Err(format!(
                    "peer {} of upstream {}: latency_hist counts {hist} requests but \"requests\" is {}",
                    p.name, u.name, c.requests
                ));
            }
            let answered: u64 = c.responses.iter().sum();
            if answered > c.requests {
                return Err(format!(
                    "peer {} of upstream {}: {answered} responses for {} requests",
                    p.name, u.name, c.requests
                ));
            }
        }
    }
    let this = r.shape();
    if r.weights.len() != this.upstreams.len()
        || r.weights
            .iter()
            .zip(&this.upstreams)
            .any(|(w, u)| w.len() != u.peers.len())
    {
        return Err("\"weights\" does not have one weight per peer of every upstream".into());
    }
    if r.weights.iter().flatten().any(|w| *w == 0) {
        return Err("a weight in \"weights\" is 0".into());
    }
    if r.features.iter().any(|x| !x.is_finite()) {
        return Err("a feature is not a finite number".into());
    }
    match shape {
        None => *shape = Some(this),
        Some(s) if *s != this => {
            return Err(format!(
                "the agent's upstreams/peers differ from the first record's ({})",
                describe(s)
            ))
        }
        Some(_) => {}
    }
    Ok(())
}

fn describe(s: &AgentShape) -> String {
    s.upstreams
        .iter()
        .map(|u| format!("{}: {}", u.name, u.peers.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Streams sample logs, calling `sink` with each good observation in file
/// order. Returns the agent shape and the counts.
pub fn read_samples(
    paths: &[PathBuf],
    skip_bad: bool,
    mut sink: impl FnMut(Observation),
) -> Result<(AgentShape, ReadStats), ReadError> {
    let mut shape = None;
    let mut stats = ReadStats::default();
    for path in paths {
        let f = File::open(path).map_err(|e| ReadError::Io {
            file: path.clone(),
            source: e,
        })?;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let lineno = i + 1;
            let line = line.map_err(|e| ReadError::Io {
                file: path.clone(),
                source: e,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<SampleRecord>(&line)
                .map_err(|e| e.to_string())
                .and_then(|r| check_sample(&r, &mut shape).map(|_| r));
            match parsed {
                Ok(r) => {
                    stats.records += 1;
                    sink(Observation {
                        origin: format!("{}:{lineno}", path.display()),
                        time_ms: r.time_ms,
                        interval_ms: r.interval_ms,
                        deltas: r.deltas(),
                        weights_in_force: r.weights_in_force(),
                        next_weights: Some(r.weights.clone()),
                        logged_features: Some(r.features.clone()),
                        choose: r.choose.clone(),
                        seq: Some(r.seq),
                        dispatched_seq: r.dispatched_seq,
                        dispatched: r
                            .upstreams
                            .iter()
                            .map(|u| u.peers.iter().map(|p| p.dispatched).collect())
                            .collect::<Option<Vec<Vec<_>>>>(),
                    });
                }
                Err(reason) if skip_bad => {
                    stats.skipped += 1;
                    let _ = reason;
                }
                Err(reason) => return Err(record_err(path, lineno, reason)),
            }
        }
    }
    let shape = shape.ok_or_else(|| {
        record_err(
            paths.first().map_or(Path::new("-"), PathBuf::as_path),
            0,
            "no usable records",
        )
    })?;
    Ok((shape, stats))
}

/// One vts peer: server, cumulative counters, weight.
type VtsPeer = (String, PeerCounters, u32);

/// One vts snapshot reduced to what the learner uses.
struct VtsSnapshot {
    now_ms: u64,
    /// `(upstream, [(server, cumulative counters, weight)])`.
    upstreams: Vec<(String, Vec<VtsPeer>)>,
}

fn vts_u64(v: &Value, key: &str) -> Result<u64, String> {
    match v.get(key) {
        Some(x) => x
            .as_u64()
            .ok_or_else(|| format!("\"{key}\" is not a non-negative integer: {x}")),
        None => Err(format!("missing \"{key}\"")),
    }
}

fn parse_vts(doc: &Value) -> Result<VtsSnapshot, String> {
    let now_ms = vts_u64(doc, "nowMsec")?;
    let zones = doc
        .get("upstreamZones")
        .and_then(Value::as_object)
        .ok_or("missing \"upstreamZones\" object")?;
    let mut upstreams = Vec::new();
    for (name, peers) in zones {
        if name == "::nogroups" {
            continue;
        }
        let peers = peers
            .as_array()
            .ok_or_else(|| format!("upstreamZones.{name} is not an array"))?;
        let mut out = Vec::new();
        for p in peers {
            if p.get("backup").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let server = p
                .get("server")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("upstreamZones.{name}: a peer has no \"server\""))?;
            let r = p
                .get("responses")
                .ok_or_else(|| format!("upstreamZones.{name}.{server}: missing \"responses\""))?;
            let mut c = PeerCounters {
                requests: vts_u64(p, "requestCounter")?,
                in_bytes: vts_u64(p, "inBytes")?,
                out_bytes: vts_u64(p, "outBytes")?,
                ..PeerCounters::default()
            };
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                c.responses[i] = vts_u64(r, class)?;
            }
            c.response_msec = match vts_u64(p, "requestMsecCounter") {
                Ok(v) => v,
                // Older vts: only the mean; rebuild the sum from it.
                Err(_) => vts_u64(p, "requestMsec")? * c.requests,
            };
            let weight = vts_u64(p, "weight").unwrap_or(1).clamp(1, u32::MAX as u64) as u32;
            out.push((server.to_owned(), c, weight));
        }
        upstreams.push((name.clone(), out));
    }
    if upstreams.is_empty() {
        return Err("no upstream zones".into());
    }
    Ok(VtsSnapshot { now_ms, upstreams })
}

/// vts has no latency histogram: each interval's requests are put in the
/// bucket of the interval's mean response time, so the latency
/// percentiles of a vts interval all equal its mean (documented limit).
fn vts_delta(prev: &PeerCounters, cur: &PeerCounters) -> Option<PeerCounters> {
    if cur.requests < prev.requests
        || cur.response_msec < prev.response_msec
        || cur
            .responses
            .iter()
            .zip(&prev.responses)
            .any(|(a, b)| a < b)
    {
        return None;
    }
    let mut d = cur.since(prev);
    d.latency_hist = [0; LATENCY_BUCKETS];
    if let Some(mean) = d.response_msec.checked_div(d.requests) {
        d.latency_hist[deep_sched_core::counters::latency_bucket(mean)] = d.requests;
    }
    Some(d)
}

/// Streams vts snapshot files (one document per line, or one JSON array per
/// file), differencing consecutive snapshots into observations. The weight
/// of snapshot t+1 is the action chosen after interval t.
pub fn read_vts(
    paths: &[PathBuf],
    skip_bad: bool,
    mut sink: impl FnMut(Observation),
) -> Result<(AgentShape, ReadStats), ReadError> {
    let mut stats = ReadStats::default();
    let mut shape: Option<AgentShape> = None;
    let mut prev: Option<VtsSnapshot> = None;
    let mut pending: Option<Observation> = None;
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| ReadError::Io {
            file: path.clone(),
            source: e,
        })?;
        let docs: Vec<(usize, Result<Value, String>)> = if text.trim_start().starts_with('[') {
            match serde_json::from_str::<Vec<Value>>(&text) {
                Ok(v) => v.into_iter().map(|d| (1, Ok(d))).collect(),
                Err(e) => vec![(e.line(), Err(e.to_string()))],
            }
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| e.to_string())))
                .collect()
        };
        for (lineno, doc) in docs {
            let snap = doc.and_then(|d| parse_vts(&d)).and_then(|s| {
                let this = AgentShape {
                    upstreams: s
                        .upstreams
                        .iter()
                        .map(|(n, ps)| deep_sched_core::features::UpstreamShape {
                            name: n.clone(),
                            peers: ps.iter().map(|p| p.0.clone()).collect(),
                        })
                        .collect(),
                };
                match &shape {
                    Some(sh) if *sh != this => {
                        Err("upstreams/peers differ from the first snapshot's".to_string())
                    }
                    _ => {
                        shape = Some(this);
                        Ok(s)
                    }
                }
            });
            let snap = match snap {
                Ok(s) => s,
                Err(reason) if skip_bad => {
                    stats.skipped += 1;
                    let _ = reason;
                    continue;
                }
                Err(reason) => return Err(record_err(path, lineno, reason)),
            };
            if let Some(p) = &prev {
                if snap.now_ms <= p.now_ms {
                    if skip_bad {
                        stats.skipped += 1;
                        continue;
                    }
                    return Err(record_err(path, lineno, "nowMsec does not increase"));
                }
                let mut deltas = Vec::new();
                let mut bad = None;
                for ((_, cur), (_, old)) in snap.upstreams.iter().zip(&p.upstreams) {
                    let mut ds = Vec::new();
                    for (c, o) in cur.iter().zip(old) {
                        match vts_delta(&o.1, &c.1) {
                            Some(d) => ds.push(d),
                            None => {
                                bad = Some(format!(
                                    "counters of {} went backwards (nginx restarted?)",
                                    c.0
                                ))
                            }
                        }
                    }
                    deltas.push(ds);
                }
                if let Some(reason) = bad {
                    if skip_bad {
                        stats.skipped += 1;
                        prev = Some(snap);
                        pending = None;
                        continue;
                    }
                    return Err(record_err(path, lineno, reason));
                }
                let weights: Vec<Vec<u32>> = snap
                    .upstreams
                    .iter()
                    .map(|(_, ps)| ps.iter().map(|p| p.2).collect())
                    .collect();
                if let Some(mut o) = pending.take() {
                    // The weights now in force were chosen after `o`.
                    o.next_weights = Some(weights.clone());
                    stats.records += 1;
                    sink(o);
                }
                pending = Some(Observation {
                    origin: format!("{}:{lineno}", path.display()),
                    time_ms: snap.now_ms,
                    interval_ms: snap.now_ms - p.now_ms,
                    deltas,
                    weights_in_force: weights,
                    next_weights: None,
                    logged_features: None,
                    choose: None,
                    seq: None,
                    dispatched_seq: None,
                    dispatched: None,
                });
            }
            prev = Some(snap);
        }
    }
    if let Some(o) = pending {
        stats.records += 1;
        sink(o);
    }
    let shape = shape.ok_or_else(|| {
        record_err(
            paths.first().map_or(Path::new("-"), PathBuf::as_path),
            0,
            "no usable snapshots",
        )
    })?;
    Ok((shape, stats))
}
