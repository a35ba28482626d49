//! Open-loop load generator.
//!
//! Arrivals come from a [`LoadPlan`] drawn in advance; each request is sent
//! at its *intended* time whatever happened to the previous ones, and its
//! latency is measured from that intended time, so a stalled server shows
//! up as latency instead of as fewer requests (no coordinated omission, as
//! in wrk2). Latencies of answered requests (any status below 500) go into
//! HDR histograms per request type; failures are counted by kind.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backend::BACKEND_HEADER;
use crate::percentiles::{new_histogram, record, Percentiles};
use crate::schedule::LoadPlan;

/// Settings of one load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080` (paths come from the plan).
    pub target: String,
    /// What to send and when.
    pub plan: LoadPlan,
    /// A request not answered within this time counts as a timeout.
    pub timeout: Duration,
    /// Requests in flight at most; arrivals beyond it are not sent and
    /// count as `other` errors (protects the client's file descriptors).
    pub max_inflight: usize,
    /// Idle keep-alive connections kept per host.
    pub pool_idle: usize,
    /// Seed of the arrival draws (stream `i` uses `seed + i`).
    pub seed: u64,
    /// Print a live progress line on stderr (only if it is a terminal).
    pub progress: bool,
}

impl LoadConfig {
    /// Defaults for `plan` against `target`: 10 s timeout, 4096 in flight,
    /// 256 idle connections, seed 1, progress on.
    pub fn new(target: impl Into<String>, plan: LoadPlan) -> LoadConfig {
        LoadConfig {
            target: target.into(),
            plan,
            timeout: Duration::from_secs(10),
            max_inflight: 4096,
            pool_idle: 256,
            seed: 1,
            progress: true,
        }
    }
}

/// Errors that stop a load run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target plus a path is not a URL.
    #[error("target `{target}` with path `{path}`: not a valid http URL ({reason})")]
    BadUrl {
        /// Base URL given.
        target: String,
        /// Path of the stream.
        path: String,
        /// Parser message.
        reason: String,
    },
    /// The tokio runtime could not start.
    #[error("load generator: cannot start its runtime: {0}")]
    Runtime(std::io::Error),
}

/// Failed requests by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Could not connect (refused, unreachable, connect timeout).
    pub connect: u64,
    /// No complete response within the timeout.
    pub timeout: u64,
    /// Answered with a 5xx status.
    pub status_5xx: u64,
    /// Anything else (connection reset mid-request, client over its
    /// in-flight limit, ...).
    pub other: u64,
}

impl Errors {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.status_5xx + self.other
    }

    /// Adds `o`'s counts, kind by kind.
    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.status_5xx += o.status_5xx;
        self.other += o.other;
    }
}

/// Results of one request type (or all of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeSummary {
    /// Requests whose send time fell in the run.
    pub sent: u64,
    /// Requests answered below 500.
    pub ok: u64,
    /// `ok` per second of the planned duration.
    pub rps: f64,
    /// Latency of the answered requests from their intended send time.
    pub latency: Percentiles,
    /// Failures by kind.
    pub errors: Errors,
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the start (by intended send time).
    pub t: u64,
    /// Requests sent.
    pub sent: u64,
    /// Failures.
    pub errors: u64,
    /// Median latency of the answered ones, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of the answered ones, ms.
    pub p99_ms: f64,
    /// Answered requests per backend (`X-Backend`).
    pub peers: BTreeMap<String, u64>,
}

/// The JSON summary of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Base URL.
    pub target: String,
    /// Planned length, seconds.
    pub duration_s: f64,
    /// Requests the plan asked for (its expected count, `Σ rps · t`).
    pub planned: f64,
    /// All request types together.
    pub total: TypeSummary,
    /// Per request type (stream label).
    pub types: BTreeMap<String, TypeSummary>,
    /// Answered requests per backend (`X-Backend`).
    pub peers: BTreeMap<String, u64>,
    /// Second by second.
    pub timeline: Vec<Second>,
    /// The latency histogram of all answered requests (µs), for merging
    /// runs; not serialised.
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

struct TypeRecorder {
    hist: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: Errors,
}

struct SecondRecorder {
    hist: Histogram<u64>,
    sent: u64,
    errors: u64,
    peers: BTreeMap<String, u64>,
}

impl SecondRecorder {
    fn new() -> SecondRecorder {
        SecondRecorder {
            // two digits are plenty for a per-second plot and keep it small
            hist: Histogram::new_with_bounds(1, crate::percentiles::MAX_TRACKABLE_US, 2)
                .expect("static bounds"),
            sent: 0,
            errors: 0,
            peers: BTreeMap::new(),
        }
    }
}

