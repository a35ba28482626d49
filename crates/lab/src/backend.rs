//! Backend emulator: the social network's three endpoints behind a bounded
//! pool of workers with a FIFO queue.
//!
//! Service time is emulated by *waiting* (a timer), not by burning CPU, so a
//! 2-core machine can host several backends whose capacity is
//! `workers / mean service time` each. The backend measures its own queueing
//! and service time; the service-time p99 is the floor under any balancer's
//! p99 (a balancer can avoid queues, not the work itself).
//!
//! Endpoints: `/wrk2-api/post/compose`, `/wrk2-api/home-timeline/read`,
//! `/wrk2-api/user-timeline/read` (emulated), `/health` (200, or what
//! `/control?health=500|hang` set), `/stats`
//! (JSON [`BackendStats`]; `?reset=1` clears after reading), `/control`
//! (`?mode=normal|refuse|hang|error&error_rate=R&slow=F&drop_every=N`, for
//! scripts driving a separate process). Every response carries
//! `X-Backend: NAME`.
//!
//! Use [`spawn`] from tests (own runtime on its own thread, stopped on drop)
//! or [`Backend::bind`] + [`Backend::serve`] inside a runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};

use crate::dist::Delay;
use crate::percentiles::{new_histogram, record, Percentiles};

/// Name of the response header that tells which backend answered.
pub const BACKEND_HEADER: &str = "x-backend";

/// The emulated request types of the social network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /wrk2-api/post/compose`: writes, the costly one.
    Compose,
    /// `GET /wrk2-api/home-timeline/read`.
    HomeTimeline,
    /// `GET /wrk2-api/user-timeline/read`.
    UserTimeline,
}

impl Endpoint {
    /// All endpoints, in the research's order.
    pub const ALL: [Endpoint; 3] = [
        Endpoint::Compose,
        Endpoint::HomeTimeline,
        Endpoint::UserTimeline,
    ];

    /// URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Compose => "/wrk2-api/post/compose",
            Endpoint::HomeTimeline => "/wrk2-api/home-timeline/read",
            Endpoint::UserTimeline => "/wrk2-api/user-timeline/read",
        }
    }

    /// Short label (`compose`, `home`, `user`).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Compose => "compose",
            Endpoint::HomeTimeline => "home",
            Endpoint::UserTimeline => "user",
        }
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Service-time distribution of each endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTimes {
    /// `/wrk2-api/post/compose`.
    pub compose: Delay,
    /// `/wrk2-api/home-timeline/read`.
    pub home_timeline: Delay,
    /// `/wrk2-api/user-timeline/read`.
    pub user_timeline: Delay,
}

impl ServiceTimes {
    /// Reads take `reads`, compose takes the same shape with twice the mean.
    pub fn reads(reads: Delay) -> ServiceTimes {
        ServiceTimes {
            compose: reads.with_mean(2.0 * reads.mean_ms()),
            home_timeline: reads,
            user_timeline: reads,
        }
    }

    /// Every endpoint takes `d`.
    pub fn uniform(d: Delay) -> ServiceTimes {
        ServiceTimes {
            compose: d,
            home_timeline: d,
            user_timeline: d,
        }
    }

    /// The distribution of `endpoint`.
    pub fn of(&self, endpoint: Endpoint) -> Delay {
        match endpoint {
            Endpoint::Compose => self.compose,
            Endpoint::HomeTimeline => self.home_timeline,
            Endpoint::UserTimeline => self.user_timeline,
        }
    }
}

impl Default for ServiceTimes {
    /// Reads exponential with a 10 ms mean, compose 20 ms.
    fn default() -> Self {
        ServiceTimes::reads(Delay::Exponential { mean_ms: 10.0 })
    }
}

/// Noisy neighbour: the backend is `factor` times slower during the first
/// `slow_for` of every `period` (counted from the backend's start).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowSchedule {
    /// Service-time multiplier while slow.
    pub factor: f64,
    /// Length of one cycle.
    pub period: Duration,
    /// Slow part at the start of each cycle.
    pub slow_for: Duration,
}

impl SlowSchedule {
    /// The multiplier in force `elapsed` after the start.
    pub fn factor_at(&self, elapsed: Duration) -> f64 {
        if self.period.is_zero() {
            return 1.0;
        }
        let phase = elapsed.as_nanos() % self.period.as_nanos();
        if phase < self.slow_for.as_nanos() {
            self.factor
        } else {
            1.0
        }
    }
}

