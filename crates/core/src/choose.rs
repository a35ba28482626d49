//! Per-request peer choice given the current weights. Pure and
//! allocation-free: the module calls these on every request.
//!
//! - [`SmoothWrr`]: nginx's smooth weighted round robin. Every pick adds
//!   each eligible peer's weight to its `current`, takes the largest, and
//!   subtracts the total from the winner; over `Σw` picks peer `i` is chosen
//!   exactly `wᵢ` times, evenly interleaved. (The module delegates to
//!   nginx's own implementation so that `max_fails` etc. stay nginx's; this
//!   one is the reference for tests and the lab's simulations.)
//! - [`Ewma`]: peak-sensitive, time-decayed latency average.
//! - [`p2c`]: the power of two choices (Mitzenmacher 2001) over
//!   weight-proportional draws: the policy sets the macro shares, the
//!   per-request choice absorbs bursts by preferring the peer with fewer
//!   requests in flight per unit of weight.

use rand::Rng;

/// What the per-request choice knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerLoad {
    /// Current weight (≥ 1).
    pub weight: u32,
    /// Requests in flight (all workers).
    pub inflight: u64,
    /// Recent response time, ms ([`ewma_update`]).
    pub latency_ewma_ms: f64,
    /// Not down, not failed, under `max_conns`, not tried yet.
    pub eligible: bool,
}

/// Smoothing factor of the latency average: each new sample has weight 0.2.
pub const EWMA_ALPHA: f64 = 0.2;

/// One step of an exponentially weighted moving average,
/// `m ← m + α·(x − m)`; the first sample (`m = 0`) is taken as is.
#[inline]
pub fn ewma_update(mean: f64, sample: f64) -> f64 {
    if mean <= 0.0 || !mean.is_finite() {
        sample
    } else {
        mean + EWMA_ALPHA * (sample - mean)
    }
}

/// A peak-sensitive exponentially weighted moving average of latency
/// (after Finagle's and Linkerd's "peak EWMA"): a sample above the average
/// is taken at once, so a peer that turns slow is avoided immediately; a
/// lower one is blended in with a weight that grows with the time since the
/// last sample,
///
/// ```text
/// m ← x                          if x > m (or no sample yet)
/// m ← w·m + (1 − w)·x,  w = exp(−Δt/τ)   otherwise
/// ```
///
/// A pure function of its inputs: the caller passes the clock.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Ewma {
    /// Current average, ms (0 before the first sample).
    value: f64,
    /// When the last sample was recorded, ms on the caller's clock.
    stamp_ms: u64,
}

impl Ewma {
    /// An average with no sample yet.
    pub const fn new() -> Ewma {
        Ewma {
            value: 0.0,
            stamp_ms: 0,
        }
    }

    /// Records `sample_ms` observed at `now_ms` with time constant
    /// `tau_ms` (> 0). Negative or non-finite samples are ignored; a clock
    /// that goes backwards counts as no time elapsed.
    pub fn observe(&mut self, sample_ms: f64, now_ms: u64, tau_ms: f64) {
        if !sample_ms.is_finite() || sample_ms < 0.0 {
            return;
        }
        if self.value <= 0.0 || sample_ms > self.value {
            self.value = sample_ms;
        } else {
            let dt = now_ms.saturating_sub(self.stamp_ms) as f64;
            let w = (-dt / tau_ms.max(f64::MIN_POSITIVE)).exp();
            self.value = w * self.value + (1.0 - w) * sample_ms;
        }
        self.stamp_ms = self.stamp_ms.max(now_ms);
    }

    /// The current average, ms (0 before the first sample).
    pub fn value(&self) -> f64 {
        self.value
    }
}

/// Draws an eligible peer with probability proportional to its weight.
fn weighted_draw<R: Rng + ?Sized>(peers: &[PeerLoad], total: u64, rng: &mut R) -> usize {
    let mut r = rng.gen_range(0..total);
    for (i, p) in peers.iter().enumerate() {
        if !p.eligible {
            continue;
        }
        let w = u64::from(p.weight.max(1));
        if r < w {
            return i;
        }
        r -= w;
    }
    // Unreachable when total is the eligible weight sum.
    peers.iter().rposition(|p| p.eligible).unwrap_or(0)
}