struct Recorder {
    types: Vec<TypeRecorder>,
    seconds: Vec<SecondRecorder>,
    peers: BTreeMap<String, u64>,
}

enum Outcome {
    Answered {
        latency: Duration,
        peer: Option<String>,
    },
    Failed(Errors),
}

impl Recorder {
    fn second(&mut self, t: u64) -> &mut SecondRecorder {
        let i = t as usize;
        while self.seconds.len() <= i {
            self.seconds.push(SecondRecorder::new());
        }
        &mut self.seconds[i]
    }

    fn sent(&mut self, stream: usize, t: u64) {
        self.types[stream].sent += 1;
        self.second(t).sent += 1;
    }

    fn outcome(&mut self, stream: usize, t: u64, outcome: Outcome) {
        match outcome {
            Outcome::Answered { latency, peer } => {
                let ty = &mut self.types[stream];
                ty.ok += 1;
                record(&mut ty.hist, latency);
                let sec = self.second(t);
                record(&mut sec.hist, latency);
                if let Some(p) = peer {
                    *sec.peers.entry(p.clone()).or_default() += 1;
                    *self.peers.entry(p).or_default() += 1;
                }
            }
            Outcome::Failed(e) => {
                self.types[stream].errors.add(&e);
                self.second(t).errors += 1;
            }
        }
    }
}

fn failed(f: impl FnOnce(&mut Errors)) -> Outcome {
    let mut e = Errors::default();
    f(&mut e);
    Outcome::Failed(e)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(client: &HttpClient, method: Method, uri: Uri, timeout: Duration) -> Outcome {
    let body = if method == Method::POST {
        Full::new(Bytes::from_static(b"text=hello+world&media_ids=[]"))
    } else {
        Full::new(Bytes::new())
    };
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .expect("request parts are valid");
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let peer = resp
            .headers()
            .get(BACKEND_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.into_body()
            .collect()
            .await
            .map_err(ExchangeError::Body)?;
        Ok::<_, ExchangeError>((status, peer))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => failed(|e| e.timeout += 1),
        Ok(Err(ExchangeError::Client(e))) if e.is_connect() => failed(|e| e.connect += 1),
        Ok(Err(_)) => failed(|e| e.other += 1),
        Ok(Ok((status, _))) if status.is_server_error() => failed(|e| e.status_5xx += 1),
        Ok(Ok((_, peer))) => Outcome::Answered {
            latency: Duration::ZERO, // filled in by the caller
            peer,
        },
    }
}

enum ExchangeError {
    Client(hyper_util::client::legacy::Error),
    Body(#[allow(dead_code)] hyper::Error),
}

impl From<hyper_util::client::legacy::Error> for ExchangeError {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        ExchangeError::Client(e)
    }
}

fn method_for(path: &str) -> Method {
    if path.contains("compose") {
        Method::POST
    } else {
        Method::GET
    }
}

/// Runs the plan against the target (inside a tokio runtime) and
/// summarises it.
pub async fn run(config: LoadConfig) -> Result<LoadSummary, LoadError> {
    let base = config.target.trim_end_matches('/').to_string();
    let uris: Vec<Uri> = config
        .plan
        .streams
        .iter()
        .map(|s| {
            format!("{base}{}", s.path)
                .parse::<Uri>()
                .map_err(|e| LoadError::BadUrl {
                    target: config.target.clone(),
                    path: s.path.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeout));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.pool_idle)
        .build(connector);

    let recorder = Arc::new(Mutex::new(Recorder {
        types: config
            .plan
            .streams
            .iter()
            .map(|_| TypeRecorder {
                hist: new_histogram(),
                sent: 0,
                ok: 0,
                errors: Errors::default(),
            })
            .collect(),
        seconds: Vec::new(),
        peers: BTreeMap::new(),
    }));
    let inflight = Arc::new(AtomicUsize::new(0));
    let sent_total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    let progress = (config.progress && std::io::stderr().is_terminal()).then(|| {
        let recorder = Arc::clone(&recorder);
        let inflight = Arc::clone(&inflight);
        let duration = config.plan.duration_s;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed().as_secs();
                let line = {
                    let rec = recorder.lock().expect("recorder lock");
                    let last = elapsed.saturating_sub(1) as usize;
                    let (sent, errors, p99) = rec.seconds.get(last).map_or((0, 0, 0.0), |s| {
                        (
                            s.sent,
                            s.errors,
                            s.hist.value_at_quantile(0.99) as f64 / 1000.0,
                        )
                    });
                    format!(
                        "\r{elapsed:>4}/{duration:.0}s  last second: sent {sent:>6}  errors {errors:>5}  p99 {p99:>8.1} ms  in flight {:>5}",
                        inflight.load(Ordering::Relaxed)
                    )
                };
                eprint!("{line}");
            }
        })
    });

    let mut senders = Vec::new();
    for (i, stream) in config.plan.streams.iter().enumerate() {
        let stream = stream.clone();
        let uri = uris[i].clone();
        let method = method_for(&stream.path);
        let client = client.clone();
        let recorder = Arc::clone(&recorder);
        let inflight = Arc::clone(&inflight);
        let sent_total = Arc::clone(&sent_total);
        let seed = config.seed.wrapping_add(i as u64);
        let (timeout, max_inflight) = (config.timeout, config.max_inflight);
        senders.push(tokio::spawn(async move {
            let mut requests = tokio::task::JoinSet::new();
            for t in stream.arrivals(seed) {
                let intended = start + Duration::from_secs_f64(t);
                // Sleep only when ahead; when behind, fire at once: latency
                // still counts from `intended`.
                if intended > Instant::now() {
                    tokio::time::sleep_until(intended).await;
                }
                let second = t as u64;
                recorder.lock().expect("recorder lock").sent(i, second);
                sent_total.fetch_add(1, Ordering::Relaxed);
                if inflight.load(Ordering::Relaxed) >= max_inflight {
                    recorder.lock().expect("recorder lock").outcome(
                        i,
                        second,
                        failed(|e| e.other += 1),
                    );
                    continue;
                }
                inflight.fetch_add(1, Ordering::Relaxed);
                let (client, uri, method) = (client.clone(), uri.clone(), method.clone());
                let (recorder, inflight) = (Arc::clone(&recorder), Arc::clone(&inflight));
                requests.spawn(async move {
                    let mut outcome = send(&client, method, uri, timeout).await;
                    if let Outcome::Answered { latency, .. } = &mut outcome {
                        *latency = intended.elapsed();
                    }
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    recorder
                        .lock()
                        .expect("recorder lock")
                        .outcome(i, second, outcome);
                });
                // reap finished tasks so the set does not grow with the run
                while requests.try_join_next().is_some() {}
            }
            while requests.join_next().await.is_some() {}
        }));
    }
    for s in senders {
        let _ = s.await;
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let rec = Arc::try_unwrap(recorder)
        .ok()
        .expect("all senders joined")
        .into_inner()
        .expect("recorder lock");
    Ok(summarise(&config, rec))
}

