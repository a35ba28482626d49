//! Per-request peer choice given the current weights. Pure and
//! allocation-free: the module calls these on every request.
//!
//! `choose=wrr` is nginx's own smooth weighted round robin (the module
//! delegates to it, so `max_fails` and friends stay nginx's); this file
//! holds what the module adds:
//!
//! - [`peak_ewma`]: peak-sensitive, time-decayed latency average (after
//!   Finagle's and Linkerd's "peak EWMA"), updated when a response arrives,
//!   and [`decayed_latency`], which decays it when it is *read* (as tower's
//!   `peak_ewma.rs` does), so a peer that is no longer chosen is not
//!   judged by its last bad sample forever;
//! - [`slow_start_factor`]: the share multiplier of a peer that returns
//!   from failure (Envoy's slow start);
//! - [`scale_effective_weight`]: a new decision's weight applied without
//!   erasing round robin's failure back-off;
//! - [`p2c`]: the power of two choices (Mitzenmacher 2001) over
//!   weight-proportional draws of two *different* peers: the policy sets the
//!   macro shares and says how much each peer can take, the per-request
//!   choice absorbs bursts and slow spells by preferring the peer with the
//!   lower expected cost `peak_ewma · (inflight + 1) / weight`.

use rand::Rng;

/// What the per-request choice knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerLoad {
    /// Current weight (≥ 1): what the peer can take, in the cost.
    pub weight: u32,
    /// Weight of the draws (≥ 1): the weight times any slow-start factor.
    /// Kept apart from the cost so a ramping peer is drawn less often but,
    /// once drawn, judged by its load like any other (a factor in the cost
    /// would make it lose every pairing until the ramp ends).
    pub draw_weight: u32,
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

/// One step of the peak EWMA: the new average after `sample_ms` arrives
/// `elapsed_ms` after the previous sample. A sample above the average is
/// taken at once, so a peer that turns slow is avoided immediately; a lower
/// one is blended in with a weight that grows with the time since the last
/// sample:
///
/// ```text
/// m ← x                          if x > m (or no sample yet)
/// m ← w·m + (1 − w)·x,  w = exp(−Δt/τ)   otherwise
/// ```
///
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

/// Half-life of a latency estimate that gets no new sample, ms.
///
/// The average only moves when a response arrives, and a peer that p2c
/// stopped choosing (after one failure, or one slow response) gets none:
/// without decay it would be cut off for good. So the estimate is halved
/// for every 200 ms since its last sample when it is *read*. A penalty of
/// [`FAILURE_PENALTY_MS`] then falls to the [`LATENCY_FLOOR_MS`] of a fast
/// peer in 10 half-lives (2 s), a 2 s response in 11 (2.2 s): the peer is
/// drawn again and its next real sample decides. A peer that is busy gets
/// samples every few ms and is barely touched. (nginx's `least_time`
/// halves an unselected peer's average per `fail_timeout`; Finagle and
/// tower decay with time when reading too.)
pub const IDLE_HALF_LIFE_MS: f64 = 200.0;

/// The latency estimate as read `idle_ms` after its last sample: the peak
/// EWMA halved per [`IDLE_HALF_LIFE_MS`] of silence,
///
/// ```text
/// m(t) = m · 2^(−idle / H)
/// ```
///
/// so a failure penalty or one slow response is bounded in time. A
/// non-finite or non-positive estimate reads as 0 (no estimate).
#[inline]
pub fn decayed_latency(mean_ms: f64, idle_ms: u64) -> f64 {
    if !mean_ms.is_finite() || mean_ms <= 0.0 {
        return 0.0;
    }
    mean_ms * (-(idle_ms as f64) / IDLE_HALF_LIFE_MS).exp2()
}

/// Smallest share multiplier of a peer in slow start (Envoy's default
/// `min_weight_percent` is 10 %): a returning peer gets some traffic at
/// once, so its first responses tell whether it really recovered.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// The share multiplier of a peer whose slow start began at `since_ms`
/// (`0`: not in slow start), at `now_ms`, for a ramp of `window_ms`:
///
/// ```text
/// f = max(SLOW_START_FLOOR, (now − since) / window)   while now − since < window
/// f = 1                                                 afterwards
/// ```
///
/// A linear ramp, as Envoy's slow start with aggression 1.
#[inline]
pub fn slow_start_factor(now_ms: u64, since_ms: u64, window_ms: u64) -> f64 {
    if since_ms == 0 || window_ms == 0 {
        return 1.0;
    }
    let elapsed = now_ms.saturating_sub(since_ms);
    if elapsed >= window_ms {
        return 1.0;
    }
    (elapsed as f64 / window_ms as f64).max(SLOW_START_FLOOR)
}

