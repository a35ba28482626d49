//! The runtime API of `deep_sched_status write=on`: routes and request
//! bodies, parsed without nginx.
//!
//! ```text
//! PATCH  <location>/upstreams/<upstream>/peers/<id>   {"drain": true} | {"down": false} | {"weight": 5}
//! POST   <location>/upstreams/<upstream>/peers        {"server": "127.0.0.1:9001", "weight": 1}
//! DELETE <location>/upstreams/<upstream>/peers/<id>
//! PATCH  <location>/agents/<agent>                    {"mode": "observe"} | {"pin": [[3, 1]]} | {"pin": null}
//! ```
//!
//! `<id>` is a peer's `id` in the status document; `<agent>` is an agent's
//! `name` (percent-encoded: names are file paths), its position in the
//! status document, or the name of one of its upstreams. The glue resolves
//! the names against the configuration and applies the change; everything
//! that can be wrong with the request itself is decided here, with the
//! status code and the JSON error the client gets (NGINX Plus's API shape:
//! `{"error": {"status": 400, "text": ..., "code": ...}}`).

use serde_json::{Map, Value};

use crate::directive::MAX_WEIGHT;

/// Largest request body the API reads (a pin of 1,024 weights fits).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A change to one peer (`PATCH .../peers/<id>`); absent fields are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerChange {
    /// `drain`: no new requests; those in flight finish.
    pub drain: Option<bool>,
    /// `down`: out of the choice, as `server ... down`.
    pub down: Option<bool>,
    /// `weight`: replaces the configured or decided weight (1..=1000);
    /// `null` returns the peer to the agent's weights.
    pub weight: Option<Option<u32>>,
}

/// A change to one agent (`PATCH /agents/<agent>`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentChange {
    /// `mode`: `observe` pauses the agent's decisions (the configured
    /// weights apply, decisions are still logged), `policy` resumes them.
    pub paused: Option<bool>,
    /// `pin`: fixed weights per upstream and peer (agent order), or `null`
    /// to unpin. A flat list is taken as the weights of a one-upstream
    /// agent.
    pub pin: Option<Option<Vec<Vec<u32>>>>,
}

/// A new peer (`POST .../peers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPeer {
    /// `host:port` or `unix:/path`, as in `server`.
    pub server: String,
    /// Weight, 1 by default.
    pub weight: u32,
}

/// What a write request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `PATCH .../upstreams/<upstream>/peers/<id>`.
    PatchPeer {
        /// Upstream name.
        upstream: String,
        /// Peer id.
        id: usize,
        /// The change.
        change: PeerChange,
    },
    /// `POST .../upstreams/<upstream>/peers`.
    AddPeer {
        /// Upstream name.
        upstream: String,
        /// The peer.
        peer: NewPeer,
    },
    /// `DELETE .../upstreams/<upstream>/peers/<id>`.
    DeletePeer {
        /// Upstream name.
        upstream: String,
        /// Peer id.
        id: usize,
    },
    /// `PATCH .../agents/<agent>`.
    PatchAgent {
        /// Agent name, position or one of its upstreams (decoded).
        agent: String,
        /// The change.
        change: AgentChange,
    },
}

/// An API error: HTTP status, a machine-readable code and a sentence that
/// names the field or the name at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {text}")]
pub struct ApiError {
    /// HTTP status (400, 404, 405, 409, 413, 501).
    pub status: u16,
    /// `UpstreamNotFound`, `PeerNotFound`, `BadField`, ...
    pub code: &'static str,
    /// What is wrong, naming the input.
    pub text: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: u16, code: &'static str, text: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            text: text.into(),
        }
    }

    fn bad(code: &'static str, text: impl Into<String>) -> ApiError {
        ApiError::new(400, code, text)
    }

    /// The response body.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "error": { "status": self.status, "code": self.code, "text": self.text }
        })
        .to_string()
    }
}

/// Decodes `%XX` escapes of one path segment; `None` when an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    // Hand-written: twelve lines, and no other percent-decoding is needed.
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_id(text: &str) -> Result<usize, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            404,
            "PeerNotFound",
            format!("peer id \"{text}\" is not a number (use a peer's \"id\" from the status)"),
        )
    })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "BodyTooLarge",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("BadJson", format!("the request body is not JSON: {e}")))?;
    match v {
        Value::Object(m) if !m.is_empty() => Ok(m),
        Value::Object(_) => Err(ApiError::bad(
            "BadJson",
            "the request body is an empty object",
        )),
        _ => Err(ApiError::bad(
            "BadJson",
            "the request body must be a JSON object",
        )),
    }
}

