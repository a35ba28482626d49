//! Active health checks without nginx: the `deep_sched_check` directive's
//! arguments, the per-peer health state machine, the check response's
//! status-line parser and the lease that elects the one worker that checks.
//!
//! ```nginx
//! upstream app {
//!     zone app 64k;
//!     deep_sched;
//!     deep_sched_check uri=/health interval=2s fall=3 rise=2 status=200-299 418;
//!     server 10.0.0.1:8080;
//! }
//! ```
//!
//! The nginx glue (`src/check.rs`) runs the checks and stores the health in
//! the shared zone ([`crate::slots::PeerSlot`]); every rule it follows —
//! which values are accepted, when a peer goes down or comes back, what a
//! valid answer is — is decided here, so it is tested without nginx.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::directive::parse_time_ms;

/// Default `interval=`: time between two checks of a peer.
pub const DEFAULT_INTERVAL_MS: u64 = 5_000;
/// Default `timeout=`: how long one check may take (connect, send, status line).
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Default `fall=`: consecutive failed checks that take an up peer out.
pub const DEFAULT_FALL: u32 = 3;
/// Default `rise=`: consecutive passed checks that bring a down peer back.
pub const DEFAULT_RISE: u32 = 2;
/// Default `status=`: the statuses that pass an HTTP check.
pub const DEFAULT_STATUS: (u16, u16) = (200, 399);
/// Default `uri=`.
pub const DEFAULT_URI: &str = "/";
/// Accepted `interval=`, ms (100 ms keeps a checker from hammering a peer;
/// an hour is far beyond any use).
pub const INTERVAL_RANGE_MS: (u64, u64) = (100, 3_600_000);
/// Accepted `timeout=`, ms.
pub const TIMEOUT_RANGE_MS: (u64, u64) = (10, 60_000);
/// Accepted `fall=` and `rise=`.
pub const COUNT_RANGE: (u32, u32) = (1, 100);
/// Longest `uri=` (it goes into one request line of a fixed buffer).
pub const MAX_URI_LEN: usize = 1024;

/// What a check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckType {
    /// `GET uri HTTP/1.0`; passes when the status is in `status=`.
    #[default]
    Http,
    /// Passes when the TCP connection is established.
    Tcp,
}

/// The parsed `deep_sched_check` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckArgs {
    /// `type=`.
    pub kind: CheckType,
    /// `uri=` (HTTP only): an absolute path, with an optional query.
    pub uri: String,
    /// `interval=`, ms.
    pub interval_ms: u64,
    /// `timeout=`, ms.
    pub timeout_ms: u64,
    /// `fall=`.
    pub fall: u32,
    /// `rise=`.
    pub rise: u32,
    /// `status=` (HTTP only): inclusive ranges, in the order written.
    pub status: Vec<(u16, u16)>,
    /// `port=`: check this port instead of the peer's.
    pub port: Option<u16>,
    /// `tls`: check over TLS (a handshake, then the HTTP check or, with
    /// `type=tcp`, nothing more). Explicit because an upstream block does
    /// not know whether its locations proxy to it with `https://`.
    pub tls: bool,
}

impl Default for CheckArgs {
    fn default() -> Self {
        CheckArgs {
            kind: CheckType::Http,
            uri: DEFAULT_URI.to_owned(),
            interval_ms: DEFAULT_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
            status: vec![DEFAULT_STATUS],
            port: None,
            tls: false,
        }
    }
}

