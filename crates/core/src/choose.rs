//! Per-request peer choice given the current weights. Pure and
//! allocation-free: the module calls these on every request.
//!
//! - [`SmoothWrr`]: nginx's smooth weighted round robin. Every pick adds
//!   each eligible peer's weight to its `current`, takes the largest, and
//!   subtracts the total from the winner; over `Σw` picks peer `i` is chosen
//!   exactly `wᵢ` times, evenly interleaved. (The module delegates to
//!   nginx's own implementation so that `max_fails` etc. stay nginx's; this
//!   one is the reference for tests and the lab's simulations.)
//! - [`Ewma`] / [`peak_ewma`]: peak-sensitive, time-decayed latency
//!   average (after Finagle's and Linkerd's "peak EWMA").
//! - [`p2c`]: the power of two choices (Mitzenmacher 2001) over
//!   weight-proportional draws of two *different* peers: the policy sets the
//!   macro shares and says how much each peer can take, the per-request
//!   choice absorbs bursts and slow spells by preferring the peer with the
//!   lower expected cost `peak_ewma · (inflight + 1) / weight`.

use rand::Rng;

/// What the per-request choice knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerLoad {
    /// Current weight (≥ 1).
    pub weight: u32,
    /// Requests in flight (all workers).
    pub inflight: u64,
    /// Recent response time, ms: the peak EWMA ([`peak_ewma`]); 0 before
    /// the first response.
    pub latency_ewma_ms: f64,
    /// Not down, not failed, under `max_conns`, not tried yet.
    pub eligible: bool,
}

/// Time constant of the module's latency average, ms: a peak is forgotten
/// to 1/e in a second, about the length of one decision interval.
pub const PEAK_EWMA_TAU_MS: f64 = 1000.0;

/// The latency sample the module records for a try that nginx counted as a
/// failure of the peer (refused, reset, timed out, `proxy_next_upstream`
/// status), ms: a failure must make a peer look slow, never fast, or the
/// per-request choice would favour a peer that fails quickly.
pub const FAILURE_PENALTY_MS: f64 = 1000.0;

/// Latency below which peers count as equally fast in [`p2c`], ms: response
/// times have millisecond resolution and a peer with no response yet has
/// no average.
pub const LATENCY_FLOOR_MS: f64 = 1.0;

/// The latency sample one finished try contributes to its peer's peak
/// EWMA, ms: the response time, or at least [`FAILURE_PENALTY_MS`] when
/// nginx counted the try as a failure of the peer.
#[inline]
pub fn try_latency_ms(response_ms: u64, failed: bool) -> f64 {
    let ms = response_ms as f64;
    if failed {
        ms.max(FAILURE_PENALTY_MS)
    } else {
        ms
    }
}

/// One step of the peak EWMA ([`Ewma`]) as a pure function of plain
/// values, for callers that keep the average in atomics: the new average
/// after `sample_ms` arrives `elapsed_ms` after the previous sample.
/// `mean ≤ 0` (no sample yet) takes the sample as is; a negative or
/// non-finite sample leaves the mean unchanged.
#[inline]
pub fn peak_ewma(mean: f64, elapsed_ms: u64, sample_ms: f64, tau_ms: f64) -> f64 {
    if !sample_ms.is_finite() || sample_ms < 0.0 {
        return mean;
    }
    if mean <= 0.0 || !mean.is_finite() || sample_ms > mean {
        return sample_ms;
    }
    let w = (-(elapsed_ms as f64) / tau_ms.max(f64::MIN_POSITIVE)).exp();
    w * mean + (1.0 - w) * sample_ms
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
        let elapsed = now_ms.saturating_sub(self.stamp_ms);
        self.value = peak_ewma(self.value, elapsed, sample_ms, tau_ms);
        self.stamp_ms = self.stamp_ms.max(now_ms);
    }

    /// The current average, ms (0 before the first sample).
    pub fn value(&self) -> f64 {
        self.value
    }
}

/// Draws an eligible peer other than `skip` with probability proportional
/// to its weight; `total` is the weight sum of those peers.
fn weighted_draw<R: Rng + ?Sized>(
    peers: &[PeerLoad],
    skip: usize,
    total: u64,
    rng: &mut R,
) -> usize {
    let mut r = rng.gen_range(0..total);
    let mut last = 0;
    for (i, p) in peers.iter().enumerate() {
        if !p.eligible || i == skip {
            continue;
        }
        last = i;
        let w = u64::from(p.weight.max(1));
        if r < w {
            return i;
        }
        r -= w;
    }
    // Unreachable when total is the weight sum of the candidates.
    last
}

/// Expected cost of sending one more request to `p`: its recent latency
/// times the requests it would then hold, per unit of weight.
#[inline]
fn cost(p: &PeerLoad) -> f64 {
    let latency = if p.latency_ewma_ms.is_finite() {
        p.latency_ewma_ms.max(LATENCY_FLOOR_MS)
    } else {
        LATENCY_FLOOR_MS
    };
    latency * (p.inflight as f64 + 1.0) / f64::from(p.weight.max(1))
}

/// The power of two choices: two weighted draws of different eligible
/// peers; the one with the lower [`cost`] (`peak_ewma · (inflight + 1) /
/// weight`) wins, the first draw on a tie. With equal costs the shares are
/// the weights'; a peer that is slower or fuller than its weight says is
/// passed over as long as the other draw is cheaper. `None` when no peer is
/// eligible.
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
    let a = weighted_draw(peers, usize::MAX, total, rng);
    let rest = total - u64::from(peers[a].weight.max(1));
    let b = weighted_draw(peers, a, rest, rng);
    Some(if cost(&peers[b]) < cost(&peers[a]) {
        b
    } else {
        a
    })
}