fn boolean(field: &str, v: &Value) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| {
        ApiError::bad(
            "BadField",
            format!("\"{field}\" must be true or false, not {v}"),
        )
    })
}

fn weight(field: &str, v: &Value) -> Result<u32, ApiError> {
    let w = v
        .as_u64()
        .filter(|w| (1..=u64::from(MAX_WEIGHT)).contains(w));
    w.map(|w| w as u32).ok_or_else(|| {
        ApiError::bad(
            "BadField",
            format!("\"{field}\" must be a whole number from 1 to {MAX_WEIGHT}, not {v}"),
        )
    })
}

fn unknown(field: &str, allowed: &str) -> ApiError {
    ApiError::bad(
        "UnknownField",
        format!("unknown field \"{field}\" (expected {allowed})"),
    )
}

fn peer_change(body: &[u8]) -> Result<PeerChange, ApiError> {
    let mut c = PeerChange::default();
    for (k, v) in object(body)? {
        match k.as_str() {
            "drain" => c.drain = Some(boolean(&k, &v)?),
            "down" => c.down = Some(boolean(&k, &v)?),
            "weight" if v.is_null() => c.weight = Some(None),
            "weight" => c.weight = Some(Some(weight(&k, &v)?)),
            _ => return Err(unknown(&k, "\"drain\", \"down\" or \"weight\"")),
        }
    }
    Ok(c)
}

fn weights_row(field: &str, v: &Value) -> Result<Vec<u32>, ApiError> {
    let items = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
        ApiError::bad(
            "BadField",
            format!("\"{field}\" must list weights, not {v}"),
        )
    })?;
    items.iter().map(|w| weight(field, w)).collect()
}

fn agent_change(body: &[u8]) -> Result<AgentChange, ApiError> {
    let mut c = AgentChange::default();
    for (k, v) in object(body)? {
        match k.as_str() {
            "mode" => {
                c.paused = Some(match v.as_str() {
                    Some("observe") => true,
                    Some("policy") => false,
                    _ => {
                        return Err(ApiError::bad(
                            "BadField",
                            format!("\"mode\" must be \"observe\" or \"policy\", not {v}"),
                        ))
                    }
                })
            }
            "pin" if v.is_null() => c.pin = Some(None),
            "pin" => {
                let rows = match v.as_array() {
                    Some(a) if a.first().is_some_and(Value::is_array) => a
                        .iter()
                        .map(|row| weights_row("pin", row))
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => vec![weights_row("pin", &v)?],
                };
                c.pin = Some(Some(rows));
            }
            _ => return Err(unknown(&k, "\"mode\" or \"pin\"")),
        }
    }
    Ok(c)
}

fn new_peer(body: &[u8]) -> Result<NewPeer, ApiError> {
    let mut server = None;
    let mut w = 1;
    for (k, v) in object(body)? {
        match k.as_str() {
            "server" => {
                let s = v.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                    ApiError::bad(
                        "BadField",
                        format!(
                            "\"server\" must be an address such as \"127.0.0.1:9001\", not {v}"
                        ),
                    )
                })?;
                server = Some(s.to_owned());
            }
            "weight" => w = weight(&k, &v)?,
            _ => return Err(unknown(&k, "\"server\" or \"weight\"")),
        }
    }
    let server = server.ok_or_else(|| ApiError::bad("MissingField", "\"server\" is required"))?;
    Ok(NewPeer { server, weight: w })
}

/// Routes a write request. `path` is the request path after the status
/// location (e.g. `/upstreams/backend/peers/3`); `method` the HTTP method.
/// GET and HEAD are not routed here (they read the status).
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || {
        ApiError::new(
            404,
            "PathNotFound",
            format!(
                "no API endpoint \"{path}\" (expected /upstreams/NAME/peers[/ID] or /agents/NAME)"
            ),
        )
    };
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| ApiError::bad("BadPath", format!("\"{s}\" has a malformed %-escape")))
    };
    let not_allowed = |allowed: &str| {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not allowed on \"{path}\" (allowed: {allowed})"),
        )
    };
    match segments.as_slice() {
        ["upstreams", u, "peers", id] => {
            let upstream = decode(u)?;
            match method {
                "PATCH" => Ok(ApiRequest::PatchPeer {
                    upstream,
                    id: parse_id(id)?,
                    change: peer_change(body)?,
                }),
                "DELETE" => Ok(ApiRequest::DeletePeer {
                    upstream,
                    id: parse_id(id)?,
                }),
                _ => Err(not_allowed("GET, PATCH, DELETE")),
            }
        }
        ["upstreams", u, "peers"] => match method {
            "POST" => Ok(ApiRequest::AddPeer {
                upstream: decode(u)?,
                peer: new_peer(body)?,
            }),
            _ => Err(not_allowed("GET, POST")),
        },
        ["agents", a] => match method {
            "PATCH" => Ok(ApiRequest::PatchAgent {
                agent: decode(a)?,
                change: agent_change(body)?,
            }),
            _ => Err(not_allowed("GET, PATCH")),
        },
        _ => Err(not_found()),
    }
}

