//! The module built against Debian's packaged nginx (`scripts/build.sh
//! --system` → `build/system/ngx_http_deep_sched_module.so`) loads into
//! `/usr/sbin/nginx` and balances: observe mode and the example policy
//! (adapted to this test's backend ports), with the status page.
//!
//! The packaged nginx runs through the test harness: its own prefix,
//! configuration, pid and error log in a temporary directory, on 127.0.0.1,
//! in the foreground, stopped by PID; the system service is never touched. Skipped, with the reason printed, when the
//! packaged nginx or the module built for it is absent.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::*;
use serde_json::Value;

const SYSTEM_NGINX: &str = "/usr/sbin/nginx";

fn system_module() -> PathBuf {
    root().join("build/system/ngx_http_deep_sched_module.so")
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if !Path::new(SYSTEM_NGINX).exists() {
        return Some(format!(
            "{SYSTEM_NGINX} is absent (install Debian's nginx: scripts/deps.sh)"
        ));
    }
    if !system_module().exists() {
        return Some(format!(
            "{} is absent (run scripts/build.sh --system)",
            system_module().display()
        ));
    }
    None
}

/// The example policy with its peers renamed to `peers`.
fn example_policy(peers: &[String]) -> Value {
    let path = root().join("policies/examples/three-peers.json");
    let mut p: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read example policy"))
            .expect("example policy is JSON");
    p["agent"]["upstreams"][0]["peers"] = Value::from(peers.to_vec());
    p
}

#[test]
fn packaged_nginx_loads_the_module_and_balances() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let version = Command::new(SYSTEM_NGINX).arg("-v").output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&version.stderr).trim());

    let b = backends(3, 8, 1.0);
    let peers: Vec<String> = b.iter().map(|h| h.addr().to_string()).collect();
    let policy_dir = TempDir::new("system-policy");
    let policy = policy_dir.path().join("three-peers.json");
    std::fs::write(&policy, example_policy(&peers).to_string()).unwrap();
    let servers = server_lines(&b, &["", "", ""]);
    let http = format!(
        "    upstream backend {{\n{servers}        zone backend 64k;\n        deep_sched {} interval=500ms;\n    }}\n\
             upstream observe {{\n{servers}        zone observe 64k;\n        deep_sched;\n    }}\n",
        policy.display()
    ) + "    server {\n\
                 listen 127.0.0.1:{port};\n\
                 proxy_next_upstream error timeout http_502;\n\
                 proxy_connect_timeout 2s;\n\
                 location /observe/ { proxy_pass http://observe/; }\n\
                 location / { proxy_pass http://backend; }\n\
                 location = /deep_sched { deep_sched_status; }\n\
             }\n";
    let nginx = Nginx::start_binary(
        Path::new(SYSTEM_NGINX),
        &config_for(&system_module(), &http, 2),
    );

    // Policy upstream: every request answered, all three peers used.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let r = nginx.get(READ);
        assert_eq!(r.status, 200, "{r:?}\n{}", nginx.error_log());
        *seen
            .entry(r.header("X-Backend").unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "all peers used: {seen:?}");

    // Observe mode: round robin over equal weights (shared by the workers
    // through the zone).
    let mut obs = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let r = nginx.get(&format!("/observe{READ}"));
        assert_eq!(r.status, 200, "{r:?}");
        *obs.entry(r.header("X-Backend").unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(obs.values().copied().collect::<Vec<_>>(), vec![10, 10, 10]);

    // The status page: both agents, the policy's mode, counters that add up,
    // and a decision made by the timer inside the packaged nginx.
    let st = wait_for(Duration::from_secs(5), || {
        let r = nginx.get("/deep_sched");
        assert_eq!(r.status, 200, "status: {}", r.body);
        let st: Value = serde_json::from_str(&r.body).expect("status JSON");
        let decided = st["agents"]
            .as_array()?
            .iter()
            .any(|a| a["mode"] == "policy" && !a["state"].is_null());
        decided.then_some(st)
    })
    .unwrap_or_else(|| panic!("no policy decision in 5 s:\n{}", nginx.error_log()));
    let agents = st["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{st}");
    let total: u64 = agents
        .iter()
        .flat_map(|a| a["upstreams"][0]["peers"].as_array().unwrap().iter())
        .map(|p| p["requestCounter"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 90, "{st}");
    let log = nginx.error_log();
    assert!(
        !log.contains("[emerg]") && !log.contains("[alert]"),
        "{log}"
    );
}
