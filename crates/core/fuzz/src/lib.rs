//! What each fuzz target does with one input, shared by the targets and by
//! the regression test that replays kept inputs (`tests/regressions.rs`).
//! Every input must give `Ok` or a typed error: never a panic, an abort or
//! an endless loop.

use deep_sched_core::perpeer::{PeerObservation, PerPeerPolicy};
use deep_sched_core::policy::{LoadedPolicy, Policy};
use deep_sched_core::samples::SampleRecord;

/// `LoadedPolicy::from_json_str` on arbitrary bytes; a policy that
/// validates is then used as the module would: a table policy's every
/// state's action and the GMM scoring of a few feature vectors (zeros, each
/// component's mean, huge values), its upstreams matched by name (as
/// listed, reversed, one peer added); a per-peer policy's decision on pools
/// of ordinary and extreme peers.
pub fn policy_from_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match LoadedPolicy::from_json_str(text, "fuzz") {
        Ok(LoadedPolicy::Table(p)) => table_policy(&p),
        Ok(LoadedPolicy::PerPeer(p)) => per_peer_policy(&p),
        Err(_) => {}
    }
}

fn per_peer_policy(policy: &PerPeerPolicy) {
    let obs = |l: Option<f64>, o: f64, e: f64| PeerObservation {
        latency_ms: l,
        occupancy: o,
        error_rate: e,
    };
    let pools = [
        vec![obs(Some(5.0), 1.0, 0.0), obs(Some(50.0), 9.0, 0.1)],
        vec![obs(None, 0.0, 0.0)],
        vec![obs(Some(f64::MAX), f64::MAX, 1.0), obs(Some(0.0), 0.0, 0.0)],
    ];
    for pool in &pools {
        let bases = vec![1.0; pool.len()];
        let mut f = Vec::new();
        for d in policy.decide_pool(pool, &bases, &mut f) {
            assert!(d.state.is_none_or(|s| s < policy.states()));
            assert!(d.weight > 0.0 && !d.weight.is_nan(), "{d:?}");
        }
    }
    for u in &policy.shape().upstreams {
        let peers: Vec<&str> = u.peers.iter().map(String::as_str).collect();
        policy
            .check_upstream(&u.name, &peers)
            .expect("a policy matches its own upstreams");
    }
}

fn table_policy(policy: &Policy) {
    for s in 0..policy.states() {
        let a = policy.action_for(s);
        assert!(a < policy.actions().len(), "state {s} -> action {a}");
        let _ = policy.scaling(s);
    }
    assert!(policy.default_action() < policy.actions().len());
    let dim = policy.features().len();
    let gmm = policy.gmm();
    let mut sane = vec![vec![0.0; dim]];
    sane.extend(policy.to_document().gmm.means);
    for x in &sane {
        let (state, ll) = gmm.classify(x);
        assert!(state < gmm.k(), "state {state} of {}", gmm.k());
        assert!(!ll.is_nan(), "NaN log-likelihood at {x:?}");
    }
    // Far outside the training data: any state, but no panic.
    for v in [1e300, -1e300, f64::MAX] {
        let (state, _) = gmm.classify(&vec![v; dim]);
        assert!(state < gmm.k(), "state {state} of {}", gmm.k());
    }
    let shape = policy.shape();
    for u in &shape.upstreams {
        let peers: Vec<&str> = u.peers.iter().map(String::as_str).collect();
        let (_, m) = policy
            .check_upstream(&u.name, &peers)
            .expect("a policy matches its own upstreams");
        assert!(m.is_exact(), "{m:?}");
        // Reordered and one added: matched by name, never an error.
        let mut other: Vec<&str> = peers.iter().rev().copied().collect();
        other.push("fuzz.invalid:1");
        let (u_index, m) = policy
            .check_upstream(&u.name, &other)
            .expect("matched by name");
        assert!(m.missing.is_empty() && m.unknown.len() == usize::from(!peers.contains(&"fuzz.invalid:1")));
        for a in 0..policy.actions().len() {
            let ws = policy.weights_for(a, u_index, &m);
            assert_eq!(ws.len(), other.len());
            assert!(ws.iter().all(|&w| w >= 1));
        }
    }
}

/// One line of a sample log, as the learner reads it.
pub fn sample_record(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = serde_json::from_str::<SampleRecord>(line) else {
        return;
    };
    let deltas = record.deltas();
    let weights = record.weights_in_force();
    let shape = record.shape();
    assert_eq!(deltas.len(), record.upstreams.len());
    assert_eq!(weights.len(), shape.upstreams.len());
    // What it writes back, it reads again the same.
    let text = serde_json::to_string(&record).expect("serialise a parsed record");
    let again: SampleRecord = serde_json::from_str(&text).expect("re-read a written record");
    assert_eq!(again.upstreams, record.upstreams);
    assert_eq!(again.weights, record.weights);
}