impl CheckArgs {
    /// Whether `status` passes an HTTP check.
    pub fn status_passes(&self, status: u16) -> bool {
        self.status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    /// The check request (HTTP only): `GET uri HTTP/1.0` with `host`.
    pub fn request(&self, host: &str) -> String {
        format!(
            "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: deep_sched-check\r\n\
             Connection: close\r\n\r\n",
            self.uri
        )
    }
}

/// A problem with the directive's words, phrased as nginx phrases
/// configuration errors, naming the directive, the parameter and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckArgError {
    /// A known parameter with a bad value.
    #[error(
        "invalid value \"{value}\" of parameter \"{param}\" in \"deep_sched_check\": {problem}"
    )]
    Value {
        /// The parameter (`interval`).
        param: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A word that is not a parameter of the directive.
    #[error("invalid parameter \"{word}\" in \"deep_sched_check\": {problem}")]
    Word {
        /// The word as written.
        word: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn bad_value(param: &str, value: &str, problem: impl Into<String>) -> CheckArgError {
    CheckArgError::Value {
        param: param.to_owned(),
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn bad_word(word: &str, problem: impl Into<String>) -> CheckArgError {
    CheckArgError::Word {
        word: word.to_owned(),
        problem: problem.into(),
    }
}

const PARAMS: &str = "type=, uri=, interval=, timeout=, fall=, rise=, status=, port=, tls";

fn time_in(param: &str, value: &str, (lo, hi): (u64, u64)) -> Result<u64, CheckArgError> {
    let ms = parse_time_ms(value)
        .ok_or_else(|| bad_value(param, value, "expected a time such as 200ms, 5s or 1m"))?;
    if !(lo..=hi).contains(&ms) {
        return Err(bad_value(
            param,
            value,
            format!("must be between {lo}ms and {hi}ms"),
        ));
    }
    Ok(ms)
}

fn count_in(param: &str, value: &str) -> Result<u32, CheckArgError> {
    let (lo, hi) = COUNT_RANGE;
    match value.parse::<u32>() {
        Ok(n) if (lo..=hi).contains(&n) && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(bad_value(
            param,
            value,
            format!("expected a whole number from {lo} to {hi}"),
        )),
    }
}

fn status_code(param: &str, value: &str, text: &str) -> Result<u16, CheckArgError> {
    match text.parse::<u16>() {
        Ok(n) if (100..=599).contains(&n) && text.len() == 3 => Ok(n),
        _ => Err(bad_value(
            param,
            value,
            format!("\"{text}\" is not an HTTP status (100 to 599)"),
        )),
    }
}

/// Parses one status range: `200` or `200-399`.
fn status_range(value: &str) -> Result<(u16, u16), CheckArgError> {
    let (lo, hi) = match value.split_once('-') {
        Some((a, b)) => (
            status_code("status", value, a)?,
            status_code("status", value, b)?,
        ),
        None => {
            let n = status_code("status", value, value)?;
            (n, n)
        }
    };
    if lo > hi {
        return Err(bad_value(
            "status",
            value,
            "the range's first status is above its last",
        ));
    }
    Ok((lo, hi))
}

/// Checks a `uri=` value: an absolute path (optionally with a query) of
/// visible ASCII characters, so it fits one request line as written.
fn uri(value: &str) -> Result<String, CheckArgError> {
    if !value.starts_with('/') {
        return Err(bad_value(
            "uri",
            value,
            "expected a path starting with \"/\"",
        ));
    }
    if value.len() > MAX_URI_LEN {
        return Err(bad_value(
            "uri",
            value,
            format!("longer than {MAX_URI_LEN} bytes"),
        ));
    }
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(bad_value(
            "uri",
            value,
            format!("{c:?} is not allowed in a request path (escape it as %XX)"),
        ));
    }
    if value.contains('#') {
        return Err(bad_value(
            "uri",
            value,
            "a fragment (#) is not sent to servers",
        ));
    }
    Ok(value.to_owned())
}

/// Parses the words after `deep_sched_check`. A word without `=` that is
/// a status or status range continues the `status=` list before it
/// (`status=200-299 418`).
pub fn parse(words: &[&str]) -> Result<CheckArgs, CheckArgError> {
    let mut args = CheckArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut status: Option<Vec<(u16, u16)>> = None;
    let mut last_was_status = false;
    for &word in words {
        let Some((param, value)) = word.split_once('=') else {
            if last_was_status && word.starts_with(|c: char| c.is_ascii_digit()) {
                status
                    .get_or_insert_with(Vec::new)
                    .push(status_range(word)?);
                continue;
            }
            if word == "tls" {
                if args.tls {
                    return Err(bad_word(word, "\"tls\" is given twice"));
                }
                args.tls = true;
                last_was_status = false;
                continue;
            }
            return Err(bad_word(word, format!("expected one of {PARAMS}")));
        };
        last_was_status = false;
        if seen.contains(&param) {
            return Err(bad_word(word, format!("\"{param}=\" is given twice")));
        }
        if value.is_empty() {
            return Err(bad_value(param, value, "the value is empty"));
        }
        match param {
            "type" => {
                args.kind = match value {
                    "http" => CheckType::Http,
                    "tcp" => CheckType::Tcp,
                    _ => return Err(bad_value(param, value, "expected http or tcp")),
                }
            }
            "uri" => args.uri = uri(value)?,
            "interval" => args.interval_ms = time_in(param, value, INTERVAL_RANGE_MS)?,
            "timeout" => args.timeout_ms = time_in(param, value, TIMEOUT_RANGE_MS)?,
            "fall" => args.fall = count_in(param, value)?,
            "rise" => args.rise = count_in(param, value)?,
            "status" => {
                status = Some(vec![status_range(value)?]);
                last_was_status = true;
            }
            "port" => match value.parse::<u16>() {
                Ok(p) if p > 0 && value.bytes().all(|b| b.is_ascii_digit()) => args.port = Some(p),
                _ => return Err(bad_value(param, value, "expected a port from 1 to 65535")),
            },
            _ => return Err(bad_word(word, format!("expected one of {PARAMS}"))),
        }
        seen.push(param);
    }
    if let Some(s) = status {
        args.status = s;
    }
    if args.kind == CheckType::Tcp {
        for p in ["uri", "status"] {
            if seen.contains(&p) {
                let word = words
                    .iter()
                    .find(|w| w.starts_with(&format!("{p}=")))
                    .copied()
                    .unwrap_or(p);
                return Err(bad_word(word, "only with type=http"));
            }
        }
    }
    Ok(args)
}

/// A peer's health as the checks see it. Stored in the zone as its
/// discriminant: all-zero memory is [`Health::Checking`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum Health {
    /// No check has answered yet: the peer takes requests.
    #[default]
    Checking = 0,
    /// The last `rise` checks passed (or the first one did).
    Up = 1,
    /// The last `fall` checks failed (or the first one did): no requests.
    Down = 2,
}

impl Health {
    /// From the zone's value (anything unknown reads as `Checking`).
    pub fn from_u32(v: u32) -> Health {
        match v {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Checking,
        }
    }

    /// `up`, `down` or `checking` (status page, sample log).
    pub fn name(self) -> &'static str {
        match self {
            Health::Checking => "checking",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// Health and the current run of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthState {
    /// The health in force.
    pub health: Health,
    /// Consecutive passed checks (0 after a failure).
    pub passes: u32,
    /// Consecutive failed checks (0 after a pass).
    pub fails: u32,
}

/// The state after one check result, and the health it changed from
/// (`Some` once per transition, `None` while it holds).
///
/// - `Checking`: the first result decides (a pass is `Up`, a failure
///   `Down`): nothing has vouched for the peer yet, so a dead peer is out
///   after its first check rather than after `fall` of them;
/// - `Up` → `Down` after `fall` consecutive failures;
/// - `Down` → `Up` after `rise` consecutive passes.
pub fn step(state: HealthState, pass: bool, fall: u32, rise: u32) -> (HealthState, Option<Health>) {
    let (passes, fails) = if pass {
        (state.passes.saturating_add(1), 0)
    } else {
        (0, state.fails.saturating_add(1))
    };
    let health = match state.health {
        Health::Checking if pass => Health::Up,
        Health::Checking => Health::Down,
        Health::Up if fails >= fall.max(1) => Health::Down,
        Health::Down if passes >= rise.max(1) => Health::Up,
        h => h,
    };
    let from = (health != state.health).then_some(state.health);
    (
        HealthState {
            health,
            passes,
            fails,
        },
        from,
    )
}

/// Why a check failed; stored in the zone as its discriminant (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u32)]
pub enum CheckError {
    /// The last check passed.
    #[default]
    None = 0,
    /// The connection was refused.
    Refused = 1,
    /// The connection was reset.
    Reset = 2,
    /// No answer within `timeout=`.
    Timeout = 3,
    /// The peer closed the connection before a status line.
    Closed = 4,
    /// The answer is not an HTTP status line.
    Garbage = 5,
    /// A status outside `status=`.
    Status = 6,
    /// Another connection error (unreachable, ...).
    Connect = 7,
    /// The checker could not start the check (no memory, no connection).
    Internal = 8,
    /// The TLS handshake failed (`tls`).
    Tls = 9,
}

impl CheckError {
    /// From the zone's value.
    pub fn from_u32(v: u32) -> CheckError {
        match v {
            1 => CheckError::Refused,
            2 => CheckError::Reset,
            3 => CheckError::Timeout,
            4 => CheckError::Closed,
            5 => CheckError::Garbage,
            6 => CheckError::Status,
            7 => CheckError::Connect,
            8 => CheckError::Internal,
            9 => CheckError::Tls,
            _ => CheckError::None,
        }
    }

    /// Short name for the status page and Prometheus (`null` for none).
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            CheckError::None => return None,
            CheckError::Refused => "refused",
            CheckError::Reset => "reset",
            CheckError::Timeout => "timeout",
            CheckError::Closed => "closed",
            CheckError::Garbage => "garbage",
            CheckError::Status => "status",
            CheckError::Connect => "connect",
            CheckError::Internal => "internal",
            CheckError::Tls => "tls",
        })
    }
}