/// The weight a peer gets: the runtime API's own weight when set (not 0),
/// else the agent's pinned weight while pinned, else the configured weight
/// while the agent is paused, else the decided one.
pub fn effective_weight(
    admin_weight: u32,
    pinned: Option<u32>,
    paused: bool,
    configured: u32,
    decided: u32,
) -> u32 {
    if admin_weight > 0 {
        admin_weight
    } else if let Some(w) = pinned.filter(|&w| w > 0) {
        w
    } else if paused {
        configured
    } else {
        decided
    }
}

/// The runtime API state of a peer as the status shows it: `down`,
/// `draining` while requests are in flight, `drained`, or `up`.
pub fn peer_state(admin: u32, inflight: u64) -> &'static str {
    if admin & flags::DOWN != 0 {
        "down"
    } else if admin & flags::DRAIN != 0 {
        if inflight > 0 {
            "draining"
        } else {
            "drained"
        }
    } else {
        "up"
    }
}

/// Admin flags of a peer in the zone (`PeerSlot::admin`).
pub mod flags {
    /// `drain`: no new requests.
    pub const DRAIN: u32 = 1;
    /// `down`: out of the choice.
    pub const DOWN: u32 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(path: &str, body: &str) -> Result<ApiRequest, ApiError> {
        route("PATCH", path, body.as_bytes())
    }