/// Two independent weighted draws; the winner has fewer requests in flight
/// per unit of weight (`inflight / weight`, compared exactly as
/// `inflightₐ·w_b < inflight_b·wₐ`), then the lower recent latency, then the
/// first draw. `None` when no peer is eligible.
pub fn p2c<R: Rng + ?Sized>(peers: &[PeerLoad], rng: &mut R) -> Option<usize> {
    let mut total = 0u64;
    let mut eligible = 0usize;
    let mut last = 0usize;
    for (i, p) in peers.iter().enumerate() {
        if p.eligible {
            total += u64::from(p.weight.max(1));
            eligible += 1;
            last = i;
        }
    }
    match eligible {
        0 => return None,
        1 => return Some(last),
        _ => {}
    }
    let a = weighted_draw(peers, total, rng);
    let b = weighted_draw(peers, total, rng);
    let (pa, pb) = (&peers[a], &peers[b]);
    let load_a = u128::from(pa.inflight) * u128::from(pb.weight.max(1));
    let load_b = u128::from(pb.inflight) * u128::from(pa.weight.max(1));
    Some(
        if load_b < load_a || (load_a == load_b && pb.latency_ewma_ms < pa.latency_ewma_ms) {
            b
        } else {
            a
        },
    )
}

/// nginx's smooth weighted round robin over at most `N` peers.
#[derive(Debug, Clone)]
pub struct SmoothWrr<const N: usize> {
    current: [i64; N],
}

impl<const N: usize> Default for SmoothWrr<N> {
    fn default() -> Self {
        Self { current: [0; N] }
    }
}