/// The SNI name of a `server` line as written (`host:port`, `host`,
/// `[v6]:port`, `unix:/path`): its host when that is a name; `None` for
/// addresses (RFC 6066 sends no address literals) and unix sockets.
pub fn sni_host(server: &str) -> Option<&str> {
    let host = match server.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => server,
    };
    if host.is_empty()
        || host.starts_with('[')
        || host.starts_with("unix:")
        || host.contains(':')
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        return None;
    }
    Some(host)
}

/// What reading a check response found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusLine {
    /// More bytes are needed (no line end yet, and nothing wrong so far).
    Partial,
    /// The status code of a well-formed status line.
    Status(u16),
    /// Not an HTTP status line, and why.
    Garbage(String),
}

/// Longest status line accepted (RFC 9112 sets no limit; a check answer
/// longer than this is not a health endpoint's).
pub const MAX_STATUS_LINE: usize = 512;

/// Parses the start of an HTTP/1.x response: `HTTP/1.x SP 3DIGIT ...`.
///
/// Written by hand rather than with `httparse`: a check needs only the
/// status line, and must judge it as soon as it arrives, without waiting
/// for (or limiting) the headers that follow.
pub fn parse_status_line(buf: &[u8]) -> StatusLine {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return StatusLine::Garbage(format!(
            "expected \"HTTP/1.\", got {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(32)])
        ));
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_STATUS_LINE {
            return StatusLine::Garbage(format!("no line end in {MAX_STATUS_LINE} bytes"));
        }
        // Judge what has come so far: version digit, space, digits.
        return match check_head(buf) {
            Some(why) => StatusLine::Garbage(why),
            None => StatusLine::Partial,
        };
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(why) = check_head(line) {
        return StatusLine::Garbage(why);
    }
    if line.len() < 12 {
        return StatusLine::Garbage("status line too short".into());
    }
    if line.len() > 12 && line[12] != b' ' {
        return StatusLine::Garbage("no space after the status code".into());
    }
    let code = line[9..12]
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&code) {
        return StatusLine::Garbage(format!("status {code} out of range"));
    }
    StatusLine::Status(code)
}