/// A degrading backend: its service times grow linearly from ×1 at
/// `start` to ×`factor` at `start + ramp` (counted from the backend's
/// start) and stay there:
/// `f(t) = 1 + (factor − 1) · clamp((t − start) / ramp, 0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Degradation {
    /// Service-time multiplier at the end of the ramp.
    pub factor: f64,
    /// When the degradation begins.
    pub start: Duration,
    /// How long it takes to reach `factor` (zero: a step at `start`).
    pub ramp: Duration,
}

impl Degradation {
    /// The multiplier in force `elapsed` after the start.
    pub fn factor_at(&self, elapsed: Duration) -> f64 {
        if elapsed < self.start {
            return 1.0;
        }
        let progress = if self.ramp.is_zero() {
            1.0
        } else {
            ((elapsed - self.start).as_secs_f64() / self.ramp.as_secs_f64()).min(1.0)
        };
        1.0 + (self.factor - 1.0) * progress
    }
}

/// How the backend treats connections and requests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Mode {
    /// Serve normally.
    #[default]
    Normal,
    /// Stop listening (new connections get `ECONNREFUSED`) and close open
    /// connections. Back to `Normal` re-binds the same address.
    Refuse,
    /// Answer this fraction of emulated requests with `500` at once,
    /// without queueing (a fast-failing peer).
    Error5xx(f64),
    /// Accept requests and never answer them.
    Hang,
}

/// Configuration of one emulated backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Name sent in `X-Backend` and in `/stats`.
    pub name: String,
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Requests served at once; the rest wait in a FIFO queue.
    pub workers: usize,
    /// Service-time distribution per endpoint.
    pub service: ServiceTimes,
    /// Periodic slowness (noisy neighbour).
    pub slow: Option<SlowSchedule>,
    /// Growing slowness (a degrading peer), on top of `slow`.
    pub degrade: Option<Degradation>,
    /// Initial mode.
    pub mode: Mode,
    /// Close every Nth accepted connection right away.
    pub drop_every: Option<u64>,
    /// Response body size of the emulated endpoints, bytes.
    pub response_bytes: usize,
    /// Seed of the service-time sampler.
    pub seed: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            name: "backend".to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 8,
            service: ServiceTimes::default(),
            slow: None,
            degrade: None,
            mode: Mode::Normal,
            drop_every: None,
            response_bytes: 256,
            seed: 1,
        }
    }
}

/// Errors of the backend emulator.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The listen address could not be bound.
    #[error("backend `{name}`: cannot listen on {addr}: {source}")]
    Bind {
        /// Backend name.
        name: String,
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("backend `{name}`: {reason}")]
    Config {
        /// Backend name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The backend's thread or runtime could not start.
    #[error("backend `{name}`: cannot start its runtime: {source}")]
    Runtime {
        /// Backend name.
        name: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// What the backend measured since its start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    /// Backend name.
    pub backend: String,
    /// Emulated requests served (any status).
    pub count: u64,
    /// Requests per endpoint label.
    pub endpoints: std::collections::BTreeMap<String, u64>,
    /// Time spent in service (the emulated work), ms.
    pub service: Percentiles,
    /// Time spent waiting for a worker, ms.
    pub queueing: Percentiles,
    /// Requests answered `500` by the error mode.
    pub errors_5xx: u64,
    /// Connections closed at once by `drop_every`.
    pub dropped_connections: u64,
    /// Requests left unanswered by the hang mode.
    pub hung: u64,
    /// Requests in service now.
    pub in_service: usize,
    /// Requests waiting for a worker now.
    pub queued: usize,
}

#[derive(Default)]
struct Recorded {
    service: Option<Histogram<u64>>,
    queueing: Option<Histogram<u64>>,
    count: u64,
    per_endpoint: [u64; 3],
    errors_5xx: u64,
    dropped_connections: u64,
    hung: u64,
}

impl Recorded {
    fn fresh() -> Recorded {
        Recorded {
            service: Some(new_histogram()),
            queueing: Some(new_histogram()),
            ..Recorded::default()
        }
    }
}

/// State shared by the accept loop, the connections and the handle.
struct Shared {
    config: BackendConfig,
    started: Instant,
    workers: Semaphore,
    mode: watch::Sender<Mode>,
    /// Manual service-time multiplier (f64 bits), on top of the schedule.
    slow_factor: AtomicU64,
    /// 0 = never.
    drop_every: AtomicU64,
    connections: AtomicU64,
    in_service: AtomicUsize,
    queued: AtomicUsize,
    rng: Mutex<SmallRng>,
    recorded: Mutex<Recorded>,
    /// What `/health` answers: a status, or [`HEALTH_HANG`].
    health: AtomicU64,
    /// `/health` requests served (or hung) so far.
    health_requests: AtomicU64,
}

/// [`BackendControl::set_health`]'s value for "never answer".
const HEALTH_HANG: u64 = 0;

/// What the backend's `/health` endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// Answer with this status (200 by default).
    Status(u16),
    /// Accept the request and never answer (a hung check target).
    Hang,
}