fn summarise(config: &LoadConfig, rec: Recorder) -> LoadSummary {
    let duration_s = config.plan.duration_s;
    let rate = |n: u64| {
        if duration_s > 0.0 {
            n as f64 / duration_s
        } else {
            0.0
        }
    };
    let mut all = new_histogram();
    let mut total = TypeSummary::default();
    let mut types = BTreeMap::new();
    for (stream, ty) in config.plan.streams.iter().zip(&rec.types) {
        all.add(&ty.hist).expect("same bounds");
        total.sent += ty.sent;
        total.ok += ty.ok;
        total.errors.add(&ty.errors);
        let entry = types
            .entry(stream.label.clone())
            .or_insert_with(TypeSummary::default);
        entry.sent += ty.sent;
        entry.ok += ty.ok;
        entry.errors.add(&ty.errors);
        entry.rps = rate(entry.ok);
        entry.latency = Percentiles::of(&ty.hist);
    }
    total.rps = rate(total.ok);
    total.latency = Percentiles::of(&all);
    let whole_seconds = duration_s.ceil() as usize;
    let timeline = (0..rec.seconds.len().max(whole_seconds))
        .map(|t| match rec.seconds.get(t) {
            Some(s) => Second {
                t: t as u64,
                sent: s.sent,
                errors: s.errors,
                p50_ms: s.hist.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: s.hist.value_at_quantile(0.99) as f64 / 1000.0,
                peers: s.peers.clone(),
            },
            None => Second {
                t: t as u64,
                ..Second::default()
            },
        })
        .collect();
    LoadSummary {
        target: config.target.clone(),
        duration_s,
        planned: config
            .plan
            .streams
            .iter()
            .map(|s| s.expected_requests())
            .sum(),
        total,
        types,
        peers: rec.peers,
        timeline,
        histogram: Some(all),
    }
}

/// [`run`] on a new multi-threaded runtime (2 workers), for callers without
/// one.
pub fn run_blocking(config: LoadConfig) -> Result<LoadSummary, LoadError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(LoadError::Runtime)?
        .block_on(run(config))
}
