//! Capacity estimation on M/M/c queues simulated event by event, whose
//! true capacity `c / S` is known.

use deep_sched_learn::capacity::{capacity_weights, estimate, CapacityData, CapacityEstimate};
use deep_sched_learn::synth::{queueing_observations, QueueingPeer};

fn peer(workers: usize, service_ms: f64) -> QueueingPeer {
    QueueingPeer {
        workers,
        service_ms,
        lognormal_sigma: 0.0,
    }
}

fn lognormal(workers: usize, service_ms: f64, sigma: f64) -> QueueingPeer {
    QueueingPeer {
        lognormal_sigma: sigma,
        ..peer(workers, service_ms)
    }
}

fn estimates(
    peers: &[QueueingPeer],
    intervals: usize,
    utilisation: &[(f64, f64)],
    seed: u64,
) -> Vec<CapacityEstimate> {
    let mut data = CapacityData::default();
    for o in queueing_observations(peers, intervals, 1000, utilisation, seed) {
        data.push(&o);
    }
    data.estimates().remove(0)
}

#[test]
fn capacities_are_recovered_within_15_percent() {
    let peers = [
        peer(2, 10.0),
        peer(4, 20.0),
        peer(8, 10.0),
        peer(12, 5.0),
        peer(3, 15.0),
        peer(10, 8.0),
    ];
    let mut worst: f64 = 0.0;
    for seed in 1..=5 {
        let est = estimates(&peers, 300, &[(0.1, 0.9); 6], seed);
        for (p, e) in peers.iter().zip(&est) {
            let CapacityEstimate::Known {
                capacity_rps,
                interval_rps,
                workers,
                service_ms,
                ..
            } = e
            else {
                panic!("seed {seed}, {p:?}: {e:?}");
            };
            let err = capacity_rps / p.capacity_rps() - 1.0;
            eprintln!(
                "seed {seed} {p:?}: {capacity_rps:.0} req/s (true {:.0}, {err:+.3}), {workers} x {service_ms:.2} ms, 95% {:.0}-{:.0}",
                p.capacity_rps(),
                interval_rps.0,
                interval_rps.1
            );
            worst = worst.max(err.abs());
            assert!(err.abs() < 0.15, "seed {seed}, {p:?}: {e:?}");
        }
    }
    eprintln!("worst relative error {worst:.3}");
}

#[test]
fn a_peer_without_traffic_or_with_few_intervals_is_not_estimated() {
    let peers = [peer(8, 10.0), peer(8, 10.0)];
    // peer 2 gets nothing at all
    let est = estimates(&peers, 200, &[(0.1, 0.9), (0.0, 0.0)], 7);
    assert!(est[0].capacity_rps().is_some(), "{:?}", est[0]);
    match &est[1] {
        CapacityEstimate::Unknown {
            reason,
            highest_rps,
            intervals,
        } => {
            assert_eq!(*intervals, 0);
            assert_eq!(*highest_rps, None);
            assert!(reason.contains("0 intervals"), "{reason}");
        }
        e => panic!("estimated a peer without traffic: {e:?}"),
    }
    assert_eq!(capacity_weights(&est), None, "weights need every peer");
    // five intervals of a busy peer: too few
    let est = estimates(&peers[..1], 5, &[(0.1, 0.9)], 8);
    assert!(
        matches!(&est[0], CapacityEstimate::Unknown { reason, .. } if reason.contains("5 intervals")),
        "{:?}",
        est[0]
    );
    // and directly: nothing in, nothing out
    assert!(estimate(&[]).capacity_rps().is_none());
}

#[test]
fn a_peer_never_loaded_gets_no_number() {
    // 12 workers, 5 ms: capacity 2400 req/s, seen at 3-10% utilisation
    // only, where M/M/c latency hardly depends on c
    let est = estimates(&[peer(12, 5.0)], 200, &[(0.03, 0.1)], 9);
    match &est[0] {
        CapacityEstimate::Unknown {
            highest_rps: Some(top),
            reason,
            ..
        } => {
            assert!(*top <= 0.15 * 2400.0, "served {top} req/s");
            assert!(reason.contains("do not bound its parallelism"), "{reason}");
        }
        e => panic!("invented a capacity for a peer never loaded: {e:?}"),
    }
}

#[test]
fn weights_follow_capacity() {
    // capacities 400, 800 and 200 req/s: weights 2/7, 4/7, 1/7
    let peers = [peer(4, 10.0), peer(8, 10.0), peer(4, 20.0)];
    let est = estimates(&peers, 300, &[(0.1, 0.9); 3], 11);
    let w = capacity_weights(&est).unwrap_or_else(|| panic!("{est:?}"));
    for (got, want) in w.iter().zip([2.0 / 7.0, 4.0 / 7.0, 1.0 / 7.0]) {
        assert!((got / want - 1.0).abs() < 0.15, "{w:?}");
    }
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn a_peer_whose_speed_changes_is_not_given_one_capacity() {
    // the first half of the log at 8 x 10 ms (800 req/s), the second at
    // 8 x 50 ms (160 req/s): no one capacity explains both
    let fast = queueing_observations(&[peer(8, 10.0)], 150, 1000, &[(0.1, 0.9)], 12);
    let slow = queueing_observations(&[peer(8, 50.0)], 150, 1000, &[(0.1, 0.9)], 13);
    let mut data = CapacityData::default();
    for o in fast.iter().chain(&slow) {
        data.push(o);
    }
    // (it says so either as an inconsistency or as data that do not
    // bound the parallelism, depending on the fit)
    let e = &data.estimates()[0][0];
    assert!(
        matches!(e, CapacityEstimate::Unknown { reason, .. }
            if reason.contains("inconsistent") || reason.contains("speed changed")),
        "{e:?}"
    );
}

#[test]
fn log_normal_service_times_are_recovered_within_15_percent_too() {
    // M/G/c: the model assumes exponential service; log-normal with σ = 1
    // (coefficient of variation 1.31) queues more, which the fit absorbs
    // into S and c while keeping their ratio
    let peers = [
        lognormal(2, 10.0, 1.0),
        lognormal(4, 20.0, 1.0),
        lognormal(8, 10.0, 1.0),
        lognormal(12, 5.0, 1.0),
        lognormal(8, 10.0, 0.5),
    ];
    let mut worst: f64 = 0.0;
    for seed in 1..=3 {
        let est = estimates(&peers, 300, &[(0.1, 0.9); 5], seed);
        for (p, e) in peers.iter().zip(&est) {
            let cap = e.capacity_rps().unwrap_or_else(|| panic!("{p:?}: {e:?}"));
            let err = cap / p.capacity_rps() - 1.0;
            worst = worst.max(err.abs());
            assert!(err.abs() < 0.15, "seed {seed}, {p:?}: {e:?}");
        }
    }
    eprintln!("log-normal: worst relative error {worst:.3}");
}
