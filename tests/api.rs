//! The runtime API (`deep_sched_status write=on`) through the real nginx
//! with two workers: drain, down and re-weight a peer under load without a
//! failed request; pause and pin an agent; every bad request answered with
//! the right status and a JSON error naming the problem.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::*;
use serde_json::Value;

fn addr(nginx: &Nginx) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], nginx.port))
}

fn call(nginx: &Nginx, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = http_request(addr(nginx), method, path, body);
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// The peers of upstream `up` in a status document.
fn peers(st: &Value, up: &str) -> Vec<Value> {
    st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["upstreams"].as_array().unwrap().iter())
        .find(|u| u["name"] == up)
        .unwrap()["peers"]
        .as_array()
        .unwrap()
        .clone()
}

/// Requests each peer of upstream `up` served so far, in order.
fn counts(st: &Value, up: &str) -> Vec<u64> {
    peers(st, up)
        .iter()
        .map(|p| p["requestCounter"].as_u64().unwrap())
        .collect()
}

fn config(b: &[BackendHandle], b2: &[BackendHandle], samples: bool) -> String {
    let log = if samples {
        " log={prefix}/logs/b2.jsonl"
    } else {
        ""
    };
    format!(
        "    upstream backend {{\n        zone backend 256k;\n{}        deep_sched;\n    }}\n\
             upstream fixed {{\n{}        deep_sched explore weights=1,9 interval=200ms{log};\n    }}\n{}",
        server_lines(b, &["", "", ""]),
        server_lines(b2, &["", "", ""]),
        proxy_server(
            "        location / { proxy_pass http://backend; }\n\
                     location /fixed/ { proxy_pass http://fixed/; }\n\
                     location /api/ { deep_sched_status write=on; }"
        )
    )
}

/// Share of the requests each peer of `up` got over `ms` under load.
fn shares(nginx: &Nginx, up: &str, ms: u64) -> Vec<u64> {
    let before = counts(&nginx.status(), up);
    std::thread::sleep(Duration::from_millis(ms));
    let after = counts(&nginx.status(), up);
    after.iter().zip(&before).map(|(a, b)| a - b).collect()
}