impl Shared {
    fn new(config: BackendConfig) -> Shared {
        let (mode, _) = watch::channel(config.mode);
        Shared {
            started: Instant::now(),
            workers: Semaphore::new(config.workers),
            mode,
            slow_factor: AtomicU64::new(1f64.to_bits()),
            drop_every: AtomicU64::new(config.drop_every.unwrap_or(0)),
            connections: AtomicU64::new(0),
            in_service: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
            recorded: Mutex::new(Recorded::fresh()),
            health: AtomicU64::new(200),
            health_requests: AtomicU64::new(0),
            config,
        }
    }

    fn factor_now(&self) -> f64 {
        let manual = f64::from_bits(self.slow_factor.load(Ordering::Relaxed));
        let elapsed = self.started.elapsed();
        let scheduled = self.config.slow.map_or(1.0, |s| s.factor_at(elapsed));
        let degraded = self.config.degrade.map_or(1.0, |d| d.factor_at(elapsed));
        manual * scheduled * degraded
    }

    fn stats(&self, reset: bool) -> BackendStats {
        let mut rec = self.recorded.lock().expect("stats lock");
        let stats = BackendStats {
            backend: self.config.name.clone(),
            count: rec.count,
            endpoints: Endpoint::ALL
                .iter()
                .map(|e| (e.label().to_string(), rec.per_endpoint[e.index()]))
                .collect(),
            service: rec
                .service
                .as_ref()
                .map(Percentiles::of)
                .unwrap_or_default(),
            queueing: rec
                .queueing
                .as_ref()
                .map(Percentiles::of)
                .unwrap_or_default(),
            errors_5xx: rec.errors_5xx,
            dropped_connections: rec.dropped_connections,
            hung: rec.hung,
            in_service: self.in_service.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        };
        if reset {
            *rec = Recorded::fresh();
        }
        stats
    }

    fn service_histogram(&self) -> Histogram<u64> {
        let rec = self.recorded.lock().expect("stats lock");
        rec.service.clone().unwrap_or_else(new_histogram)
    }
}

/// Runtime controls and measurements of a running backend; cheap to clone.
#[derive(Clone)]
pub struct BackendControl {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl BackendControl {
    /// The address it listens on (also while refusing: the one it re-binds).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name (the `X-Backend` header).
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Multiplies every service time from now on by `factor` (1 = normal),
    /// on top of any [`SlowSchedule`].
    pub fn set_slow(&self, factor: f64) {
        self.shared
            .slow_factor
            .store(factor.max(0.0).to_bits(), Ordering::Relaxed);
    }

    /// Switches the mode (takes effect for new connections and requests;
    /// `Refuse` also closes open connections).
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Closes every Nth accepted connection at once (`None`: never).
    pub fn set_drop_every(&self, n: Option<u64>) {
        self.shared
            .drop_every
            .store(n.unwrap_or(0), Ordering::Relaxed);
    }

    /// What it measured so far.
    pub fn stats(&self) -> BackendStats {
        self.shared.stats(false)
    }

    /// Switches what `/health` does from now on (the other endpoints are
    /// unaffected: a health check can fail while requests succeed).
    pub fn set_health(&self, mode: HealthMode) {
        let v = match mode {
            HealthMode::Status(s) => u64::from(s),
            HealthMode::Hang => HEALTH_HANG,
        };
        self.shared.health.store(v, Ordering::Relaxed);
    }

