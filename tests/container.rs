//! deep_sched in containers: the image of `Dockerfile` (built from `build/`
//! on the local debootstrap base, once per run) runs nginx in front of three
//! backend-emulator containers on a network of the test's own; nginx is
//! published on 127.0.0.1 only. Each test builds its own stack, and its
//! [`docker::Lab`] removes containers and network on drop, also on failure.
//!
//! Runs whenever a Docker engine answers; otherwise every test passes after
//! printing "skipped: <reason>". The tests take turns (one stack at a time)
//! so that a 2-core machine is not asked to run four stacks at once.

mod docker;
mod harness;

use std::sync::Mutex;
use std::time::Duration;

use docker::{Lab, Load, NginxContainer};
use harness::{wait_for, READ};
use serde_json::{json, Value};

/// Decision interval of the test policy.
const INTERVAL_MS: u64 = 500;
/// Where the policy and the sample log live in the container.
const POLICY: &str = "/etc/deep_sched/policies/backend.json";
const SAMPLES: &str = "/var/log/deep_sched/test.samples.jsonl";

/// One stack at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Runs `test` unless Docker is unreachable (then prints why and passes).
fn with_docker(test: impl FnOnce()) {
    if let Some(why) = docker::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    test();
}

/// A policy for three peers over their `share` of the upstream's requests:
/// state 0 "all serve" (a third each) takes equal weights; state 1+p "peer p
/// gone" (p gets nothing, the others half each; nginx stops sending to a
/// peer that failed) takes weight 1 for p and 5 for the others. `tag` goes
/// into the provenance so the status page tells versions apart.
fn gone_peer_policy(peers: &[String], tag: &str, equal: u32) -> Value {
    let third = 1.0 / 3.0;
    let mut means = vec![vec![third; 3]];
    let mut actions = vec![json!({ "weights": [[equal, equal, equal]] })];
    for p in 0..3 {
        let mut m = vec![0.5; 3];
        m[p] = 0.0;
        means.push(m);
        let mut w = vec![5, 5, 5];
        w[p] = 1;
        actions.push(json!({ "weights": [w] }));
    }
    json!({
        "format": "deep_sched.policy",
        "version": 1,
        "interval_ms": INTERVAL_MS,
        "agent": { "upstreams": [ { "name": "backend", "peers": peers } ] },
        "features": (0..3).map(|p| json!({
            "upstream": 0, "peer": p, "metric": "share", "transform": "none"
        })).collect::<Vec<_>>(),
        "standardization": { "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0] },
        "gmm": {
            "covariance": "diag",
            "weights": [0.25, 0.25, 0.25, 0.25],
            "means": means,
            "covariances": vec![vec![0.01, 0.01, 0.01]; 4]
        },
        "actions": actions,
        "table": [0, 1, 2, 3],
        "default_action": 0,
        "ood_log_likelihood": null,
        "provenance": {
            "learner": "hand-written container test policy",
            "algorithm": "none",
            "samples": 0,
            "created": tag,
            "reward": "none",
            "seed": 0
        }
    })
}

/// The configuration the tests copy over the image's: retries for
/// idempotent requests, short timeouts so a hanging peer costs little.
fn nginx_conf(peers: &[String]) -> String {
    let servers: String = peers
        .iter()
        .map(|p| format!("        server {p};\n"))
        .collect();
    format!(
        "load_module modules/ngx_http_deep_sched_module.so;\n\
         user nginx;\n\
         worker_processes 2;\n\
         error_log stderr notice;\n\
         pid logs/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
             access_log off;\n\
             client_body_temp_path temp/body;\n\
             proxy_temp_path temp/proxy;\n\
             upstream backend {{\n\
                 zone backend 64k;\n\
         {servers}\
                 deep_sched policies/backend.json choose=wrr interval={INTERVAL_MS}ms log={SAMPLES};\n\
                 keepalive 16;\n\
             }}\n\
             server {{\n\
                 listen 8080;\n\
                 proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n\
                 proxy_connect_timeout 300ms;\n\
                 proxy_send_timeout 2s;\n\
                 proxy_read_timeout 2s;\n\
                 proxy_next_upstream error timeout http_502 http_503;\n\
                 proxy_next_upstream_tries 3;\n\
                 location / {{ proxy_pass http://backend; }}\n\
                 location = /deep_sched {{ deep_sched_status; }}\n\
             }}\n\
         }}\n"
    )
}

/// nginx + three backends (`b1`..`b3`) on the lab's network.
struct Stack {
    nginx: NginxContainer,
    backends: Vec<docker::Backend>,
    peers: Vec<String>,
    // Last: containers and network go when the stack goes.
    lab: Lab,
}

impl Stack {
    fn start(test: &str) -> Stack {
        let lab = Lab::new(test);
        let backends: Vec<docker::Backend> = (1..=3)
            .map(|i| lab.backend(&format!("b{i}"), &[]))
            .collect();
        let peers: Vec<String> = backends.iter().map(|b| b.addr.clone()).collect();
        let nginx = lab.nginx(&[
            ("/etc/deep_sched/nginx.conf", nginx_conf(&peers)),
            (POLICY, gone_peer_policy(&peers, "v0", 1).to_string()),
        ]);
        // Ready when every backend answers through nginx.
        let ready = wait_for(Duration::from_secs(20), || {
            (0..30).all(|_| nginx.get(READ).status == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "stack not ready in 20 s:\n{}",
            nginx.logs()
        );
        Stack {
            nginx,
            backends,
            peers,
            lab,
        }
    }

    fn reload(&self) {
        let out = self.nginx.exec(&["nginx", "-s", "reload"]);
        assert!(out.ok, "nginx -s reload: {}", out.stderr);
    }
}

/// The status once the agent has decided at least once (the first decision
/// comes two intervals after the workers start: the first tick only takes
/// the baseline).
fn after_first_decision(n: &NginxContainer) -> Value {
    wait_for(Duration::from_secs(10), || {
        let st = n.status();
        (!agent(&st)["state"].is_null()).then_some(st)
    })
    .unwrap_or_else(|| panic!("no decision in 10 s:\n{}", n.logs()))
}

fn agent(st: &Value) -> &Value {
    &st["agents"][0]
}

fn peer_field(st: &Value, field: &str) -> Vec<u64> {
    agent(st)["upstreams"][0]["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no peers in status: {st}"))
        .iter()
        .map(|p| p[field].as_u64().unwrap_or_else(|| panic!("{field}: {p}")))
        .collect()
}

/// Traffic through the container is balanced as the policy says (state 0:
/// equal weights), the status page (JSON and Prometheus) answers with
/// counters that add up, workers are not root, the HEALTHCHECK passes.
#[test]
fn container_balances_and_reports_status() {
    with_docker(|| {
        let s = Stack::start("balance");
        let before = peer_field(&s.nginx.status(), "requestCounter");
        let mut seen = std::collections::BTreeMap::<String, u64>::new();
        for _ in 0..90 {
            let r = s.nginx.get(READ);
            assert_eq!(r.status, 200, "{r:?}");
            *seen
                .entry(r.header("X-Backend").unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        // Smooth weighted round robin over a shared zone: a third each.
        assert_eq!(
            seen.values().copied().collect::<Vec<_>>(),
            vec![30, 30, 30],
            "{seen:?}"
        );
        let st = after_first_decision(&s.nginx);
        assert_eq!(agent(&st)["mode"], "policy", "{st}");
        assert_eq!(agent(&st)["state"], 0, "{st}");
        assert_eq!(peer_field(&st, "weight"), vec![1, 1, 1], "{st}");
        let after = peer_field(&st, "requestCounter");
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(delta, vec![30, 30, 30], "status counters: {st}");
        let servers: Vec<&str> = agent(&st)["upstreams"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["server"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(servers, s.peers);

        let prom = s.nginx.get("/deep_sched?format=prometheus");
        assert_eq!(prom.status, 200, "{prom:?}");
        assert!(prom.body.contains("deep_sched"), "{}", prom.body);

        // Workers run as the image's unprivileged user (uid in /proc).
        let ps = s.nginx.exec(&[
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo \" uid=$(awk '/^Uid:/ {print $2}' $p/status)\"; done",
        ]);
        let workers: Vec<&str> = ps
            .stdout
            .lines()
            .filter(|l| l.contains("nginx: worker process"))
            .collect();
        assert_eq!(workers.len(), 2, "{}", ps.stdout);
        assert!(
            workers.iter().all(|l| !l.ends_with(" uid=0")),
            "{}",
            ps.stdout
        );

        // The image's HEALTHCHECK (every 5 s) reports healthy.
        let health = wait_for(Duration::from_secs(20), || {
            let h = docker::docker(&[
                "inspect",
                "-f",
                "{{.State.Health.Status}}",
                &s.nginx.container,
            ])
            .unwrap_or_default();
            (h.trim() == "healthy").then_some(())
        });
        assert!(health.is_some(), "HEALTHCHECK never healthy");
    });
}

/// Load around `fault` (applied to backend 3): no client sees an error, and
/// the agent takes "peer 3 gone" (weights 5,5,1) at one of the first two
/// decisions after the fault (counted in the sample log, not timed).
fn fault_under_load(test: &str, fault: impl FnOnce(&Stack)) {
    let s = Stack::start(test);
    let load = Load::start(s.nginx.addr, READ, 6, Duration::from_millis(2));
    load.wait_requests(200, Duration::from_secs(30));
    let st = after_first_decision(&s.nginx);
    assert_eq!(agent(&st)["state"], 0, "all serve before the fault: {st}");

    fault(&s);
    let seq_at_fault = agent(&s.nginx.status())["decisions"]
        .as_u64()
        .expect("decisions in status");
    // Four more decisions, then look at what they did.
    let decided = wait_for(Duration::from_secs(20), || {
        let d = agent(&s.nginx.status())["decisions"].as_u64()?;
        (d >= seq_at_fault + 4).then_some(())
    });
    assert!(decided.is_some(), "decisions stopped:\n{}", s.nginx.logs());
    load.wait_requests(200, Duration::from_secs(30));
    let summary = load.stop();

    let samples = s.nginx.samples(SAMPLES);
    let after: Vec<&Value> = samples
        .iter()
        .filter(|r| r["seq"].as_u64().is_some_and(|q| q > seq_at_fault))
        .collect();
    let moved = after
        .iter()
        .find(|r| r["weights"] == json!([[5, 5, 1]]))
        .unwrap_or_else(|| {
            panic!(
                "weight never moved away from b3 after decision {seq_at_fault}: {} records, {} after it; last: {:?}",
                samples.len(),
                after.len(),
                samples.last()
            )
        });
    let lag = moved["seq"].as_u64().unwrap() - seq_at_fault;
    eprintln!(
        "{test}: {} ok, {} failed; weights (5,5,1) at decision {lag} after the fault; per backend {:?}",
        summary.ok,
        summary.failed.len(),
        summary.by_backend
    );
    assert!(lag <= 2, "weight moved {lag} decisions after the fault");
    assert!(
        summary.failed.is_empty(),
        "client-visible errors: {:?}\n{}",
        summary.failed,
        s.nginx.logs()
    );
}

/// `docker stop` of a backend under load.
#[test]
fn stopped_backend_costs_no_request_and_loses_weight() {
    with_docker(|| {
        fault_under_load("stop", |s| {
            docker::must(&["stop", "-t", "1", &s.backends[2].container]);
        })
    });
}

/// A backend cut off the network (`docker network disconnect`: connections
/// hang rather than refuse): the short timeouts and retries hide it.
#[test]
fn cut_off_backend_costs_no_request_and_loses_weight() {
    with_docker(|| {
        fault_under_load("cut", |s| {
            docker::must(&[
                "network",
                "disconnect",
                &s.lab.network,
                &s.backends[2].container,
            ]);
        })
    });
}

/// The policy in force according to the status page (its `created` tag).
fn policy_tag(n: &NginxContainer) -> String {
    agent(&n.status())["policy"]["provenance"]["created"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Five policy swaps with `nginx -s reload` under load: no failed request,
/// each new policy in force. Then a bad policy: `nginx -t` and the reload
/// refuse it naming the file, the last good policy keeps serving.
#[test]
fn policy_reloads_under_load_and_bad_policy_refused() {
    with_docker(|| {
        let s = Stack::start("reload");
        let load = Load::start(s.nginx.addr, READ, 4, Duration::from_millis(2));
        for i in 1..=5u32 {
            let tag = format!("v{i}");
            s.nginx
                .put(POLICY, &gone_peer_policy(&s.peers, &tag, i).to_string());
            s.reload();
            let swapped = wait_for(Duration::from_secs(10), || {
                (policy_tag(&s.nginx) == tag).then_some(())
            });
            assert!(
                swapped.is_some(),
                "policy {tag} not in force:\n{}",
                s.nginx.logs()
            );
            load.wait_requests(100, Duration::from_secs(30));
        }
        let weights = wait_for(Duration::from_secs(10), || {
            let w = peer_field(&s.nginx.status(), "weight");
            (w == vec![5, 5, 5]).then_some(w)
        });
        assert!(weights.is_some(), "v5's weights not applied");

        // Truncated JSON: `nginx -t` and `nginx -s reload` (which reads the
        // configuration before signalling) refuse it, naming the file.
        let good = gone_peer_policy(&s.peers, "v5", 5).to_string();
        s.nginx.put(POLICY, &good[..good.len() / 2]);
        for cmd in [&["nginx", "-t"][..], &["nginx", "-s", "reload"][..]] {
            let out = s.nginx.exec(cmd);
            assert!(!out.ok, "{cmd:?} accepted a truncated policy");
            assert!(
                out.stderr.contains("backend.json") && out.stderr.contains("[emerg]"),
                "{cmd:?}: {}",
                out.stderr
            );
        }
        // SIGHUP straight to the master (what a supervisor would send): it
        // refuses the new configuration, logs why, and keeps its workers.
        docker::must(&["kill", "--signal", "HUP", &s.nginx.container]);
        let refused = wait_for(Duration::from_secs(10), || {
            let logs = s.nginx.logs();
            logs.lines()
                .filter(|l| !l.starts_with("nginx: "))
                .find(|l| l.contains("[emerg]") && l.contains("backend.json"))
                .map(str::to_owned)
        });
        let refused = refused.unwrap_or_else(|| {
            panic!(
                "refused reload not logged with the file:\n{}",
                s.nginx.logs()
            )
        });
        eprintln!("refused reload: {refused}");
        load.wait_requests(200, Duration::from_secs(30));
        assert_eq!(policy_tag(&s.nginx), "v5", "the last good policy serves");
        let summary = load.stop();
        eprintln!(
            "reloads: {} ok, {} failed",
            summary.ok,
            summary.failed.len()
        );
        assert!(summary.ok >= 700, "traffic went on: {summary:?}");
        assert!(summary.failed.is_empty(), "failed: {:?}", summary.failed);
    });
}

/// `compose.yaml` is a valid Compose file for whichever Compose this
/// machine has (`docker compose` or Debian's `docker-compose`), and it
/// publishes nginx on 127.0.0.1 only.
#[test]
fn compose_file_is_valid_and_local_only() {
    with_docker(|| {
        let file = harness::root().join("compose.yaml");
        let file = file.to_str().expect("UTF-8 path");
        let attempts: [(&str, Vec<&str>); 2] = [
            ("docker", vec!["compose", "-f", file, "config"]),
            ("docker-compose", vec!["-f", file, "config"]),
        ];
        let config = attempts
            .iter()
            .find_map(|(program, args)| {
                docker::run_bounded(program, args, Duration::from_secs(30))
                    .ok()
                    .filter(|o| o.ok)
            })
            .map(|o| o.stdout);
        let Some(config) = config else {
            eprintln!("skipped: neither `docker compose` nor `docker-compose` works here");
            return;
        };
        for service in ["nginx:", "b1:", "b2:", "b3:", "load:"] {
            assert!(config.contains(service), "{service} missing:\n{config}");
        }
        // Short syntax (docker-compose 1.x prints `- 127.0.0.1:8080:8080/tcp`)
        // or long syntax (`docker compose` prints `published:` + `host_ip:`).
        let short: Vec<&str> = config
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("- ") && l.ends_with("/tcp"))
            .collect();
        let published = config.matches("published:").count();
        let local = config.matches("host_ip: 127.0.0.1").count();
        assert!(
            short.len() + published == 1,
            "one published port (nginx):\n{config}"
        );
        assert!(
            short.iter().all(|l| l.starts_with("- 127.0.0.1:")) && local == published,
            "a port published beyond 127.0.0.1:\n{config}"
        );
    });
}

/// The compose subnet (fixed: the policy names peers by address).
const COMPOSE_SUBNET: &str = "10.213.47.0/24";

/// The compose stack the way docs/containers.md brings it up, with every
/// Compose this machine has: `scripts/container-base.sh`, then
/// `docker-compose up -d --build` from the repository root (under a project
/// name, image tag and published port of the test's own, so nothing of a
/// stack of yours is touched). The image tag does not exist before, as on a
/// fresh machine: `up` must build it, for every service, without trying to
/// pull it (it is on no registry). Then nginx becomes healthy, answers 60
/// requests through the three backends, and the status page shows the three
/// peers with counts. `down -v` runs in every case (a guard).
#[test]
fn compose_stack_comes_up_as_documented() {
    with_docker(|| {
        let clis = docker::compose_clis();
        if clis.is_empty() {
            eprintln!("skipped: neither `docker-compose` nor `docker compose` works here");
            return;
        }
        // The documented first step (build/ exists, or the test skipped).
        let base = harness::root().join("scripts/container-base.sh");
        let out = docker::run_bounded(
            base.to_str().expect("UTF-8 path"),
            &[],
            Duration::from_secs(600),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.ok,
            "scripts/container-base.sh failed:\n{}{}",
            out.stdout, out.stderr
        );
        let taken = docker::networks_with_subnet(COMPOSE_SUBNET);
        assert!(
            taken.is_empty(),
            "compose.yaml's subnet {COMPOSE_SUBNET} is taken by network(s) {taken:?} \
             (a compose stack still up? `docker-compose down` it first)"
        );
        for cli in clis {
            compose_up_as_documented(cli);
        }
    });
}

fn compose_up_as_documented(cli: docker::ComposeCli) {
    let name = cli.name();
    let p = docker::ComposeProject::new(cli, "up", harness::free_port());
    assert!(
        docker::docker(&["image", "inspect", &p.image]).is_err(),
        "{} exists before `up`",
        p.image
    );
    let t0 = std::time::Instant::now();
    let up = p.run(&["up", "-d", "--build"], Duration::from_secs(300));
    let log = format!("{}{}", up.stdout, up.stderr);
    assert!(up.ok, "{name} up -d --build failed:\n{log}");
    // Built, not pulled: no service may have asked a registry for the image.
    assert!(
        !log.contains("Pulling"),
        "{name} up -d --build tried to pull:\n{log}"
    );
    assert!(
        docker::docker(&["image", "inspect", &p.image]).is_ok(),
        "{name} up did not build {}:\n{log}",
        p.image
    );
    let up_s = t0.elapsed().as_secs_f64();

    // Every service runs, from the image just built.
    for service in ["nginx", "b1", "b2", "b3", "load"] {
        let id = p.container(service);
        let state = docker::must(&["inspect", "-f", "{{.State.Running}} {{.Config.Image}}", &id]);
        assert_eq!(
            state.trim(),
            format!("true {}", p.image),
            "{name}: service {service}"
        );
    }
    // nginx's HEALTHCHECK (every 5 s) says healthy.
    let nginx = p.container("nginx");
    let healthy = wait_for(Duration::from_secs(60), || {
        let h = docker::docker(&["inspect", "-f", "{{.State.Health.Status}}", &nginx])
            .unwrap_or_default();
        (h.trim() == "healthy").then_some(())
    });
    let logs = || {
        docker::run_bounded("docker", &["logs", &nginx], Duration::from_secs(30))
            .map(|o| o.stdout + &o.stderr)
            .unwrap_or_else(|e| e)
    };
    assert!(
        healthy.is_some(),
        "{name}: nginx never healthy:\n{}",
        logs()
    );
    let health_s = t0.elapsed().as_secs_f64();
    // Published on 127.0.0.1 only, on the port DEEP_SCHED_PORT asked for.
    let ports = docker::must(&["port", &nginx, "8080/tcp"]);
    assert_eq!(
        ports.trim(),
        format!("127.0.0.1:{}", p.port),
        "{name}: published ports"
    );

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.port));
    let status = || {
        let r = harness::http_get(addr, "/deep_sched");
        assert_eq!(r.status, 200, "{name}: status page: {r:?}");
        serde_json::from_str::<Value>(&r.body)
            .unwrap_or_else(|e| panic!("{name}: status is not JSON ({e}): {}", r.body))
    };
    let before: u64 = peer_field(&status(), "requestCounter").iter().sum();
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..60 {
        let r = harness::http_get(addr, READ);
        let key = match r.header("X-Backend") {
            Some(b) if r.status == 200 => b.to_owned(),
            _ => format!("status {}: {}", r.status, r.body.trim()),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    assert!(
        seen.keys()
            .all(|k| ["b1", "b2", "b3"].contains(&k.as_str())),
        "{name}: not all 60 answered by a backend: {seen:?}\n{}",
        logs()
    );
    let st = status();
    let servers: Vec<&str> = agent(&st)["upstreams"][0]["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no peers: {st}"))
        .iter()
        .map(|p| p["server"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        servers,
        [
            "10.213.47.11:8080",
            "10.213.47.12:8080",
            "10.213.47.13:8080"
        ],
        "{name}: {st}"
    );
    let counts = peer_field(&st, "requestCounter");
    // Ours and the `load` service's (150 req/s) requests.
    assert!(
        counts.iter().all(|&c| c > 0) && counts.iter().sum::<u64>() >= before + 60,
        "{name}: request counters {counts:?} (before: {before} in all): {st}"
    );
    eprintln!(
        "{name}: up -d --build {up_s:.1} s, healthy at {health_s:.1} s; 60 answered {seen:?}; \
         status counters {counts:?}"
    );
    let t1 = std::time::Instant::now();
    p.down().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{name}: down -v {:.1} s", t1.elapsed().as_secs_f64());
}
