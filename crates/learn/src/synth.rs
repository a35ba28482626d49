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

/// Writes `records` JSON lines (peer 3 is the one that turns slow).
pub fn synth(records: usize, seed: u64, phase: usize, out: &mut impl Write) -> std::io::Result<()> {
    synth_with(records, seed, phase, 2, out)
}

/// [`synth`] with peer `slow` (0-based) the one that turns slow.
pub fn synth_with(
    records: usize,
    seed: u64,
    phase: usize,
    slow: usize,
    out: &mut impl Write,
) -> std::io::Result<()> {
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
            let service = if p == slow && slow_phase(t, phase) {
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

/// A peer of [`queueing_observations`]: an M/M/c FIFO queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueingPeer {
    /// Servers `c`.
    pub workers: usize,
    /// Mean service time `S`, ms.
    pub service_ms: f64,
    /// σ of `ln` service time for a log-normal service (mean `S` kept);
    /// 0: exponential (M/M/c).
    pub lognormal_sigma: f64,
}

impl QueueingPeer {
    /// `c / S`, requests per second.
    pub fn capacity_rps(&self) -> f64 {
        self.workers as f64 * 1000.0 / self.service_ms
    }
}

/// Intervals of one upstream over `peers`, each an exact event-driven
/// simulation of an M/M/c FIFO queue: Poisson arrivals, `c` servers,
/// exponential (or log-normal, M/G/c) service of mean `S`; an arrival
/// starts at
/// `max(arrival, earliest free server)`. The queue carries over from one
/// interval to the next. In each interval every peer gets its own arrival
/// rate, `u × c/S` with `u` drawn uniformly from `utilisation` (the
/// exploration that makes capacity visible); a peer with `utilisation`
/// `(0, 0)` gets no traffic. Requests are counted in the interval in which
/// they complete, with their response time rounded to whole ms, as nginx
/// counts them.
pub fn queueing_observations(
    peers: &[QueueingPeer],
    intervals: usize,
    interval_ms: u64,
    utilisation: &[(f64, f64)],
    seed: u64,
) -> Vec<crate::reader::Observation> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t_len = interval_ms as f64;
    let horizon = intervals as f64 * t_len;
    let mut counters = vec![vec![PeerCounters::default(); peers.len()]; intervals];
    for (p, peer) in peers.iter().enumerate() {
        let (lo, hi) = utilisation.get(p).copied().unwrap_or((0.0, 0.0));
        let exp = Exp::new(1.0 / peer.service_ms).expect("positive service time");
        let sigma = peer.lognormal_sigma;
        let lognormal = (sigma > 0.0).then(|| {
            rand_distr::LogNormal::new(peer.service_ms.ln() - sigma * sigma / 2.0, sigma)
                .expect("finite sigma")
        });
        let service_ms = |rng: &mut ChaCha8Rng| match &lognormal {
            Some(d) => d.sample(rng),
            None => exp.sample(rng),
        };
        // server free times (ms), as integer ns for the heap's order
        let mut free: BinaryHeap<Reverse<u64>> = (0..peer.workers).map(|_| Reverse(0)).collect();
        for i in 0..intervals {
            let u = if hi > lo { rng.gen_range(lo..hi) } else { lo };
            let rate_per_ms = u * peer.capacity_rps() / 1000.0;
            if rate_per_ms <= 0.0 {
                continue;
            }
            let gap = Exp::new(rate_per_ms).expect("positive rate");
            let mut t = i as f64 * t_len + gap.sample(&mut rng);
            while t < (i + 1) as f64 * t_len {
                let Reverse(f) = free.pop().expect("at least one server");
                let start = t.max(f as f64 / 1e6);
                let end = start + service_ms(&mut rng);
                free.push(Reverse((end * 1e6) as u64));
                if end < horizon {
                    let ms = (end - t).round() as u64;
                    let c = &mut counters[(end / t_len) as usize][p];
                    c.requests += 1;
                    c.response_msec += ms;
                    c.latency_hist[latency_bucket(ms)] += 1;
                    c.responses[1] += 1;
                }
                t += gap.sample(&mut rng);
            }
        }
    }
    let t0 = 1_700_000_000_000u64;
    counters
        .into_iter()
        .enumerate()
        .map(|(i, mut cs)| {
            for c in &mut cs {
                // Little's law: in flight = throughput × time inside
                c.inflight = (c.response_msec as f64 / t_len).round() as u64;
            }
            crate::reader::Observation {
                origin: format!("queueing:{}", i + 1),
                time_ms: t0 + (i as u64 + 1) * interval_ms,
                interval_ms,
                deltas: vec![cs],
                weights_in_force: vec![vec![1; peers.len()]],
                next_weights: Some(vec![vec![1; peers.len()]]),
                logged_features: None,
                choose: None,
                seq: None,
                dispatched_seq: None,
                dispatched: None,
            }
        })
        .collect()
}
