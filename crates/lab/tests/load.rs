//! The load generator against in-process backends on 127.0.0.1.

use std::time::Duration;

use deep_sched_lab::backend::{spawn, BackendConfig, Mode, ServiceTimes};
use deep_sched_lab::dist::Delay;
use deep_sched_lab::load::{run_blocking, LoadConfig};
use deep_sched_lab::schedule::LoadPlan;

fn paths() -> Vec<String> {
    [
        "/wrk2-api/post/compose",
        "/wrk2-api/home-timeline/read",
        "/wrk2-api/user-timeline/read",
    ]
    .map(String::from)
    .to_vec()
}

fn quiet(config: LoadConfig) -> LoadConfig {
    LoadConfig {
        progress: false,
        ..config
    }
}

#[test]
fn achieves_the_asked_rate_against_a_local_backend() {
    let b = spawn(BackendConfig {
        name: "fast".into(),
        workers: 256,
        service: ServiceTimes::uniform(Delay::Fixed { ms: 2.0 }),
        ..BackendConfig::default()
    })
    .unwrap();
    let asked = 600.0;
    let plan = LoadPlan::constant(asked, Duration::from_secs(4), &paths());
    let s = run_blocking(quiet(LoadConfig::new(format!("http://{}", b.addr()), plan))).unwrap();
    assert_eq!(s.total.errors.total(), 0, "{:?}", s.total.errors);
    assert!(
        (s.total.rps / asked - 1.0).abs() < 0.05,
        "asked {asked} rps, achieved {}",
        s.total.rps
    );
    assert_eq!(s.types.len(), 3);
    for (label, t) in &s.types {
        assert!(
            (t.rps / (asked / 3.0) - 1.0).abs() < 0.1,
            "{label}: {}",
            t.rps
        );
    }
    assert_eq!(s.peers.get("fast"), Some(&s.total.ok));
    assert_eq!(b.stats().count, s.total.ok);
    assert!(s.total.latency.p50_ms >= 2.0, "{:?}", s.total.latency);
    assert_eq!(s.timeline.len(), 4);
    assert_eq!(s.timeline.iter().map(|x| x.sent).sum::<u64>(), s.total.sent);
}

#[test]
fn latency_counts_from_the_intended_time_when_the_server_falls_behind() {
    // capacity 1 / 50 ms = 20 rps, asked 40 rps for 2 s: the queue grows, and
    // an open-loop generator must report it (a closed loop would see 50 ms).
    let b = spawn(BackendConfig {
        workers: 1,
        service: ServiceTimes::uniform(Delay::Fixed { ms: 50.0 }),
        ..BackendConfig::default()
    })
    .unwrap();
    let plan = LoadPlan::constant(
        40.0,
        Duration::from_secs(2),
        &["/wrk2-api/home-timeline/read".to_string()],
    );
    let s = run_blocking(quiet(LoadConfig::new(format!("http://{}", b.addr()), plan))).unwrap();
    assert_eq!(s.total.errors.total(), 0);
    assert!(s.total.latency.max_ms > 1000.0, "{:?}", s.total.latency);
    assert!(b.stats().queueing.max_ms > 500.0);
}

#[test]
fn classifies_errors_by_kind() {
    let plan = |rps| {
        LoadPlan::constant(
            rps,
            Duration::from_secs(1),
            &["/wrk2-api/home-timeline/read".to_string()],
        )
    };
    let b = spawn(BackendConfig::default()).unwrap();
    let target = format!("http://{}", b.addr());

    b.set_mode(Mode::Error5xx(1.0));
    let s = run_blocking(quiet(LoadConfig::new(&target, plan(50.0)))).unwrap();
    assert!(s.total.sent > 0);
    assert_eq!(s.total.errors.status_5xx, s.total.sent);

    b.set_mode(Mode::Hang);
    let s = run_blocking(quiet(LoadConfig {
        timeout: Duration::from_millis(200),
        ..LoadConfig::new(&target, plan(20.0))
    }))
    .unwrap();
    assert!(s.total.sent > 0);
    assert_eq!(s.total.errors.timeout, s.total.sent);

    let addr = b.addr();
    drop(b); // nothing listens there any more
    let s = run_blocking(quiet(LoadConfig::new(format!("http://{addr}"), plan(20.0)))).unwrap();
    assert!(s.total.sent > 0);
    assert_eq!(s.total.errors.connect, s.total.sent);
    assert_eq!(s.total.ok, 0);
}

#[test]
fn a_bad_target_is_refused_before_sending() {
    let plan = LoadPlan::constant(1.0, Duration::from_secs(1), &["/x".to_string()]);
    let e = run_blocking(quiet(LoadConfig::new("not a url", plan))).unwrap_err();
    assert!(e.to_string().contains("not a url"), "{e}");
}
