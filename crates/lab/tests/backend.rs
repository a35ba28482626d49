//! The backend emulator, driven over real sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use deep_sched_lab::backend::{spawn, BackendConfig, Degradation, HealthMode, Mode, ServiceTimes};
use deep_sched_lab::dist::Delay;

/// One request on a fresh connection: `(status, raw head, body)`.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

fn fixed(ms: f64) -> ServiceTimes {
    ServiceTimes::uniform(Delay::Fixed { ms })
}

#[test]
fn serves_the_three_endpoints_health_and_stats() {
    let b = spawn(BackendConfig {
        name: "b1".into(),
        service: fixed(1.0),
        ..BackendConfig::default()
    })
    .unwrap();
    for path in [
        "/wrk2-api/post/compose",
        "/wrk2-api/home-timeline/read",
        "/wrk2-api/user-timeline/read",
    ] {
        let (status, head, body) = get(b.addr(), path).unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(head.contains("x-backend: b1"), "{head}");
        assert_eq!(body.len(), 256);
    }
    assert_eq!(get(b.addr(), "/health").unwrap().0, 200);
    assert_eq!(get(b.addr(), "/nope").unwrap().0, 404);
    let (status, _, body) = get(b.addr(), "/stats?reset=1").unwrap();
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["backend"], "b1");
    assert_eq!(stats["count"], 3);
    assert_eq!(stats["endpoints"]["compose"], 1);
    assert_eq!(stats["service"]["count"], 3);
    assert!(stats["service"]["p99_ms"].as_f64().unwrap() >= 1.0);
    // reset: the next read starts from zero
    assert_eq!(b.stats().count, 0);
}

#[test]
fn a_degrading_backend_serves_slower_after_its_ramp() {
    // ×4 from 400 ms after the start on (a step): 10 ms, then 40 ms
    let b = spawn(BackendConfig {
        service: fixed(10.0),
        degrade: Some(Degradation {
            factor: 4.0,
            start: Duration::from_millis(400),
            ramp: Duration::ZERO,
        }),
        ..BackendConfig::default()
    })
    .unwrap();
    let path = "/wrk2-api/home-timeline/read";
    assert_eq!(get(b.addr(), path).unwrap().0, 200);
    let before = b.control().take_stats().service.p99_ms;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(b.addr(), path).unwrap().0, 200);
    let after = b.stats().service.p99_ms;
    // timers only ever fire late: bounds from below, loose above
    assert!(
        (10.0..30.0).contains(&before),
        "before the ramp: {before} ms"
    );
    assert!((40.0..80.0).contains(&after), "after the ramp: {after} ms");
}

#[test]
fn bounded_workers_queue_in_fifo_order() {
    let b = spawn(BackendConfig {
        workers: 2,
        service: fixed(60.0),
        ..BackendConfig::default()
    })
    .unwrap();
    let addr = b.addr();
    let threads: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || get(addr, "/wrk2-api/home-timeline/read").unwrap().0))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let s = b.stats();
    assert_eq!(s.count, 6);
    // 6 requests, 2 workers, 60 ms each: the last pair waits two services.
    assert!(s.queueing.max_ms >= 2.0 * 60.0 * 0.99, "{:?}", s.queueing);
    assert!(s.service.p50_ms >= 60.0 * 0.99, "{:?}", s.service);
    assert_eq!((s.in_service, s.queued), (0, 0));
}

#[test]
fn slow_factor_multiplies_service_time() {
    let b = spawn(BackendConfig {
        service: fixed(5.0),
        ..BackendConfig::default()
    })
    .unwrap();
    b.set_slow(6.0);
    for _ in 0..3 {
        assert_eq!(
            get(b.addr(), "/wrk2-api/user-timeline/read").unwrap().0,
            200
        );
    }
    assert!(b.stats().service.p50_ms >= 30.0 * 0.99, "{:?}", b.stats());
}

#[test]
fn error_mode_answers_500() {
    let b = spawn(BackendConfig::default()).unwrap();
    b.set_mode(Mode::Error5xx(1.0));
    assert_eq!(get(b.addr(), "/wrk2-api/post/compose").unwrap().0, 500);
    assert_eq!(b.stats().errors_5xx, 1);
    b.set_mode(Mode::Normal);
    assert_eq!(get(b.addr(), "/wrk2-api/post/compose").unwrap().0, 200);
}

#[test]
fn refuse_mode_stops_listening_and_normal_rebinds_the_same_port() {
    let b = spawn(BackendConfig {
        service: fixed(1.0),
        ..BackendConfig::default()
    })
    .unwrap();
    assert_eq!(get(b.addr(), "/health").unwrap().0, 200);
    b.set_mode(Mode::Refuse);
    // the accept loop reacts asynchronously: poll a bounded number of times
    let mut refused = false;
    for _ in 0..100 {
        match TcpStream::connect_timeout(&b.addr(), Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(refused, "still accepting on {}", b.addr());
    b.set_mode(Mode::Normal);
    let mut back = false;
    for _ in 0..100 {
        if matches!(get(b.addr(), "/health"), Ok((200, _, _))) {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(back, "did not come back on {}", b.addr());
}

#[test]
fn drop_every_third_connection() {
    let b = spawn(BackendConfig {
        service: fixed(1.0),
        ..BackendConfig::default()
    })
    .unwrap();
    b.set_drop_every(Some(3));
    let outcomes: Vec<bool> = (0..9)
        .map(|_| matches!(get(b.addr(), "/health"), Ok((200, _, _))))
        .collect();
    assert_eq!(
        outcomes,
        [true, true, false, true, true, false, true, true, false]
    );
    assert_eq!(b.stats().dropped_connections, 3);
}

#[test]
fn hang_mode_never_answers() {
    let b = spawn(BackendConfig::default()).unwrap();
    b.set_mode(Mode::Hang);
    let mut s = TcpStream::connect(b.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    write!(
        s,
        "GET /wrk2-api/home-timeline/read HTTP/1.1\r\nHost: lab\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    assert_eq!(b.stats().hung, 1);
}

#[test]
fn control_endpoint_switches_modes_and_rejects_bad_values() {
    let b = spawn(BackendConfig::default()).unwrap();
    let (status, _, body) = get(b.addr(), "/control?mode=error&error_rate=1").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(b.control().mode(), Mode::Error5xx(1.0));
    let (status, _, body) = get(b.addr(), "/control?mode=sideways").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("mode=sideways"), "{body}");
}

#[test]
fn health_endpoint_answers_what_control_set() {
    let b = spawn(BackendConfig::default()).unwrap();
    assert_eq!(get(b.addr(), "/health").unwrap().0, 200);
    let (status, _, body) = get(b.addr(), "/control?health=503").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(b.addr(), "/health").unwrap().0, 503);
    // Requests are unaffected: only the health endpoint fails.
    assert_eq!(
        get(b.addr(), "/wrk2-api/home-timeline/read").unwrap().0,
        200
    );
    for bad in ["/control?health=99", "/control?health=sick"] {
        let (status, _, body) = get(b.addr(), bad).unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("health="), "{body}");
    }
    b.control().set_health(HealthMode::Hang);
    let mut s = TcpStream::connect(b.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    write!(s, "GET /health HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert!(s.read(&mut buf).is_err(), "a hung /health answers nothing");
    b.control().set_health(HealthMode::Status(200));
    assert_eq!(get(b.addr(), "/health").unwrap().0, 200);
    assert_eq!(b.control().health_requests(), 4);
}

#[test]
fn dropping_the_handle_stops_the_backend() {
    let b = spawn(BackendConfig::default()).unwrap();
    let addr = b.addr();
    drop(b);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}