/// Checks the bytes of a status line that are there (after `HTTP/1.`):
/// the minor version digit, one space, three digits.
fn check_head(line: &[u8]) -> Option<String> {
    if let Some(&v) = line.get(7) {
        if !v.is_ascii_digit() {
            return Some("bad HTTP version".into());
        }
    }
    if let Some(&s) = line.get(8) {
        if s != b' ' {
            return Some("no space after the HTTP version".into());
        }
    }
    for &d in line.iter().skip(9).take(3) {
        if !d.is_ascii_digit() {
            return Some("the status code is not three digits".into());
        }
    }
    None
}

/// The lease of the one process that runs an agent's checks: its pid and
/// when the lease ends (monotonic ms). Lives in the zone (all-zero: free).
///
/// The holder renews it every tick; another process takes it over once it
/// has expired or its holder is gone. During a takeover two processes may
/// both check for one tick (a new holder that has not yet stored its
/// expiry can be overtaken); the results are atomics and the state machine
/// tolerates a repeated result, so this only costs a check.
#[repr(C)]
#[derive(Default, Debug)]
pub struct Lease {
    /// Holder's pid (0: nobody).
    pub pid: AtomicU64,
    /// When the lease ends, ms of the shared monotonic clock.
    pub until_ms: AtomicU64,
}