    #[test]
    fn peer_changes() {
        assert_eq!(
            patch("/upstreams/backend/peers/3", r#"{"drain": true}"#).unwrap(),
            ApiRequest::PatchPeer {
                upstream: "backend".into(),
                id: 3,
                change: PeerChange {
                    drain: Some(true),
                    ..PeerChange::default()
                }
            }
        );
        let ApiRequest::PatchPeer { change, .. } = patch(
            "/upstreams/b/peers/0/",
            r#"{"down": false, "weight": 1000}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (change.down, change.weight, change.drain),
            (Some(false), Some(Some(1000)), None)
        );
        let ApiRequest::PatchPeer { change, .. } =
            patch("/upstreams/b/peers/0", r#"{"weight": null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(change.weight, Some(None));
    }

    #[test]
    fn agent_changes() {
        let req = patch("/agents/%2Fetc%2Fnginx%2Fp.json", r#"{"mode": "observe"}"#).unwrap();
        assert_eq!(
            req,
            ApiRequest::PatchAgent {
                agent: "/etc/nginx/p.json".into(),
                change: AgentChange {
                    paused: Some(true),
                    pin: None
                }
            }
        );
        let ApiRequest::PatchAgent { change, .. } =
            patch("/agents/0", r#"{"pin": [3, 1, 1]}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(change.pin, Some(Some(vec![vec![3, 1, 1]])));
        let ApiRequest::PatchAgent { change, .. } =
            patch("/agents/0", r#"{"pin": [[3, 1], [2]], "mode": "policy"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(change.pin, Some(Some(vec![vec![3, 1], vec![2]])));
        assert_eq!(change.paused, Some(false));
        let ApiRequest::PatchAgent { change, .. } = patch("/agents/x", r#"{"pin": null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(change.pin, Some(None));
    }

    #[test]
    fn add_and_delete() {
        assert_eq!(
            route(
                "POST",
                "/upstreams/b/peers",
                br#"{"server": "127.0.0.1:9001"}"#
            )
            .unwrap(),
            ApiRequest::AddPeer {
                upstream: "b".into(),
                peer: NewPeer {
                    server: "127.0.0.1:9001".into(),
                    weight: 1
                }
            }
        );
        assert_eq!(
            route("DELETE", "/upstreams/b/peers/7", b"").unwrap(),
            ApiRequest::DeletePeer {
                upstream: "b".into(),
                id: 7
            }
        );
    }

    /// Every bad request: status, code, and a text naming what is wrong.
    #[test]
    fn bad_requests_name_the_problem() {
        let cases: &[(&str, &str, &str, u16, &str)] = &[
            ("PATCH", "/upstreams/b/peers/1", "", 400, "not JSON"),
            ("PATCH", "/upstreams/b/peers/1", "{", 400, "not JSON"),
            ("PATCH", "/upstreams/b/peers/1", "[]", 400, "JSON object"),
            ("PATCH", "/upstreams/b/peers/1", "{}", 400, "empty object"),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"drain": 1}"#,
                400,
                "\"drain\" must be true or false",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"down": "yes"}"#,
                400,
                "\"down\"",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"weight": 0}"#,
                400,
                "\"weight\" must be a whole number from 1 to 1000, not 0",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"weight": 1001}"#,
                400,
                "not 1001",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"weight": 2.5}"#,
                400,
                "not 2.5",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"weight": -1}"#,
                400,
                "not -1",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/1",
                r#"{"wieght": 2}"#,
                400,
                "unknown field \"wieght\"",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/x",
                r#"{"drain": true}"#,
                404,
                "peer id \"x\"",
            ),
            (
                "PATCH",
                "/upstreams/b/peers/-1",
                r#"{"drain": true}"#,
                404,
                "peer id \"-1\"",
            ),
            (
                "PATCH",
                "/upstreams/b%zz/peers/1",
                r#"{"drain": true}"#,
                400,
                "malformed %-escape",
            ),
            (
                "PATCH",
                "/agents/a",
                r#"{"mode": "explore"}"#,
                400,
                "\"mode\" must be",
            ),
            (
                "PATCH",
                "/agents/a",
                r#"{"pin": []}"#,
                400,
                "\"pin\" must list weights",
            ),
            (
                "PATCH",
                "/agents/a",
                r#"{"pin": [1, 0]}"#,
                400,
                "from 1 to 1000, not 0",
            ),
            (
                "PATCH",
                "/agents/a",
                r#"{"pin": [[1], "x"]}"#,
                400,
                "\"pin\" must list weights",
            ),
            (
                "PATCH",
                "/agents/a",
                r#"{"epsilon": 0.1}"#,
                400,
                "unknown field \"epsilon\"",
            ),
            (
                "POST",
                "/upstreams/b/peers",
                r#"{"weight": 2}"#,
                400,
                "\"server\" is required",
            ),
            (
                "POST",
                "/upstreams/b/peers",
                r#"{"server": ""}"#,
                400,
                "\"server\" must be an address",
            ),
            (
                "POST",
                "/upstreams/b/peers",
                r#"{"server": "a:1", "backup": true}"#,
                400,
                "unknown field \"backup\"",
            ),
            (
                "PUT",
                "/upstreams/b/peers/1",
                "{}",
                405,
                "PUT is not allowed",
            ),
            (
                "POST",
                "/upstreams/b/peers/1",
                "{}",
                405,
                "allowed: GET, PATCH, DELETE",
            ),
            ("DELETE", "/agents/a", "", 405, "allowed: GET, PATCH"),
            ("PATCH", "/upstreams/b", "{}", 404, "no API endpoint"),
            ("PATCH", "/", "{}", 404, "no API endpoint"),
            ("PATCH", "/servers/1", "{}", 404, "no API endpoint"),
        ];
        for &(method, path, body, status, needle) in cases {
            let e = route(method, path, body.as_bytes()).expect_err(path);
            assert_eq!(e.status, status, "{method} {path} {body}: {e}");
            assert!(e.text.contains(needle), "{method} {path} {body}: {e}");
            let json: Value = serde_json::from_str(&e.to_json()).unwrap();
            assert_eq!(json["error"]["status"], status);
        }
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(route("PATCH", "/agents/a", &huge).unwrap_err().status, 413);
    }

    #[test]
    fn weight_precedence_and_states() {
        assert_eq!(effective_weight(0, None, false, 2, 5), 5, "decided");
        assert_eq!(
            effective_weight(0, None, true, 2, 5),
            2,
            "paused: configured"
        );
        assert_eq!(
            effective_weight(0, Some(7), true, 2, 5),
            7,
            "pinned over paused"
        );
        assert_eq!(
            effective_weight(9, Some(7), true, 2, 5),
            9,
            "the peer's own weight first"
        );
        assert_eq!(
            effective_weight(0, Some(0), false, 2, 5),
            5,
            "a zero pin is no pin"
        );
        assert_eq!(peer_state(0, 3), "up");
        assert_eq!(peer_state(flags::DRAIN, 3), "draining");
        assert_eq!(peer_state(flags::DRAIN, 0), "drained");
        assert_eq!(peer_state(flags::DRAIN | flags::DOWN, 3), "down");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    proptest::proptest! {
        /// Arbitrary paths and bodies never panic.
        #[test]
        fn never_panics(method in "(GET|PATCH|POST|DELETE|PUT)", path in "\\PC{0,40}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = route(&method, &path, &body);
        }
    }
}