/// For every peer slot, the other slots with the same address: a backend
/// named by several upstreams (the research's one upstream per request
/// type) holds the requests of all of them, so its load is the sum of
/// their in-flight counts. `names[i]` is slot `i`'s address.
pub fn same_address_slots(names: &[&str]) -> Vec<Vec<usize>> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            names
                .iter()
                .enumerate()
                .filter(|&(j, m)| j != i && m == n)
                .map(|(j, _)| j)
                .collect()
        })
        .collect()
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
    fn p2c_follows_weights_when_each_peer_is_as_loaded_as_its_weight_says() {
        // (inflight + 1) / weight = 1 for every peer: equal costs.
        let mut peers = loads(&[5, 3, 1]);
        for p in &mut peers {
            p.inflight = u64::from(p.weight) - 1;
        }
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        let n = 90_000;
        for _ in 0..n {
            counts[p2c(&peers, &mut rng).unwrap()] += 1;
        }
        // Equal costs: the first draw wins ties, so shares equal the weights'.
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
        // The two draws are different peers, so the loaded one always
        // meets a cheaper one.
        assert_eq!(hits, 0);
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
        assert_eq!(ones, 1000, "equal load: the faster peer always wins");
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
    fn a_failed_try_counts_as_slow_never_fast() {
        assert_eq!(try_latency_ms(7, false), 7.0);
        assert_eq!(try_latency_ms(0, true), FAILURE_PENALTY_MS);
        assert_eq!(try_latency_ms(3_000, true), 3_000.0);
        // a peer that fails fast stops looking cheap
        let m = peak_ewma(2.0, 10, try_latency_ms(1, true), PEAK_EWMA_TAU_MS);
        assert_eq!(m, FAILURE_PENALTY_MS);
    }

    #[test]
    fn same_address_slots_pairs_equal_names_only() {
        let names = ["a:1", "b:1", "a:1", "c:1", "a:1", "b:1"];
        let s = same_address_slots(&names);
        assert_eq!(s[0], vec![2, 4]);
        assert_eq!(s[1], vec![5]);
        assert_eq!(s[2], vec![0, 4]);
        assert!(s[3].is_empty());
        assert_eq!(s[5], vec![1]);
        assert!(same_address_slots(&[]).is_empty());
    }

    #[test]
    fn peak_ewma_function_matches_the_struct() {
        let tau = PEAK_EWMA_TAU_MS;
        assert_eq!(peak_ewma(0.0, 0, 10.0, tau), 10.0);
        assert_eq!(peak_ewma(10.0, 0, 30.0, tau), 30.0);
        assert_eq!(peak_ewma(30.0, 0, 10.0, tau), 30.0);
        assert_eq!(peak_ewma(30.0, 100, f64::NAN, tau), 30.0);
        let mut e = Ewma::new();
        let mut m = 0.0;
        let mut last = 0u64;
        for (i, x) in [12.0, 3.0, 40.0, 8.0, 8.0, 1.0, 90.0, 2.0]
            .iter()
            .enumerate()
        {
            let now = 1_000 + 250 * i as u64;
            e.observe(*x, now, tau);
            m = peak_ewma(m, now - last, *x, tau);
            last = now;
            assert!(
                (e.value() - m).abs() < 1e-12,
                "step {i}: {} vs {m}",
                e.value()
            );
        }
    }

    #[test]
    fn p2c_cost_weighs_latency_inflight_and_weight() {
        let mut peers = loads(&[1, 1]);
        // 10 ms with 1 in flight (cost 20) beats 5 ms with 4 (cost 25)
        peers[0].latency_ewma_ms = 10.0;
        peers[0].inflight = 1;
        peers[1].latency_ewma_ms = 5.0;
        peers[1].inflight = 4;
        let mut rng = SmallRng::seed_from_u64(9);
        assert!((0..200).all(|_| p2c(&peers, &mut rng) == Some(0)));
        // twice the weight halves the cost: 25 / 2 < 20
        peers[1].weight = 2;
        assert!((0..200).all(|_| p2c(&peers, &mut rng) == Some(1)));
        // no average yet counts as the floor, not as free
        peers[1].latency_ewma_ms = 0.0;
        peers[1].inflight = 100;
        peers[1].weight = 1;
        assert!((0..200).all(|_| p2c(&peers, &mut rng) == Some(0)));
    }

    proptest! {
        #[test]
        fn p2c_never_picks_the_single_costliest_peer(
            peers in prop::collection::vec(
                (1u32..10, 0u64..20, 0.0f64..50.0, prop::bool::weighted(0.8)), 1..8),
            seed in any::<u64>(),
        ) {
            let peers: Vec<PeerLoad> = peers
                .into_iter()
                .map(|(weight, inflight, latency_ewma_ms, eligible)| PeerLoad {
                    weight, inflight, latency_ewma_ms, eligible,
                })
                .collect();
            let mut rng = SmallRng::seed_from_u64(seed);
            let eligible: Vec<usize> = (0..peers.len()).filter(|&i| peers[i].eligible).collect();
            let got = p2c(&peers, &mut rng);
            match eligible.len() {
                0 => prop_assert_eq!(got, None),
                1 => prop_assert_eq!(got, Some(eligible[0])),
                _ => {
                    let g = got.unwrap();
                    prop_assert!(peers[g].eligible);
                    // the winner beat (or tied) another eligible peer
                    prop_assert!(eligible
                        .iter()
                        .any(|&i| i != g && cost(&peers[i]) >= cost(&peers[g])));
                }
            }
        }
    }
}