#[test]
fn drain_down_and_weight_a_peer_under_load_without_failures() {
    let b = backends(3, 16, 2.0);
    let b2 = backends(3, 16, 2.0);
    let nginx = Nginx::start(&full_config(&config(&b, &b2, false), 2));
    let load = Load::start(nginx.port, 4, &[READ]);

    let st = nginx.status();
    let ids: Vec<u64> = peers(&st, "backend")
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let id = ids[2];
    // The API location serves the same status on GET.
    let (code, via_api) = call(&nginx, "GET", "/api/", "");
    assert_eq!(code, 200);
    assert_eq!(peers(&via_api, "backend")[2]["id"], id);

    let (code, v) = call(
        &nginx,
        "PATCH",
        &format!("/api/upstreams/backend/peers/{id}"),
        r#"{"drain": true}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert!(v["state"] == "draining" || v["state"] == "drained", "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let got = shares(&nginx, "backend", 1000);
    assert!(got[0] + got[1] > 50, "traffic goes on: {got:?}");
    assert_eq!(got[2], 0, "a drained peer gets no new request: {got:?}");
    assert_eq!(peers(&nginx.status(), "backend")[2]["state"], "drained");
    assert!(
        nginx
            .error_log()
            .contains(&format!("runtime API: upstream \"backend\" peer {id}")),
        "logged at notice:\n{}",
        nginx.error_log()
    );

    let (code, _) = call(
        &nginx,
        "PATCH",
        &format!("/api/upstreams/backend/peers/{id}"),
        r#"{"drain": false}"#,
    );
    assert_eq!(code, 200);
    let got = shares(&nginx, "backend", 1000);
    assert!(got[2] > 10, "back in the choice: {got:?}");

    let (code, v) = call(
        &nginx,
        "PATCH",
        &format!("/api/upstreams/backend/peers/{}", ids[0]),
        r#"{"down": true}"#,
    );
    assert_eq!((code, v["state"].as_str()), (200, Some("down")), "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let got = shares(&nginx, "backend", 1000);
    assert_eq!(got[0], 0, "down: {got:?}");
    call(
        &nginx,
        "PATCH",
        &format!("/api/upstreams/backend/peers/{}", ids[0]),
        r#"{"down": false}"#,
    );

    // Weight 8 against 1 and 1: 80 % under round robin.
    let (code, v) = call(
        &nginx,
        "PATCH",
        &format!("/api/upstreams/backend/peers/{}", ids[1]),
        r#"{"weight": 8}"#,
    );
    assert_eq!((code, v["adminWeight"].as_u64()), (200, Some(8)), "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let got = shares(&nginx, "backend", 1500);
    let total: u64 = got.iter().sum();
    assert!(
        got[1] as f64 > 0.7 * total as f64,
        "weight 8 of 10 gets most: {got:?}"
    );
    assert_eq!(peers(&nginx.status(), "backend")[1]["adminWeight"], 8);
    call(
        &nginx,
        "PATCH",
        &format!("/api/upstreams/backend/peers/{}", ids[1]),
        r#"{"weight": null}"#,
    );
    let got = shares(&nginx, "backend", 1500);
    let total: u64 = got.iter().sum();
    assert!(
        (got[1] as f64) < 0.45 * total as f64,
        "back to equal weights: {got:?}"
    );

    let (_, failed) = load.stop();
    assert_eq!(
        failed, 0,
        "no failed request through drain, down and weight"
    );
}

#[test]
fn pause_and_pin_an_agent() {
    let b = backends(3, 16, 2.0);
    let b2 = backends(3, 16, 2.0);
    let nginx = Nginx::start(&full_config(&config(&b, &b2, true), 2));
    let load = Load::start(nginx.port, 4, &["/fixed/wrk2-api/home-timeline/read"]);

    let (code, v) = call(
        &nginx,
        "PATCH",
        "/api/agents/fixed",
        r#"{"pin": [1, 1, 8]}"#,
    );
    assert_eq!((code, v["pinned"].as_bool()), (200, Some(true)), "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let got = shares(&nginx, "fixed", 1500);
    let total: u64 = got.iter().sum();
    assert!(got[2] as f64 > 0.7 * total as f64, "pinned 1,1,8: {got:?}");
    let st = nginx.status();
    let agent = st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["upstreams"][0]["name"] == "fixed")
        .unwrap()
        .clone();
    assert_eq!(agent["pinned"], true);
    let w: Vec<u64> = agent["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(w, vec![1, 1, 8], "the decider publishes the pin");
    let pinned_line = nginx
        .lines("logs/b2.jsonl")
        .into_iter()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(&l).ok())
        .unwrap();
    assert_eq!(pinned_line["admin"], "pinned", "{pinned_line}");
    assert_eq!(pinned_line["explored"], false, "{pinned_line}");
    assert_eq!(pinned_line["propensity"], 1.0, "{pinned_line}");
    assert_eq!(pinned_line["weights"][0], serde_json::json!([1, 1, 8]));

    // Unpin and pause: the configured weights (1, 1, 1).
    let (code, v) = call(
        &nginx,
        "PATCH",
        "/api/agents/fixed",
        r#"{"pin": null, "mode": "observe"}"#,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["pinned"].as_bool(), v["paused"].as_bool()),
        (Some(false), Some(true))
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = shares(&nginx, "fixed", 1500);
    let total: u64 = got.iter().sum();
    for g in &got {
        assert!(
            (*g as f64) > 0.25 * total as f64,
            "paused: configured equal weights: {got:?}"
        );
    }
    // Resume exploring (the agent named by its position this time):
    // weights from {1, 9} again.
    let position = nginx.status()["agents"]
        .as_array()
        .unwrap()
        .iter()
        .position(|a| a["upstreams"][0]["name"] == "fixed")
        .unwrap();
    let (code, v) = call(
        &nginx,
        "PATCH",
        &format!("/api/agents/{position}"),
        r#"{"mode": "policy"}"#,
    );
    assert_eq!((code, v["paused"].as_bool()), (200, Some(false)), "{v}");
    let explored = wait_for(Duration::from_secs(5), || {
        let st = nginx.status();
        let a = st["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["upstreams"][0]["name"] == "fixed")
            .cloned()
            .unwrap();
        a["upstreams"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["weight"] == 9)
            .then_some(())
    });
    assert!(explored.is_some(), "exploring again");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
}

#[test]
fn bad_requests_get_clear_json_errors_and_change_nothing() {
    let b = backends(3, 4, 1.0);
    let b2 = backends(3, 4, 1.0);
    let http = config(&b, &b2, false).replace(
        "location /api/ { deep_sched_status write=on; }",
        "location /api/ { deep_sched_status write=on; }\n        location /ro/ { deep_sched_status; }",
    );
    let nginx = Nginx::start(&full_config(&http, 2));
    let before = nginx.status();
    let id = peers(&before, "backend")[0]["id"].as_u64().unwrap();
    let fixed_id = peers(&before, "fixed")[0]["id"].as_u64().unwrap();
    let p = |rest: &str| format!("/api/upstreams/backend/peers/{id}{rest}");
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "PATCH",
            "/api/upstreams/nope/peers/0".into(),
            r#"{"drain": true}"#,
            404,
            "upstream \"nope\" not found",
        ),
        (
            "PATCH",
            "/api/upstreams/backend/peers/999".into(),
            r#"{"drain": true}"#,
            404,
            "has no peer with id 999",
        ),
        (
            "PATCH",
            format!("/api/upstreams/backend/peers/{fixed_id}"),
            r#"{"drain": true}"#,
            404,
            "has no peer with id",
        ),
        ("PATCH", p(""), "{not json", 400, "not JSON"),
        (
            "PATCH",
            p(""),
            r#"{"weight": 0}"#,
            400,
            "\"weight\" must be a whole number from 1 to 1000, not 0",
        ),
        ("PATCH", p(""), r#"{"weight": 1001}"#, 400, "not 1001"),
        (
            "PATCH",
            p(""),
            r#"{"color": "red"}"#,
            400,
            "unknown field \"color\"",
        ),
        (
            "PATCH",
            p(""),
            r#"{"drain": "yes"}"#,
            400,
            "\"drain\" must be true or false",
        ),
        (
            "POST",
            "/api/upstreams/backend/peers".into(),
            r#"{"server": "127.0.0.1:9"}"#,
            501,
            "not supported yet",
        ),
        (
            "POST",
            "/api/upstreams/fixed/peers".into(),
            r#"{"server": "127.0.0.1:9"}"#,
            409,
            "has no zone",
        ),
        ("DELETE", p(""), "", 501, "not supported yet"),
        (
            "POST",
            "/api/upstreams/backend/peers".into(),
            r#"{"weight": 2}"#,
            400,
            "\"server\" is required",
        ),
        (
            "PATCH",
            "/api/agents/nobody".into(),
            r#"{"mode": "observe"}"#,
            404,
            "agent \"nobody\" not found",
        ),
        (
            "PATCH",
            "/api/agents/fixed".into(),
            r#"{"pin": [1, 2]}"#,
            400,
            "must give 3 weights for upstream \"fixed\", got 2",
        ),
        (
            "PATCH",
            "/api/agents/fixed".into(),
            r#"{"mode": "learn"}"#,
            400,
            "\"mode\" must be",
        ),
        (
            "PUT",
            p(""),
            r#"{"drain": true}"#,
            405,
            "PUT is not allowed",
        ),
        (
            "PATCH",
            "/api/servers".into(),
            r#"{"drain": true}"#,
            404,
            "no API endpoint",
        ),
        (
            "PATCH",
            format!("/ro/upstreams/backend/peers/{id}"),
            r#"{"drain": true}"#,
            405,
            "read-only",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let r = http_request(addr(&nginx), method, &path, body);
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.body));
        let text = v["error"]["text"].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{method} {path} {body}: {text}");
        assert_eq!(v["error"]["status"], status);
    }
    // Nothing changed, nothing crashed.
    let after = nginx.status();
    for up in ["backend", "fixed"] {
        for p in peers(&after, up) {
            assert_eq!(p["state"], "up", "{p}");
            assert!(p["adminWeight"].is_null(), "{p}");
        }
    }
    let r = http_get(addr(&nginx), READ);
    assert_eq!(r.status, 200, "still serving");
    assert!(
        !nginx.error_log().contains("[alert]"),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn write_parameter_is_checked_by_nginx_t() {
    for bad in ["write=yes", "write", "read=on"] {
        let conf = full_config(
            &format!(
                "    server {{ listen 127.0.0.1:1; location /api/ {{ deep_sched_status {bad}; }} }}\n"
            ),
            1,
        );
        let out = nginx_t(&conf);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: accepted");
        assert!(
            stderr.contains(&format!(
                "invalid parameter \"{bad}\" in \"deep_sched_status\""
            )),
            "{bad}: {stderr}"
        );
    }
}
