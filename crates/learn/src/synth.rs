//! A synthetic sample log in the module's exact format, for tests and
//! demos: three peers of equal capacity behind one upstream; every other
//! phase of `phase` intervals peer 3 is five times slower. Latency grows
//! with each peer's utilisation (`mean = s / (1 − ρ)`, M/M/1-like), so the
//! weights explored really change the outcome. The records are made by the
//! core's `Decider` in explore mode, as the module makes them.

use std::io::Write;

use deep_sched_core::counters::{latency_bucket, PeerCounters};
use deep_sched_core::decision::{Decider, Mode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};

/// The synthetic agent's peers.
pub const PEERS: [&str; 3] = ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"];

/// Whether peer 3 is slow at interval `t`.
pub fn slow_phase(t: usize, phase: usize) -> bool {
    (t / phase.max(1)) % 2 == 1
}

/// Writes `records` JSON lines.
pub fn synth(records: usize, seed: u64, phase: usize, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut decider = Decider::new(
        Mode::Explore {
            weights: vec![1, 3, 5],
        },
        "synth",
        vec![(
            "backend".into(),
            PEERS.iter().map(|s| s.to_string()).collect(),
        )],
        vec![vec![1, 1, 1]],
    )
    // Shares proportional to the weights below: a smooth round robin.
    .with_choose("wrr");
    let dt_ms = 1000u64;
    let rate = 600.0; // requests per second to the upstream
    let capacity = 8.0; // concurrent requests per peer
    let mut cum = vec![vec![PeerCounters::default(); 3]];
    let mut weights = vec![1u32, 1, 1];
    let t0 = 1_700_000_000_000u64;
    for t in 0..records {
        let prev = cum.clone();
        let total_w: u32 = weights.iter().sum();
        for p in 0..3 {
            let service = if p == 2 && slow_phase(t, phase) {
                50.0
            } else {
                10.0
            };
            let n =
                (rate * dt_ms as f64 / 1000.0 * weights[p] as f64 / total_w as f64).round() as u64;
            let rho = n as f64 * service / 1000.0 / capacity;
            let mean = service / (1.0 - rho).max(0.05);
            let error_share = if rho > 1.0 { (rho - 1.0) / rho } else { 0.0 };
            let c = &mut cum[0][p];
            let exp = Exp::new(1.0 / mean).expect("positive mean");
            for _ in 0..n {
                let ms = exp.sample(&mut rng).round() as u64;
                c.requests += 1;
                c.response_msec += ms;
                c.latency_hist[latency_bucket(ms)] += 1;
                if rng.gen::<f64>() < error_share {
                    c.responses[4] += 1;
                } else {
                    c.responses[1] += 1;
                }
                c.in_bytes += 512;
                c.out_bytes += 128;
            }
            // Little's law: requests in flight = arrival rate × time inside.
            c.inflight = (n as f64 * mean / dt_ms as f64).round() as u64;
        }
        let d = decider.decide(
            &prev,
            &cum,
            dt_ms,
            &[weights.clone()],
            t0 + (t as u64 + 1) * dt_ms,
            t as u64 + 1,
            &mut rng,
        );
        serde_json::to_writer(&mut *out, &d.sample)?;
        out.write_all(b"\n")?;
        weights = d.weights[0].clone();
    }
    Ok(())
}