/// Round robin's `effective_weight` when a decision moves a peer's weight
/// from `old_weight` to `new_weight`: nginx lowers `effective_weight` by
/// `weight / max_fails` per failure and raises it by one per pick until it
/// is back at `weight`; the new weight keeps that back-off in proportion,
///
/// ```text
/// e' = round(e · w' / w),  clamped to 0..=w'
/// ```
///
/// instead of resetting it (which erased the back-off every interval).
#[inline]
pub fn scale_effective_weight(effective: i64, old_weight: i64, new_weight: i64) -> i64 {
    if old_weight <= 0 {
        return new_weight;
    }
    let scaled = (effective.clamp(0, old_weight) as i128 * new_weight as i128
        + old_weight as i128 / 2)
        / old_weight as i128;
    (scaled as i64).clamp(0, new_weight.max(0))
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
        let w = u64::from(p.draw_weight.max(1));
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
pub(crate) fn cost(p: &PeerLoad) -> f64 {
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
            total += u64::from(p.draw_weight.max(1));
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
    Some(p2c_second(peers, a, rng))
}

/// The second half of [`p2c`] once the first draw is `a` (eligible): a
/// weighted draw among the other eligible peers, and the cheaper of the two
/// (`a` on a tie, or when no other peer is eligible).
pub fn p2c_second<R: Rng + ?Sized>(peers: &[PeerLoad], a: usize, rng: &mut R) -> usize {
    let rest: u64 = peers
        .iter()
        .enumerate()
        .filter(|&(i, p)| p.eligible && i != a)
        .map(|(_, p)| u64::from(p.draw_weight.max(1)))
        .sum();
    if rest == 0 {
        return a;
    }
    let b = weighted_draw(peers, a, rest, rng);
    if cost(&peers[b]) < cost(&peers[a]) {
        b
    } else {
        a
    }
}

/// For every peer slot, the slot that counts the requests in flight at its
/// address when several slots share it, else `None`: a backend named by
/// several upstreams (the research's one upstream per request type), or
/// several times in one, holds the requests of all of them, so its load is
/// their sum — kept once, in the group's first slot, instead of summed per
/// request. `names[i]` is slot `i`'s address. O(n).
pub fn shared_addresses(names: &[&str]) -> Vec<Option<usize>> {
    let mut first: std::collections::HashMap<&str, (usize, usize)> =
        std::collections::HashMap::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        first.entry(n).or_insert((i, 0)).1 += 1;
    }
    names
        .iter()
        .map(|n| match first[n] {
            (slot, count) if count > 1 => Some(slot),
            _ => None,
        })
        .collect()
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
                draw_weight: w,
                inflight: 0,
                latency_ewma_ms: 0.0,
                eligible: true,
            })
            .collect()
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
    fn a_failed_try_counts_as_slow_never_fast() {
        assert_eq!(try_latency_ms(7, false), 7.0);
        assert_eq!(try_latency_ms(0, true), FAILURE_PENALTY_MS);
        assert_eq!(try_latency_ms(3_000, true), 3_000.0);
        // a peer that fails fast stops looking cheap
        let m = peak_ewma(2.0, 10, try_latency_ms(1, true), PEAK_EWMA_TAU_MS);
        assert_eq!(m, FAILURE_PENALTY_MS);
    }

    #[test]
    fn peak_ewma_follows_a_controlled_clock() {
        let tau = PEAK_EWMA_TAU_MS;
        assert_eq!(peak_ewma(0.0, 0, 10.0, tau), 10.0, "first sample as is");
        assert_eq!(peak_ewma(10.0, 0, 40.0, tau), 40.0, "a peak at once");
        assert_eq!(peak_ewma(40.0, 0, 20.0, tau), 40.0, "no time, no weight");
        let want = 40.0 * (-1.0f64).exp() + 20.0 * (1.0 - (-1.0f64).exp());
        assert!((peak_ewma(40.0, 1000, 20.0, tau) - want).abs() < 1e-12);
        assert!((peak_ewma(40.0, 60_000, 2.0, tau) - 2.0).abs() < 1e-9);
        assert_eq!(peak_ewma(30.0, 100, f64::NAN, tau), 30.0);
        assert_eq!(peak_ewma(30.0, 100, -1.0, tau), 30.0);
    }

    #[test]
    fn an_unread_estimate_decays_by_its_half_life() {
        assert_eq!(decayed_latency(1000.0, 0), 1000.0);
        assert!((decayed_latency(1000.0, 200) - 500.0).abs() < 1e-9);
        assert!((decayed_latency(1000.0, 400) - 250.0).abs() < 1e-9);
        // a failure penalty reaches the fast-peer floor within 2 s
        assert!(decayed_latency(FAILURE_PENALTY_MS, 2000) <= LATENCY_FLOOR_MS);
        // one 2 s response is forgotten within 2.2 s
        assert!(decayed_latency(2000.0, 2200) <= LATENCY_FLOOR_MS);
        // a busy peer (a sample every 5 ms) is barely touched
        assert!(decayed_latency(10.0, 5) > 9.8);
        assert_eq!(decayed_latency(0.0, 10), 0.0);
        assert_eq!(decayed_latency(f64::NAN, 10), 0.0);
        assert_eq!(decayed_latency(-3.0, 10), 0.0);
    }

    /// The defect this fixes: a peer penalised once kept its penalty while
    /// it was never drawn, and lost every pairing for good.
    #[test]
    fn a_peer_penalised_once_is_chosen_again_within_seconds() {
        let mut rng = SmallRng::seed_from_u64(5);
        let penalised_at = 0u64;
        let mut share_at = |idle_ms: u64| {
            let mut peers = loads(&[1, 1, 1]);
            peers[0].latency_ewma_ms = 1.0;
            peers[1].latency_ewma_ms = 1.0;
            peers[2].latency_ewma_ms = decayed_latency(FAILURE_PENALTY_MS, idle_ms - penalised_at);
            (0..3000)
                .filter(|_| p2c(&peers, &mut rng) == Some(2))
                .count() as f64
                / 3000.0
        };
        assert_eq!(share_at(500), 0.0, "still penalised half a second later");
        let later = share_at(2500);
        assert!(later > 0.25, "back to about a third: {later}");
    }

    #[test]
    fn slow_start_ramps_linearly_from_the_floor() {
        assert_eq!(slow_start_factor(5_000, 0, 10_000), 1.0, "not ramping");
        assert_eq!(slow_start_factor(5_000, 4_000, 0), 1.0, "no window");
        assert_eq!(slow_start_factor(4_000, 4_000, 10_000), SLOW_START_FLOOR);
        assert_eq!(slow_start_factor(4_500, 4_000, 10_000), SLOW_START_FLOOR);
        assert!((slow_start_factor(9_000, 4_000, 10_000) - 0.5).abs() < 1e-12);
        assert_eq!(slow_start_factor(14_000, 4_000, 10_000), 1.0);
        assert_eq!(
            slow_start_factor(3_000, 4_000, 10_000),
            SLOW_START_FLOOR,
            "clock behind"
        );
    }

    /// A ramping peer is drawn less often, not judged costlier: its share
    /// follows the factor instead of dropping to zero.
    #[test]
    fn slow_start_scales_the_share_not_the_cost() {
        let mut rng = SmallRng::seed_from_u64(11);
        let mut share = |factor: f64| {
            let mut peers = loads(&[64, 64, 64]);
            peers[2].draw_weight = (64.0 * factor) as u32;
            (0..30_000)
                .filter(|_| p2c(&peers, &mut rng) == Some(2))
                .count() as f64
                / 30_000.0
        };
        let (low, mid, full) = (share(0.1), share(0.5), share(1.0));
        assert!(low > 0.02 && low < mid && mid < full, "{low} {mid} {full}");
        assert!((full - 1.0 / 3.0).abs() < 0.02, "{full}");
    }

    #[test]
    fn a_new_weight_keeps_round_robins_back_off() {
        // weight 4, one failure with max_fails 2 took effective to 2
        assert_eq!(scale_effective_weight(2, 4, 8), 4);
        assert_eq!(scale_effective_weight(4, 4, 1), 1, "full stays full");
        assert_eq!(scale_effective_weight(0, 4, 9), 0, "fully backed off stays");
        assert_eq!(scale_effective_weight(3, 0, 5), 5, "no old weight");
        assert_eq!(scale_effective_weight(-2, 4, 5), 0);
        assert_eq!(scale_effective_weight(9, 4, 5), 5, "never above the weight");
    }

    proptest! {
        #[test]
        fn scaled_effective_weight_stays_in_range(e in -5i64..2000, w in 1i64..1000, w2 in 1i64..1000) {
            let s = scale_effective_weight(e, w, w2);
            prop_assert!((0..=w2).contains(&s));
            if e >= w { prop_assert_eq!(s, w2); }
        }
    }

    #[test]
    fn shared_addresses_point_at_the_groups_first_slot() {
        let names = ["a:1", "b:1", "a:1", "c:1", "a:1", "b:1"];
        let s = shared_addresses(&names);
        assert_eq!(s, vec![Some(0), Some(1), Some(0), None, Some(0), Some(1)]);
        assert!(shared_addresses(&[]).is_empty());
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
                    weight, draw_weight: weight, inflight, latency_ewma_ms, eligible,
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