    /// `/health` requests received so far.
    pub fn health_requests(&self) -> u64 {
        self.shared.health_requests.load(Ordering::Relaxed)
    }

    /// Returns what it measured and starts measuring afresh.
    pub fn take_stats(&self) -> BackendStats {
        self.shared.stats(true)
    }

    /// A copy of the service-time histogram (µs), to merge several
    /// backends into one floor.
    pub fn service_histogram(&self) -> Histogram<u64> {
        self.shared.service_histogram()
    }
}

/// A bound, not yet serving backend.
pub struct Backend {
    listener: TcpListener,
    control: BackendControl,
}

fn bind_listener(name: &str, addr: SocketAddr) -> Result<TcpListener, BackendError> {
    let bind_err = |source| BackendError::Bind {
        name: name.to_string(),
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    // Re-binding after `Refuse` must not wait for TIME_WAIT.
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)
}

impl Backend {
    /// Binds the listen address (must be called inside a tokio runtime).
    pub fn bind(config: BackendConfig) -> Result<Backend, BackendError> {
        if config.workers == 0 {
            return Err(BackendError::Config {
                name: config.name,
                reason: "workers must be >= 1".to_string(),
            });
        }
        let listener = bind_listener(&config.name, config.listen)?;
        let addr = listener.local_addr().map_err(|source| BackendError::Bind {
            name: config.name.clone(),
            addr: config.listen,
            source,
        })?;
        Ok(Backend {
            listener,
            control: BackendControl {
                shared: Arc::new(Shared::new(config)),
                addr,
            },
        })
    }

    /// The controls (clone them before [`Backend::serve`]).
    pub fn control(&self) -> BackendControl {
        self.control.clone()
    }