impl<const N: usize> SmoothWrr<N> {
    /// Picks among `weights` (the first `N`) the peers for which `eligible`
    /// holds. `None` when none is.
    pub fn pick(&mut self, weights: &[u32], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate().take(N) {
            if !eligible(i) {
                continue;
            }
            let w = i64::from(w);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn loads(weights: &[u32]) -> Vec<PeerLoad> {
        weights
            .iter()
            .map(|&w| PeerLoad {
                weight: w,
                inflight: 0,
                latency_ewma_ms: 0.0,
                eligible: true,
            })
            .collect()
    }

    #[test]
    fn swrr_is_smooth_for_5_1_1() {
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        let mut s = SmoothWrr::<3>::default();
        let seq: Vec<usize> = (0..7)
            .map(|_| s.pick(&[5, 1, 1], |_| true).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn swrr_skips_ineligible_peers() {
        let mut s = SmoothWrr::<3>::default();
        for _ in 0..10 {
            assert_ne!(s.pick(&[1, 1, 1], |i| i != 1), Some(1));
        }
        assert_eq!(s.pick(&[1, 1, 1], |_| false), None);
    }

    /// nginx's algorithm written the obvious way, allocating: the first
    /// peer with the largest `current` wins.
    fn reference_pick(current: &mut [i64], weights: &[u32], eligible: &[bool]) -> Option<usize> {
        let ids: Vec<usize> = (0..weights.len()).filter(|&i| eligible[i]).collect();
        let total: i64 = ids.iter().map(|&i| i64::from(weights[i])).sum();
        for &i in &ids {
            current[i] += i64::from(weights[i]);
        }
        // `max_by_key` keeps the last of equal maxima; reversed, the first.
        let best = ids.iter().rev().copied().max_by_key(|&i| current[i])?;
        current[best] -= total;
        Some(best)
    }

    proptest! {
        #[test]
        fn swrr_equals_the_reference(
            weights in prop::collection::vec(1u32..50, 1..8),
            masks in prop::collection::vec(prop::collection::vec(prop::bool::weighted(0.8), 8), 1..200),
        ) {
            let mut s = SmoothWrr::<8>::default();
            let mut current = vec![0i64; weights.len()];
            for mask in &masks {
                let want = reference_pick(&mut current, &weights, mask);
                prop_assert_eq!(s.pick(&weights, |i| mask[i]), want);
            }
        }

        #[test]
        fn swrr_gives_exact_shares(weights in prop::collection::vec(1u32..20, 1..8), rounds in 1usize..4) {
            let mut s = SmoothWrr::<8>::default();
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..rounds * total as usize {
                counts[s.pick(&weights, |_| true).unwrap()] += 1;
            }
            for (c, w) in counts.iter().zip(&weights) {
                prop_assert_eq!(*c, rounds * *w as usize);
            }
        }
    }

    #[test]
    fn p2c_follows_weights_under_equal_load() {
        let peers = loads(&[5, 3, 1]);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        let n = 90_000;
        for _ in 0..n {
            counts[p2c(&peers, &mut rng).unwrap()] += 1;
        }
        // Equal load: the first draw wins ties, so shares equal the weights'.
        for (c, w) in counts.iter().zip([5.0, 3.0, 1.0]) {
            let share = *c as f64 / n as f64;
            assert!((share - w / 9.0).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn p2c_avoids_a_loaded_peer() {
        let mut peers = loads(&[1, 1, 1]);
        peers[2].inflight = 50;
        let mut rng = SmallRng::seed_from_u64(3);
        let hits = (0..30_000)
            .filter(|_| p2c(&peers, &mut rng) == Some(2))
            .count();
        // Peer 2 wins only when both draws pick it: 1/9.
        assert!((hits as f64 / 30_000.0 - 1.0 / 9.0).abs() < 0.01, "{hits}");
    }

    #[test]
    fn p2c_breaks_ties_by_latency_and_handles_few_peers() {
        let mut peers = loads(&[1, 1]);
        peers[0].latency_ewma_ms = 100.0;
        peers[1].latency_ewma_ms = 1.0;
        let mut rng = SmallRng::seed_from_u64(1);
        let ones = (0..1000)
            .filter(|_| p2c(&peers, &mut rng) == Some(1))
            .count();
        assert!(ones > 700, "{ones}");
        peers[1].eligible = false;
        assert_eq!(p2c(&peers, &mut rng), Some(0));
        peers[0].eligible = false;
        assert_eq!(p2c(&peers, &mut rng), None);
    }

    #[test]
    fn peak_ewma_follows_a_controlled_clock() {
        let tau = 1000.0;
        let mut e = Ewma::new();
        assert_eq!(e.value(), 0.0);
        e.observe(10.0, 5_000, tau);
        assert_eq!(e.value(), 10.0, "the first sample is taken as is");
        e.observe(40.0, 5_000, tau);
        assert_eq!(e.value(), 40.0, "a peak is taken at once");
        e.observe(20.0, 5_000, tau);
        assert_eq!(
            e.value(),
            40.0,
            "no time elapsed: a lower sample has no weight"
        );
        e.observe(20.0, 6_000, tau);
        let want = 40.0 * (-1.0f64).exp() + 20.0 * (1.0 - (-1.0f64).exp());
        assert!((e.value() - want).abs() < 1e-12, "{}", e.value());
        e.observe(20.0, 5_500, tau);
        assert!(
            (e.value() - want).abs() < 1e-12,
            "a clock going back is no time"
        );
        e.observe(2.0, 60_000, tau);
        assert!(
            (e.value() - 2.0).abs() < 1e-9,
            "long after, the new sample wins"
        );
        e.observe(f64::NAN, 61_000, tau);
        e.observe(-1.0, 61_000, tau);
        assert!((e.value() - 2.0).abs() < 1e-9, "bad samples are ignored");
    }

    #[test]
    fn ewma_moves_towards_samples() {
        assert_eq!(ewma_update(0.0, 10.0), 10.0);
        let m = ewma_update(10.0, 20.0);
        assert!((m - 12.0).abs() < 1e-12);
        let mut m = 10.0;
        for _ in 0..100 {
            m = ewma_update(m, 50.0);
        }
        assert!((m - 50.0).abs() < 1e-6);
    }
}
