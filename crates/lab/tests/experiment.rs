//! The experiment runner against a real nginx (nginx's own balancers only).
//!
//! nginx is `$DEEP_SCHED_NGINX`, else `build/sbin/nginx`, else the one
//! nginx-sys built under `target/`. Without any, the tests say so and pass,
//! except under CI (`CI` set), where a missing nginx is a failure.

use std::path::PathBuf;
use std::time::Duration;

use deep_sched_lab::experiment::{run_once, ExperimentError, RunResult, Scenario, Settings};
use deep_sched_lab::nginx::Balancer;

fn nginx() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DEEP_SCHED_NGINX") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = root.join("build/sbin/nginx");
    if built.is_file() {
        return Some(built);
    }
    for profile in ["release", "debug"] {
        let dir = root.join("target").join(profile).join("build");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let candidate = e.path().join("out/objs/nginx");
            if e.file_name().to_string_lossy().starts_with("nginx-sys-") && candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

fn settings(tag: &str) -> Option<(Settings, tempdir::Dir)> {
    let Some(nginx) = nginx() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no nginx: run scripts/build.sh or set DEEP_SCHED_NGINX"
        );
        eprintln!("no nginx found: skipping {tag}");
        return None;
    };
    let work = tempdir::Dir::new(tag);
    Some((
        Settings {
            nginx: std::fs::canonicalize(nginx).unwrap(),
            module: None,
            learner: None,
            duration: Duration::from_secs(3),
            explore: Duration::from_secs(3),
            explore_p2c: true,
            explore_weights: vec![1, 3],
            explore_interval_ms: deep_sched_lab::experiment::EXPLORE_INTERVAL_MS,
            policy: None,
            reps: 1,
            worker_processes: 1,
            work_dir: work.0.clone(),
            results_dir: work.0.join("results"),
            seed: 5,
            only: Vec::new(),
            learn_args: Vec::new(),
        },
        work,
    ))
}

/// One run of `balancer` in scenario `id` with the test settings; `None`
/// without an nginx (outside CI).
fn run(tag: &str, id: &str, balancer: Balancer) -> Option<Result<RunResult, ExperimentError>> {
    let (settings, _work) = settings(tag)?;
    let scenario = Scenario::by_id(id).unwrap();
    Some(run_once(
        &scenario,
        &settings,
        &balancer,
        0,
        settings.duration,
        &[],
    ))
}

/// A scratch directory removed on drop (no extra crate for one test file).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("lab-test-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn round_robin_through_nginx_spreads_evenly_and_measures_the_floor() {
    let Some(r) = run("rr", "S1", Balancer::RoundRobin) else {
        return;
    };
    let r = r.unwrap();
    let s1 = Scenario::by_id("S1").unwrap();
    assert_eq!(r.load.total.errors.total(), 0, "{:?}", r.load.total.errors);
    let asked = 0.7 * s1.capacity_rps();
    assert!(
        (r.load.total.rps / asked - 1.0).abs() < 0.1,
        "{} req/s",
        r.load.total.rps
    );
    for (peer, share) in r.shares() {
        assert!((share - 1.0 / 3.0).abs() < 0.02, "{peer}: {share}");
    }
    // exponential 10 ms: p99 of the service alone is 10 ln 100 ≈ 46 ms (a
    // timer never fires early; a busy machine may make it fire late)
    assert!(
        r.floor.p99_ms > 46.05 * 0.8 && r.floor.p99_ms < 46.05 * 1.5,
        "{:?}",
        r.floor
    );
    assert!(r.load.total.latency.p99_ms >= r.floor.p99_ms * 0.9);
}

#[test]
fn a_dead_peer_stops_getting_traffic_and_nginx_retries_elsewhere() {
    let Some(r) = run("dead", "S4", Balancer::LeastConn) else {
        return;
    };
    let r = r.unwrap();
    let b3 = r.shares()["b3"];
    // b3 dies at 40 % of the run: it gets well under a third overall
    assert!(b3 < 0.25, "b3 share {b3}");
    assert!(b3 > 0.05, "b3 share {b3}: it was alive for 40 % of the run");
    // requests at b3 when it died may fail; the rest are retried
    assert!(
        r.load.total.errors.total() < r.load.total.sent / 100,
        "{:?}",
        r.load.total.errors
    );
}

#[test]
fn one_pool_serves_everything_from_one_backend_with_every_worker() {
    let Some(r) = run("pool", "S5", Balancer::OnePool) else {
        return;
    };
    let r = r.unwrap();
    assert_eq!(r.load.total.errors.total(), 0, "{:?}", r.load.total.errors);
    assert_eq!(r.backends.len(), 1);
    assert_eq!(r.backends[0].backend, "pool");
    assert_eq!(r.shares()["pool"], 1.0);
    // all three request types went through their own upstream to it
    assert_eq!(r.load.types.len(), 3, "{:?}", r.load.types.keys());
    assert!(r.load.total.ok > 0 && r.backends[0].count >= r.load.total.ok);
    assert_eq!(
        r.backends[0].endpoints.len(),
        3,
        "{:?}",
        r.backends[0].endpoints
    );
    // a scenario without a one-pool reference refuses the run by name
    let err = run("pool-s4", "S4", Balancer::OnePool)
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("S4 has no one-pool reference"), "{err}");
}

#[test]
fn a_generated_scenario_runs_like_the_lab_s_own() {
    // tuning seed 3: 5 peers (10/7/7/12/2), exponential, peer 2 degrading
    // to 3x between 30% and 75% of the run, constant load, three types
    let g = deep_sched_lab::generate::generate(3);
    let Some(r) = run("generated", "G3", Balancer::LeastConn) else {
        return;
    };
    let r = r.unwrap();
    assert_eq!(r.backends.len(), g.peers.len());
    assert_eq!(r.load.total.errors.total(), 0, "{:?}", r.load.total.errors);
    assert!(
        (r.load.total.rps / g.offered_rps - 1.0).abs() < 0.1,
        "{} req/s for {} offered",
        r.load.total.rps,
        g.offered_rps
    );
    assert_eq!(r.load.types.len(), 3, "{:?}", r.load.types.keys());
    // the degrading peer serves slower on average: ≈ 1.95x over the run
    let affected = g.affected.unwrap().peer;
    let p50 = |i: usize| r.backends[i].service.p50_ms;
    let others = (0..g.peers.len()).filter(|&i| i != affected);
    for i in others {
        assert!(
            p50(affected) > 1.3 * p50(i),
            "degrading b{} p50 {} vs b{} {}",
            affected + 1,
            p50(affected),
            i + 1,
            p50(i)
        );
    }
}
