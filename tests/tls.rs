//! TLS upstreams (`proxy_pass https://`) through deep_sched: the balancer
//! keeps nginx's per-peer SSL session reuse (its data starts with nginx's
//! round-robin data, which the session callbacks use).

mod harness;

use std::process::Command;

use harness::*;

#[test]
fn https_upstreams_are_balanced_and_reuse_sessions() {
    let dir = TempDir::new("tls");
    let key = dir.path().join("key.pem");
    let crt = dir.path().join("crt.pem");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let backends: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    server {{ listen 127.0.0.1:{p} ssl; ssl_certificate {crt}; ssl_certificate_key {key};\n\
                 \x20       access_log logs/tls{i}.log reuse; location / {{ return 200 \"tls-b{i}\"; }} }}\n",
                crt = crt.display(),
                key = key.display()
            )
        })
        .collect();
    let servers: String = ports
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p};\n"))
        .collect();
    let http = format!(
        "    log_format reuse '$ssl_session_reused';\n\
         {backends}\
             upstream backend {{\n{servers}        deep_sched explore interval=200ms;\n    }}\n\
             server {{\n\
                 listen 127.0.0.1:{{port}};\n\
                 location / {{ proxy_pass https://backend; proxy_ssl_session_reuse on; }}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n"
    );
    let nginx = Nginx::start(&full_config(&http, 1));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let r = nginx.get("/");
        assert_eq!(r.status, 200, "{}", r.body);
        *seen.entry(r.body.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "all three TLS peers served: {seen:?}");
    let st = nginx.status();
    let counted: u64 = st["agents"][0]["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requestCounter"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 60);
    // Each peer's handshakes after its first resumed the saved session.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let reused: usize = (0..3)
        .map(|i| {
            nginx
                .lines(&format!("logs/tls{i}.log"))
                .iter()
                .filter(|l| *l == "r")
                .count()
        })
        .sum();
    assert!(
        reused >= 50,
        "sessions reused on {reused} of 60 connections"
    );
}