    /// Serves until `shutdown` turns `true` (or its sender is dropped).
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let Backend {
            listener,
            control: BackendControl { shared, addr },
        } = self;
        let mut listener = Some(listener);
        let mut mode_rx = shared.mode.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let refusing = matches!(*mode_rx.borrow_and_update(), Mode::Refuse);
            if refusing {
                listener = None;
            } else if listener.is_none() {
                match bind_listener(&shared.config.name, addr) {
                    Ok(l) => listener = Some(l),
                    Err(e) => {
                        eprintln!("{e}; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let Some(l) = listener.as_ref() else {
                tokio::select! {
                    r = shutdown.changed() => if r.is_err() { return },
                    _ = mode_rx.changed() => {}
                }
                continue;
            };
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { return },
                _ = mode_rx.changed() => {}
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => accept_connection(stream, &shared, &shutdown),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("backend `{}`: accept: {e}", shared.config.name);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }
}

fn accept_connection(
    stream: tokio::net::TcpStream,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
) {
    let n = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let every = shared.drop_every.load(Ordering::Relaxed);
    if n.checked_rem(every) == Some(0) {
        // Reset rather than a polite FIN, like a crashed worker.
        // Count first: the peer may ask for stats as soon as it sees the reset.
        shared
            .recorded
            .lock()
            .expect("stats lock")
            .dropped_connections += 1;
        let _ = stream.set_zero_linger();
        drop(stream);
        return;
    }
    let _ = stream.set_nodelay(true);
    let shared = Arc::clone(shared);
    let mut shutdown = shutdown.clone();
    let mut mode_rx = shared.mode.subscribe();
    tokio::spawn(async move {
        let svc_shared = Arc::clone(&shared);
        let service = service_fn(move |req| handle(req, Arc::clone(&svc_shared)));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let refused = async {
            loop {
                if matches!(*mode_rx.borrow_and_update(), Mode::Refuse) {
                    return;
                }
                if mode_rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = conn => {}
            _ = shutdown.changed() => {}
            _ = refused => {}
        }
    });
}

fn text(status: StatusCode, body: impl Into<Bytes>, name: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(BACKEND_HEADER, name)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let name = shared.config.name.clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    // Read the body so the connection stays reusable (compose is a POST).
    let _ = req.into_body().collect().await;
    let response = match path.as_str() {
        "/health" => health(&shared).await,
        "/stats" => {
            let reset = query_pairs(query.as_deref()).any(|(k, v)| k == "reset" && v != "0");
            let body = serde_json::to_vec(&shared.stats(reset)).expect("stats serialise");
            let mut r = text(StatusCode::OK, body, &name);
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/control" => control(&shared, query.as_deref()),
        p => match Endpoint::from_path(p) {
            Some(endpoint) => emulate(endpoint, &shared).await,
            None => text(StatusCode::NOT_FOUND, format!("no endpoint {p}\n"), &name),
        },
    };
    Ok(response)
}

async fn health(shared: &Shared) -> Response<Full<Bytes>> {
    shared.health_requests.fetch_add(1, Ordering::Relaxed);
    let v = shared.health.load(Ordering::Relaxed);
    if v == HEALTH_HANG {
        std::future::pending::<()>().await;
    }
    let status = u16::try_from(v)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(
        status,
        format!("{}\n", status.as_u16()),
        &shared.config.name,
    )
}

fn control(shared: &Arc<Shared>, query: Option<&str>) -> Response<Full<Bytes>> {
    let name = &shared.config.name;
    let control = BackendControl {
        shared: Arc::clone(shared),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let mut error_rate = 0.5;
    let mut mode = None;
    for (k, v) in query_pairs(query) {
        let bad = |what: &str| {
            text(
                StatusCode::BAD_REQUEST,
                format!("/control: `{k}={v}`: expected {what}\n"),
                name,
            )
        };
        match k {
            "mode" => match v {
                "normal" | "refuse" | "hang" | "error" => mode = Some(v.to_string()),
                _ => return bad("normal, refuse, hang or error"),
            },
            "error_rate" => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => error_rate = r,
                _ => return bad("a number in 0..=1"),
            },
            "slow" => match v.parse::<f64>() {
                Ok(f) if f.is_finite() && f >= 0.0 => control.set_slow(f),
                _ => return bad("a factor >= 0"),
            },
            "drop_every" => match v.parse::<u64>() {
                Ok(n) => control.set_drop_every((n > 0).then_some(n)),
                _ => return bad("a whole number (0 = never)"),
            },
            "health" => match v {
                "hang" => control.set_health(HealthMode::Hang),
                _ => match v.parse::<u16>() {
                    Ok(s) if (100..=599).contains(&s) => control.set_health(HealthMode::Status(s)),
                    _ => return bad("a status from 100 to 599, or hang"),
                },
            },
            _ => return bad("one of mode, error_rate, slow, drop_every, health"),
        }
    }
    match mode.as_deref() {
        Some("normal") => control.set_mode(Mode::Normal),
        Some("refuse") => control.set_mode(Mode::Refuse),
        Some("hang") => control.set_mode(Mode::Hang),
        Some("error") => control.set_mode(Mode::Error5xx(error_rate)),
        _ => {}
    }
    text(StatusCode::OK, format!("{:?}\n", control.mode()), name)
}

/// Decrements a gauge on drop, so cancelled requests (client gone) are
/// not counted forever.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn enter(g: &'a AtomicUsize) -> Gauge<'a> {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn emulate(endpoint: Endpoint, shared: &Shared) -> Response<Full<Bytes>> {
    let name = &shared.config.name;
    let mode = *shared.mode.borrow();
    match mode {
        Mode::Hang => {
            shared.recorded.lock().expect("stats lock").hung += 1;
            std::future::pending::<()>().await;
        }
        Mode::Error5xx(rate) => {
            let fail = shared.rng.lock().expect("rng lock").gen::<f64>() < rate;
            if fail {
                let mut rec = shared.recorded.lock().expect("stats lock");
                rec.count += 1;
                rec.per_endpoint[endpoint.index()] += 1;
                rec.errors_5xx += 1;
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "emulated failure\n",
                    name,
                );
            }
        }
        Mode::Normal | Mode::Refuse => {}
    }
    let arrived = Instant::now();
    let permit = {
        let _queued = Gauge::enter(&shared.queued);
        shared
            .workers
            .acquire()
            .await
            .expect("semaphore never closed")
    };
    let queueing = arrived.elapsed();
    let _busy = Gauge::enter(&shared.in_service);
    let ms = {
        let mut rng = shared.rng.lock().expect("rng lock");
        shared.config.service.of(endpoint).sample(&mut *rng)
    } * shared.factor_now();
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    let service = began.elapsed();
    drop(permit);
    {
        let mut rec = shared.recorded.lock().expect("stats lock");
        rec.count += 1;
        rec.per_endpoint[endpoint.index()] += 1;
        record(rec.service.as_mut().expect("fresh"), service);
        record(rec.queueing.as_mut().expect("fresh"), queueing);
    }
    let body = vec![b'x'; shared.config.response_bytes];
    text(StatusCode::OK, body, name)
}

/// A backend running on its own thread with its own runtime; stops (and
/// joins the thread) when dropped.
pub struct BackendHandle {
    control: BackendControl,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackendHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.control.addr()
    }

    /// The runtime controls (clone to keep after the handle moves).
    pub fn control(&self) -> &BackendControl {
        &self.control
    }

    /// See [`BackendControl::set_slow`].
    pub fn set_slow(&self, factor: f64) {
        self.control.set_slow(factor)
    }

    /// See [`BackendControl::set_mode`].
    pub fn set_mode(&self, mode: Mode) {
        self.control.set_mode(mode)
    }

    /// See [`BackendControl::set_drop_every`].
    pub fn set_drop_every(&self, n: Option<u64>) {
        self.control.set_drop_every(n)
    }

    /// See [`BackendControl::stats`].
    pub fn stats(&self) -> BackendStats {
        self.control.stats()
    }

    /// Stops serving and waits for the thread to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a backend on a new thread with a current-thread tokio runtime
/// (usable from a plain `#[test]`); returns once it listens.
pub fn spawn(config: BackendConfig) -> Result<BackendHandle, BackendError> {
    let name = config.name.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| BackendError::Runtime {
            name: name.clone(),
            source,
        })?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name(format!("backend-{name}"))
        .spawn(move || {
            runtime.block_on(async move {
                match Backend::bind(config) {
                    Ok(backend) => {
                        let _ = ready_tx.send(Ok(backend.control()));
                        backend.serve(shutdown_rx).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|source| BackendError::Runtime {
            name: name.clone(),
            source,
        })?;
    let control = match ready_rx.recv() {
        Ok(Ok(control)) => control,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(BackendError::Runtime {
                name,
                source: std::io::Error::other("backend thread ended before listening"),
            });
        }
    };
    Ok(BackendHandle {
        control,
        shutdown: Some(shutdown_tx),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_schedule_is_slow_at_the_start_of_each_period() {
        let s = SlowSchedule {
            factor: 5.0,
            period: Duration::from_secs(15),
            slow_for: Duration::from_secs(5),
        };
        let at = |ms: u64| s.factor_at(Duration::from_millis(ms));
        assert_eq!(at(0), 5.0);
        assert_eq!(at(4_999), 5.0);
        assert_eq!(at(5_000), 1.0);
        assert_eq!(at(14_999), 1.0);
        assert_eq!(at(15_000), 5.0);
        assert_eq!(at(31_000), 5.0);
    }

    #[test]
    fn degradation_ramps_linearly_then_holds() {
        let d = Degradation {
            factor: 3.0,
            start: Duration::from_secs(10),
            ramp: Duration::from_secs(20),
        };
        let at = |s: f64| d.factor_at(Duration::from_secs_f64(s));
        assert_eq!(at(0.0), 1.0);
        assert_eq!(at(9.999), 1.0);
        assert_eq!(at(10.0), 1.0);
        assert!((at(20.0) - 2.0).abs() < 1e-12);
        assert!((at(25.0) - 2.5).abs() < 1e-12);
        assert_eq!(at(30.0), 3.0);
        assert_eq!(at(1000.0), 3.0);
        // monotone
        let xs: Vec<f64> = (0..400).map(|i| at(i as f64 * 0.1)).collect();
        assert!(xs.windows(2).all(|w| w[1] >= w[0]));
        let step = Degradation {
            ramp: Duration::ZERO,
            ..d
        };
        assert_eq!(step.factor_at(Duration::from_secs(9)), 1.0);
        assert_eq!(step.factor_at(Duration::from_secs(10)), 3.0);
    }

    #[test]
    fn compose_costs_twice_a_read_by_default() {
        let s = ServiceTimes::default();
        assert_eq!(s.of(Endpoint::Compose).mean_ms(), 20.0);
        assert_eq!(s.of(Endpoint::HomeTimeline).mean_ms(), 10.0);
    }

    #[test]
    fn endpoints_round_trip_through_their_paths() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
        }
        assert_eq!(Endpoint::from_path("/"), None);
    }
}
