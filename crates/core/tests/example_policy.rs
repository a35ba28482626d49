//! The shipped example policy (`policies/examples/three-peers.json`) does
//! what its states say when fed counters through the same [`Decider`] the
//! module runs: a slow or failing peer gets the small weight, a healthy
//! upstream stays balanced, an observation unlike any state takes the
//! default action. Controlled counters, no clock, no nginx.

use std::path::PathBuf;
use std::sync::Arc;

use deep_sched_core::counters::{latency_bucket, PeerCounters};
use deep_sched_core::decision::{Decider, Decision, Mode};
use deep_sched_core::policy::Policy;
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn policy() -> Arc<Policy> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies/examples/three-peers.json");
    Arc::new(Policy::load(path).unwrap_or_else(|e| panic!("{e}")))
}

/// One peer's interval: `n` tries at `ms` each, `errors` of them 5xx.
fn peer(n: u64, ms: u64, errors: u64) -> PeerCounters {
    let mut c = PeerCounters {
        requests: n,
        response_msec: n * ms,
        ..PeerCounters::default()
    };
    c.responses = [0, n - errors, 0, 0, errors];
    c.latency_hist[latency_bucket(ms)] = n;
    c
}

/// Decides on one 2 s interval whose counts are `peers`, from zero.
fn decide(peers: [PeerCounters; 3]) -> Decision {
    let policy = policy();
    let shape = policy.shape().clone();
    let mut decider = Decider::new(
        Mode::Policy {
            policy,
            epsilon: 0.0,
        },
        "example",
        shape
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), u.peers.clone()))
            .collect(),
        vec![vec![1, 1, 1]],
    );
    let zero = vec![vec![PeerCounters::default(); 3]];
    decider.decide(
        &zero,
        &[peers.to_vec()],
        2000,
        &[vec![1, 1, 1]],
        1,
        1,
        &mut SmallRng::seed_from_u64(1),
    )
}

#[test]
fn the_example_names_the_slow_or_failing_peer() {
    let healthy = peer(200, 30, 0);
    let slow = peer(200, 150, 0);
    let failing = peer(200, 30, 100);
    // (counts, state, weights) for each situation the example knows.
    let cases = [
        ("all healthy", [healthy, healthy, healthy], 0, [1, 1, 1]),
        ("peer 3 slow", [healthy, healthy, slow], 1, [5, 5, 1]),
        ("peer 1 slow", [slow, healthy, healthy], 2, [1, 5, 5]),
        ("peer 2 slow", [healthy, slow, healthy], 3, [5, 1, 5]),
        ("peer 3 failing", [healthy, healthy, failing], 4, [5, 5, 1]),
    ];
    let p = policy();
    for (name, counts, state, weights) in cases {
        let d = decide(counts);
        assert!(!d.ood, "{name}: log-likelihood {:?}", d.log_likelihood);
        assert_eq!(d.state, Some(state), "{name}");
        assert_eq!(d.weights, vec![weights.to_vec()], "{name}");
        assert_eq!(d.action, Some(p.action_for(state)), "{name}");
        assert!(!d.explored, "{name}");
    }
    assert_eq!(
        p.scaling(4),
        Some("add"),
        "a failing peer asks for a replica"
    );
}

#[test]
fn the_example_falls_back_to_balanced_weights_far_from_its_states() {
    // Every peer at 5 s: no state is near; the default action applies.
    let far = decide([peer(200, 5000, 0); 3]);
    assert!(far.ood, "log-likelihood {:?}", far.log_likelihood);
    assert_eq!(far.action, Some(policy().default_action()));
    assert_eq!(far.weights, vec![vec![1, 1, 1]]);
    // No traffic at all: every p95 is 0, far below every state's.
    let idle = decide([PeerCounters::default(); 3]);
    assert!(idle.ood, "log-likelihood {:?}", idle.log_likelihood);
    assert_eq!(idle.weights, vec![vec![1, 1, 1]]);
}