impl Lease {
    /// Renews the lease when `me` holds it, or takes it when it is free,
    /// expired or its holder is not `alive`. Returns whether `me` holds it.
    pub fn try_hold(
        &self,
        me: u64,
        now_ms: u64,
        lease_ms: u64,
        alive: impl Fn(u64) -> bool,
    ) -> bool {
        let holder = self.pid.load(Ordering::Acquire);
        if holder == me {
            self.until_ms.store(now_ms + lease_ms, Ordering::Release);
            return true;
        }
        if holder != 0 && now_ms < self.until_ms.load(Ordering::Acquire) && alive(holder) {
            return false;
        }
        if self
            .pid
            .compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.until_ms.store(now_ms + lease_ms, Ordering::Release);
        true
    }

    /// Gives the lease up when `me` holds it (a worker that exits).
    pub fn release(&self, me: u64) {
        if self
            .pid
            .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.until_ms.store(0, Ordering::Release);
        }
    }

    /// The holder, when the lease is held and not expired at `now_ms`.
    pub fn holder(&self, now_ms: u64) -> Option<u64> {
        let pid = self.pid.load(Ordering::Acquire);
        (pid != 0 && now_ms < self.until_ms.load(Ordering::Acquire)).then_some(pid)
    }
}

/// The checker's tick for the shortest `interval=` of its upstreams: a
/// fifth of it, within 20 ms .. 1 s (how late a check can start).
pub fn tick_ms(min_interval_ms: u64) -> u64 {
    (min_interval_ms / 5).clamp(20, 1000)
}

