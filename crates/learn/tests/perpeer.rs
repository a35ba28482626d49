//! Per-peer policies learned from sample logs (issue #13 items 1, 2, 4):
//! a policy learned with the third peer weak avoids the first peer when the
//! first is the weak one; too little data keeps the baseline; a state
//! changes only to a multiplier estimated above the baseline.

use std::path::PathBuf;
use std::sync::Arc;

use deep_sched_core::counters::PeerCounters;
use deep_sched_core::decision::{Decider, Mode};
use deep_sched_core::perpeer::PerPeerPolicy;
use deep_sched_core::samples::SampleRecord;
use deep_sched_learn::learn::LearnOptions;
use deep_sched_learn::perpeer::{learn_per_peer, BASELINE, MULTIPLIERS};
use deep_sched_learn::synth::{slow_phase, synth_with, PEERS};
use rand::SeedableRng;

fn log(dir: &tempfile::TempDir, name: &str, records: usize, phase: usize, slow: usize) -> PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    synth_with(records, 7, phase, slow, &mut f).unwrap();
    path
}

fn read(path: &PathBuf) -> Vec<SampleRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn learned_with_the_third_peer_weak_it_avoids_the_first_when_the_first_is_weak() {
    let dir = tempfile::tempdir().unwrap();
    let train = log(&dir, "train.jsonl", 1200, 40, 2);
    let learned = learn_per_peer(&[train], &LearnOptions::default(), 4).unwrap();
    let text = serde_json::to_string(&learned.policy).unwrap();
    let policy = Arc::new(PerPeerPolicy::from_json_str(&text, "learned").unwrap());
    assert!(
        learned.policy.multipliers.iter().any(|&m| m < 1.0),
        "some state lowers a peer: {}",
        learned.summary
    );

    // Served on a log where peer 1 is the one that turns slow.
    let serve = log(&dir, "serve.jsonl", 400, 40, 0);
    let mut decider = Decider::new(
        Mode::PerPeer {
            policy,
            epsilon: 0.0,
        },
        "test",
        vec![(
            "backend".into(),
            PEERS.iter().map(|s| s.to_string()).collect(),
        )],
        vec![vec![1, 1, 1]],
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let zero = vec![vec![PeerCounters::default(); 3]];
    let (mut slow_share, mut slow_n, mut fast_share, mut fast_n) = (0.0, 0, 0.0, 0);
    for (t, r) in read(&serve).iter().enumerate() {
        // Skip the first intervals of a phase (the queue of the weights
        // explored there is still draining).
        if t % 40 < 3 {
            continue;
        }
        let x = decider.decide(
            &zero,
            &r.deltas(),
            1000,
            &r.weights_in_force(),
            1,
            t as u64,
            &mut rng,
        );
        let w = &x.weights[0];
        let share = f64::from(w[0]) / f64::from(w.iter().sum::<u32>());
        if slow_phase(t, 40) {
            slow_share += share;
            slow_n += 1;
        } else {
            fast_share += share;
            fast_n += 1;
        }
    }
    let (slow_share, fast_share) = (slow_share / slow_n as f64, fast_share / fast_n as f64);
    assert!(
        slow_share < 0.2,
        "peer 1 slow: mean share {slow_share:.3} (fast phases {fast_share:.3})\n{}",
        learned.summary
    );
    assert!(
        slow_share < fast_share / 2.0,
        "{slow_share} vs {fast_share}"
    );
}

#[test]
fn a_handful_of_samples_keeps_the_baseline_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    // 30 one-second intervals with the slow peer in every other 5.
    let few = log(&dir, "few.jsonl", 30, 5, 2);
    let learned = learn_per_peer(&[few], &LearnOptions::default(), 4).unwrap();
    assert!(
        learned.policy.multipliers.iter().all(|&m| m == 1.0),
        "{}",
        learned.summary
    );
    assert!(learned.summary.contains("kept"), "{}", learned.summary);
    // Fewer rows than two states need: refused with the reason.
    let fewer = log(&dir, "fewer.jsonl", 12, 5, 2);
    let e = learn_per_peer(&[fewer], &LearnOptions::default(), 4).unwrap_err();
    assert!(e.to_string().contains("explore longer"), "{e}");
}

#[test]
fn a_state_changes_only_to_a_multiplier_estimated_above_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    for (seed_phase, records) in [(20, 600), (40, 1200), (10, 300)] {
        let train = log(&dir, "t.jsonl", records, seed_phase, 2);
        let learned = learn_per_peer(&[train], &LearnOptions::default(), 4).unwrap();
        for (s, d) in learned.decisions.iter().enumerate() {
            assert_eq!(learned.policy.multipliers[s], MULTIPLIERS[d.action]);
            if d.action != BASELINE {
                let (a, c) = d.candidate.unwrap();
                let b = d.baseline.unwrap();
                assert_eq!(a, d.action);
                assert!(c.value > b.value && c.low > b.high, "state {s}: {c} vs {b}");
            }
        }
    }
}