/// How long a lease lasts past its last renewal: three ticks and a second
/// of slack for a busy event loop, so a live checker is never overtaken
/// while a dead one is replaced within a few seconds.
pub fn lease_ms(tick_ms: u64) -> u64 {
    3 * tick_ms + 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(words: &str) -> Result<CheckArgs, CheckArgError> {
        parse(&words.split_whitespace().collect::<Vec<_>>())
    }

    fn msg(words: &str) -> String {
        p(words).expect_err(words).to_string()
    }

    #[test]
    fn defaults() {
        let a = p("").unwrap();
        assert_eq!(a, CheckArgs::default());
        assert_eq!(a.interval_ms, 5000);
        assert_eq!(a.timeout_ms, 1000);
        assert_eq!((a.fall, a.rise), (3, 2));
        assert_eq!(a.status, vec![(200, 399)]);
        assert_eq!(a.uri, "/");
        assert!(a.status_passes(200) && a.status_passes(399));
        assert!(!a.status_passes(400) && !a.status_passes(199));
    }

    #[test]
    fn every_parameter() {
        let a = p(
            "type=http uri=/health?deep=1 interval=200ms timeout=150ms fall=2 rise=4 \
                   status=200-299 418 port=9000",
        )
        .unwrap();
        assert_eq!(
            a,
            CheckArgs {
                kind: CheckType::Http,
                uri: "/health?deep=1".into(),
                interval_ms: 200,
                timeout_ms: 150,
                fall: 2,
                rise: 4,
                status: vec![(200, 299), (418, 418)],
                port: Some(9000),
                tls: false,
            }
        );
        assert!(a.status_passes(418) && !a.status_passes(300) && !a.status_passes(417));
        let t = p("type=tcp interval=1m timeout=2s").unwrap();
        assert_eq!(t.kind, CheckType::Tcp);
        assert!(!t.tls);
        assert!(p("tls type=tcp").unwrap().tls);
        let s = p("status=200 tls uri=/h").unwrap();
        assert!(s.tls && s.status == vec![(200, 200)] && s.uri == "/h");
        assert_eq!((t.interval_ms, t.timeout_ms), (60_000, 2000));
    }

    #[test]
    fn status_list_continues_only_after_status() {
        assert_eq!(
            p("status=204 200-202 fall=1").unwrap().status,
            vec![(204, 204), (200, 202)]
        );
        assert!(msg("fall=1 200").contains("invalid parameter \"200\""));
    }

    #[test]
    fn bad_values_name_directive_parameter_and_value() {
        for (words, param, value, problem) in [
            ("interval=0", "interval", "0", "between 100ms"),
            ("interval=50ms", "interval", "50ms", "between 100ms"),
            ("interval=2h", "interval", "2h", "and 3600000ms"),
            ("interval=fast", "interval", "fast", "expected a time"),
            ("interval=-1s", "interval", "-1s", "expected a time"),
            ("timeout=5ms", "timeout", "5ms", "between 10ms"),
            ("timeout=2m", "timeout", "2m", "between 10ms"),
            ("fall=0", "fall", "0", "from 1 to 100"),
            ("fall=101", "fall", "101", "from 1 to 100"),
            ("fall=+3", "fall", "+3", "from 1 to 100"),
            ("rise=two", "rise", "two", "from 1 to 100"),
            ("rise=-1", "rise", "-1", "from 1 to 100"),
            ("status=600", "status", "600", "not an HTTP status"),
            ("status=99", "status", "99", "not an HTTP status"),
            ("status=2xx", "status", "2xx", "not an HTTP status"),
            ("status=0200", "status", "0200", "not an HTTP status"),
            (
                "status=300-200",
                "status",
                "300-200",
                "first status is above",
            ),
            ("status=200-", "status", "200-", "not an HTTP status"),
            ("status=200 abc-1", "status", "abc-1", ""),
            ("port=0", "port", "0", "1 to 65535"),
            ("port=65536", "port", "65536", "1 to 65535"),
            ("port=http", "port", "http", "1 to 65535"),
            ("type=udp", "type", "udp", "http or tcp"),
            ("uri=health", "uri", "health", "starting with \"/\""),
            (
                "uri=http://x/health",
                "uri",
                "http://x/health",
                "starting with",
            ),
            ("uri=/a#b", "uri", "/a#b", "fragment"),
            ("uri=", "uri", "", "empty"),
        ] {
            let m = msg(words);
            let expect = format!(
                "invalid value \"{value}\" of parameter \"{param}\" in \"deep_sched_check\": "
            );
            if words == "status=200 abc-1" {
                // Not a status, so not a continuation: an unknown word.
                assert!(m.contains("invalid parameter \"abc-1\""), "{words}: {m}");
                continue;
            }
            assert!(m.starts_with(&expect), "{words}: {m}");
            assert!(m.contains(problem), "{words}: {m}");
        }
    }

    #[test]
    fn uri_with_control_or_space_is_refused() {
        let m = p("x").map(|_| ()).unwrap_err().to_string();
        assert!(m.contains("invalid parameter \"x\""), "{m}");
        let e = parse(&["uri=/a\tb"]).unwrap_err().to_string();
        assert!(e.contains("not allowed in a request path"), "{e}");
        let e = parse(&["uri=/a\u{e9}"]).unwrap_err().to_string();
        assert!(e.contains("not allowed"), "{e}");
        let long = format!("uri=/{}", "a".repeat(MAX_URI_LEN));
        assert!(parse(&[&long])
            .unwrap_err()
            .to_string()
            .contains("longer than"));
    }

    #[test]
    fn bad_words() {
        for (words, word, problem) in [
            ("bogus=1", "bogus=1", "expected one of type="),
            ("interval", "interval", "expected one of"),
            ("tls tls", "tls", "given twice"),
            ("ssl", "ssl", "expected one of"),
            ("fall=2 fall=3", "fall=3", "given twice"),
            ("type=tcp uri=/x", "uri=/x", "only with type=http"),
            ("status=200 type=tcp", "status=200", "only with type=http"),
        ] {
            let m = msg(words);
            assert!(
                m.starts_with(&format!(
                    "invalid parameter \"{word}\" in \"deep_sched_check\": "
                )),
                "{words}: {m}"
            );
            assert!(m.contains(problem), "{words}: {m}");
        }
    }

    #[test]
    fn sni_is_the_server_name_never_an_address() {
        assert_eq!(sni_host("api.example.com:443"), Some("api.example.com"));
        assert_eq!(sni_host("api.example.com"), Some("api.example.com"));
        assert_eq!(sni_host("localhost:8443"), Some("localhost"));
        for none in [
            "127.0.0.1:443",
            "127.0.0.1",
            "[::1]:443",
            "::1",
            "unix:/tmp/s",
            "",
            ":443",
        ] {
            assert_eq!(sni_host(none), None, "{none}");
        }
    }

    #[test]
    fn request_line() {
        let a = p("uri=/health").unwrap();
        assert_eq!(
            a.request("app"),
            "GET /health HTTP/1.0\r\nHost: app\r\nUser-Agent: deep_sched-check\r\n\
             Connection: close\r\n\r\n"
        );
    }

    fn run(
        start: HealthState,
        results: &[bool],
        fall: u32,
        rise: u32,
    ) -> (HealthState, Vec<(Health, Health)>) {
        let mut s = start;
        let mut transitions = Vec::new();
        for &r in results {
            let (n, from) = step(s, r, fall, rise);
            if let Some(f) = from {
                transitions.push((f, n.health));
            }
            s = n;
        }
        (s, transitions)
    }

    #[test]
    fn first_result_decides_then_fall_and_rise() {
        let (s, t) = run(HealthState::default(), &[true], 3, 2);
        assert_eq!(
            (s.health, t),
            (Health::Up, vec![(Health::Checking, Health::Up)])
        );
        let (s, t) = run(HealthState::default(), &[false], 3, 2);
        assert_eq!(
            (s.health, t),
            (Health::Down, vec![(Health::Checking, Health::Down)])
        );

        let up = HealthState {
            health: Health::Up,
            passes: 5,
            fails: 0,
        };
        // Two failures, a pass, two failures: never three in a row.
        let (s, t) = run(up, &[false, false, true, false, false], 3, 2);
        assert_eq!(s.health, Health::Up);
        assert!(t.is_empty());
        assert_eq!((s.passes, s.fails), (0, 2));
        let (s, t) = run(up, &[false, false, false, false, false], 3, 2);
        assert_eq!(s.health, Health::Down);
        assert_eq!(t, vec![(Health::Up, Health::Down)], "reported once");
        assert_eq!(s.fails, 5);

        let down = HealthState {
            health: Health::Down,
            passes: 0,
            fails: 9,
        };
        let (s, t) = run(down, &[true, false, true, true, true], 3, 2);
        assert_eq!(s.health, Health::Up);
        assert_eq!(t, vec![(Health::Down, Health::Up)]);
        let (s, _) = run(down, &[true], 3, 2);
        assert_eq!(s.health, Health::Down);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 OK\r\n"),
            StatusLine::Status(200)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 500\r\nX: y"),
            StatusLine::Status(500)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 \n"),
            StatusLine::Status(204)
        );
        assert_eq!(parse_status_line(b""), StatusLine::Partial);
        assert_eq!(parse_status_line(b"HTT"), StatusLine::Partial);
        assert_eq!(parse_status_line(b"HTTP/1.1 2"), StatusLine::Partial);
        for bad in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"hello",
            b"HTTP/2 200\r\n",
            b"HTTP/1.x 200 OK\r\n",
            b"HTTP/1.1200 OK\r\n",
            b"HTTP/1.1 2x0 OK\r\n",
            b"HTTP/1.1 20\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1 099 OK\r\n",
            b"HTTP/1.1 600 OK\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                matches!(parse_status_line(bad), StatusLine::Garbage(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"HTTP/1.1 200 ".as_slice(), &[b'x'; MAX_STATUS_LINE]].concat();
        assert!(matches!(parse_status_line(&long), StatusLine::Garbage(_)));
    }

    #[test]
    fn lease_election() {
        let l = Lease::default();
        let alive = |_| true;
        assert!(l.try_hold(10, 0, 1000, alive));
        assert!(!l.try_hold(20, 500, 1000, alive), "held and not expired");
        assert!(l.try_hold(10, 900, 1000, alive), "renewed");
        assert!(!l.try_hold(20, 1800, 1000, alive));
        assert!(l.try_hold(20, 1901, 1000, alive), "expired: taken over");
        assert!(!l.try_hold(10, 1902, 1000, alive), "the old holder lost it");
        assert_eq!(l.holder(1902), Some(20));
        // A dead holder is replaced at once.
        assert!(l.try_hold(30, 1903, 1000, |pid| pid != 20));
        l.release(20);
        assert_eq!(l.holder(1904), Some(30), "only the holder releases");
        l.release(30);
        assert_eq!(l.holder(1904), None);
        assert!(l.try_hold(20, 1905, 1000, alive));
    }

    #[test]
    fn tick_and_lease() {
        assert_eq!(tick_ms(200), 40);
        assert_eq!(tick_ms(5000), 1000);
        assert_eq!(tick_ms(100), 20);
        assert!(lease_ms(tick_ms(200)) > 3 * tick_ms(200));
    }

    proptest! {
        #[test]
        fn status_line_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse_status_line(&bytes);
        }

        #[test]
        fn status_line_accepts_every_valid_line(code in 100u16..600, minor in 0u8..10,
                                                reason in "[ -~]{0,40}") {
            let line = format!("HTTP/1.{minor} {code} {reason}\r\n");
            prop_assert_eq!(parse_status_line(line.as_bytes()), StatusLine::Status(code));
            // Every prefix is either partial or already the answer.
            for n in 0..line.len() {
                prop_assert!(!matches!(parse_status_line(&line.as_bytes()[..n]),
                    StatusLine::Garbage(_)), "prefix {n} of {line:?}");
            }
        }

        #[test]
        fn parse_never_panics(words in proptest::collection::vec("[a-z=0-9/ms-]{0,12}", 0..6)) {
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            if let Ok(a) = parse(&refs) {
                prop_assert!(a.fall >= 1 && a.rise >= 1 && !a.status.is_empty());
                prop_assert!(a.uri.starts_with('/'));
            }
        }

        #[test]
        fn transitions_happen_exactly_at_fall_and_rise(fall in 1u32..8, rise in 1u32..8,
                                                       results in proptest::collection::vec(any::<bool>(), 0..60)) {
            let mut s = HealthState { health: Health::Up, ..HealthState::default() };
            let (mut run_pass, mut run_fail) = (0u32, 0u32);
            for r in results {
                let before = s.health;
                if r { run_pass += 1; run_fail = 0; } else { run_fail += 1; run_pass = 0; }
                let (n, from) = step(s, r, fall, rise);
                let expect = match before {
                    Health::Up if run_fail >= fall => Health::Down,
                    Health::Down if run_pass >= rise => Health::Up,
                    h => h,
                };
                prop_assert_eq!(n.health, expect);
                prop_assert_eq!(from.is_some(), before != n.health);
                s = n;
            }
        }
    }
}
