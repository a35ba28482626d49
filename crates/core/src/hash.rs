//! Consistent hashing with bounded loads (`choose=hash key=EXPR balance=FACTOR`).
//!
//! **Ring.** Every peer owns `points(w)` virtual nodes on a ring of 32-bit
//! positions, proportional to its *current* weight `w` (the decision's, or
//! the configured one in observe mode):
//!
//! ```text
//! points(w) = w · POINTS_PER_WEIGHT                  if Σw · POINTS_PER_WEIGHT ≤ MAX_POINTS
//! points(w) = max(1, ⌊w · MAX_POINTS / Σw⌋)          otherwise
//! ```
//!
//! (160 points per unit of weight, as nginx's ketama ring; the total is
//! capped at [`MAX_POINTS`] + n, so 1,024 peers of weight 1,000 get about
//! 256 points each and the ring stays 2 MiB.) Point `j` of a peer sits at
//! `H(identity, j)`: the points of weight `w` are a prefix of those of
//! weight `w + 1`, so a weight change moves only the keys of the points
//! that come or go, and removing a peer moves only its own keys (≈ 1/N).
//! A key goes to the first point at or after `H(key)` (wrapping around).
//!
//! **Bounded loads** (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing
//! with Bounded Loads", SODA 2018). Walking clockwise from the key's
//! position, the request goes to the first *eligible* peer (not down,
//! failed, full, tried, unhealthy: the caller says) whose requests in
//! flight are below its bound
//!
//! ```text
//! bound_i = ⌈ c · (T + 1) · w_i / W ⌉
//! ```
//!
//! where `c` = `balance` (≥ 1, in thousandths), `T` the requests in flight
//! at all eligible peers (every worker's), `W` their total ring weight and
//! `+ 1` the request being placed. With equal weights this is the paper's
//! `⌈c · m / n⌉`, `c` times the mean; with weights each peer may hold
//! `c` times its weighted share (as HAProxy's `hash-balance-factor`).
//! `balance=off` is plain consistent hashing (the first eligible peer).
//!
//! **The walk ends.** If every eligible peer `i` had `L_i ≥ bound_i`, then
//! `T = Σ L_i ≥ Σ bound_i ≥ c · (T + 1) · Σ w_i / W = c · (T + 1) > T`,
//! a contradiction; so while some peer is eligible, one is below its bound,
//! and since every eligible peer of positive weight has at least one point,
//! one lap of the ring finds it. The bound is computed in integers, so no
//! rounding breaks the argument. (Property-tested below.)
//!
//! Hash functions: [`HashFn::Xxh3`] (the module's: fast and well mixed) and,
//! for the distribution study, [`HashFn::Crc32`] (nginx's `hash`) and
//! [`HashFn::Fnv1a`].

use crate::choose::PeerLoad;

/// Virtual nodes per unit of weight (nginx's ketama ring uses 160).
pub const POINTS_PER_WEIGHT: u64 = 160;

/// Points on a ring before the per-weight count is scaled down: 2^18
/// (2 MiB of 8-byte points; 1,024 peers of weight 1,000 get 256 each).
pub const MAX_POINTS: u64 = 1 << 18;

/// Default `balance=`: 1.25, in thousandths.
pub const DEFAULT_BALANCE_PERMILLE: u32 = 1250;

/// Largest `balance=` factor, in thousandths (a factor this large is
/// plain consistent hashing in practice).
pub const MAX_BALANCE_PERMILLE: u32 = 1_000_000;

/// A hash function for keys and ring points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFn {
    /// XXH3-64 (`xxhash-rust`), upper 32 bits: the module's function.
    Xxh3,
    /// CRC-32 (IEEE, `crc32fast`), the function of nginx's `hash`.
    Crc32,
    /// FNV-1a 64, folded to 32 bits.
    Fnv1a,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

// FNV-1a is a few lines and no crate of ours has it; written by hand.
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

impl HashFn {
    /// Every function, in the study's order.
    pub const ALL: [HashFn; 3] = [HashFn::Xxh3, HashFn::Crc32, HashFn::Fnv1a];

    /// Short name (reports).
    pub fn name(self) -> &'static str {
        match self {
            HashFn::Xxh3 => "xxh3",
            HashFn::Crc32 => "crc32",
            HashFn::Fnv1a => "fnv1a",
        }
    }

    /// The ring position of a key.
    #[inline]
    pub fn key(self, key: &[u8]) -> u32 {
        match self {
            HashFn::Xxh3 => (xxhash_rust::xxh3::xxh3_64(key) >> 32) as u32,
            HashFn::Crc32 => crc32fast::hash(key),
            HashFn::Fnv1a => fold(fnv1a(FNV_OFFSET, key)),
        }
    }

    /// The state a peer's points derive from (its identity hashed once).
    fn seed(self, identity: &[u8]) -> u64 {
        match self {
            HashFn::Xxh3 => xxhash_rust::xxh3::xxh3_64(identity),
            HashFn::Crc32 => u64::from(crc32fast::hash(identity)),
            HashFn::Fnv1a => fnv1a(FNV_OFFSET, identity),
        }
    }

    /// Position of point `j` of the peer with `seed`: the identity's hash
    /// continued over `j`'s four little-endian bytes.
    #[inline]
    fn point(self, seed: u64, j: u32) -> u32 {
        let b = j.to_le_bytes();
        match self {
            HashFn::Xxh3 => (xxhash_rust::xxh3::xxh3_64_with_seed(&b, seed) >> 32) as u32,
            HashFn::Crc32 => {
                let mut h = crc32fast::Hasher::new_with_initial(seed as u32);
                h.update(&b);
                h.finalize()
            }
            HashFn::Fnv1a => fold(fnv1a(seed, &b)),
        }
    }
}

#[inline]
fn fold(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

/// Points of a peer of weight `w` on a ring of total weight `total`
/// (see the module doc).
pub fn points_for(w: u32, total: u64) -> u64 {
    if w == 0 {
        return 0;
    }
    if total * POINTS_PER_WEIGHT <= MAX_POINTS {
        u64::from(w) * POINTS_PER_WEIGHT
    } else {
        (u64::from(w) * MAX_POINTS / total).max(1)
    }
}

/// `balance=`: the bound on a peer's in-flight requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Plain consistent hashing.
    Off,
    /// At most `c` times the weighted mean, `c` in thousandths (≥ 1000).
    Factor(u32),
}

impl Default for Balance {
    fn default() -> Self {
        Balance::Factor(DEFAULT_BALANCE_PERMILLE)
    }
}

/// The bound on peer `i`'s requests in flight:
///
/// ```text
/// bound_i = ⌈ c · (T + 1) · w_i / W ⌉,   c = permille / 1000
/// ```
///
/// `total_inflight` = T, `weight` = w_i, `total_weight` = W (> 0). A peer
/// may take the request when its in-flight count is below the bound.
#[inline]
pub fn load_bound(permille: u32, total_inflight: u64, weight: u32, total_weight: u64) -> u64 {
    let num = u128::from(permille) * (u128::from(total_inflight) + 1) * u128::from(weight);
    let den = 1000 * u128::from(total_weight.max(1));
    u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
}

/// A consistent-hash ring over one upstream's peers, rebuilt in place.
#[derive(Debug, Clone)]
pub struct Ring {
    hash: HashFn,
    /// Per peer: its identity's hash.
    seeds: Vec<u64>,
    /// Per peer: the weight the ring was built with.
    weights: Vec<u32>,
    /// (position, peer), sorted.
    points: Vec<(u32, u32)>,
}

impl Ring {
    /// An empty ring for peers with these identities (names as
    /// `host:port`; a name given twice gets a distinct identity per
    /// occurrence). Allocates: configuration time.
    pub fn new(hash: HashFn, names: &[&str]) -> Ring {
        let seeds = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let dup = names[..i].iter().filter(|m| *m == n).count();
                if dup == 0 {
                    hash.seed(n.as_bytes())
                } else {
                    hash.seed(format!("{n}#{dup}").as_bytes())
                }
            })
            .collect();
        Ring {
            hash,
            seeds,
            weights: vec![0; names.len()],
            points: Vec::new(),
        }
    }

    /// The ring's hash function.
    pub fn hash(&self) -> HashFn {
        self.hash
    }

    /// Number of peers.
    pub fn peers(&self) -> usize {
        self.seeds.len()
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the ring has no point (every weight 0).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Points of peer `i` (tests, reports).
    pub fn points_of(&self, i: usize) -> usize {
        self.points.iter().filter(|p| p.1 as usize == i).count()
    }

    /// Rebuilds the ring for weight `weight(i)` of peer `i` (0: no point).
    /// Reuses its buffers: allocates only when the ring grows beyond any
    /// earlier size. O(P log P) for P points, once per decision, and
    /// nothing when the weights are those the ring has.
    pub fn rebuild(&mut self, mut weight: impl FnMut(usize) -> u32) {
        let mut changed = self.points.is_empty();
        for (i, w) in self.weights.iter_mut().enumerate() {
            let new = weight(i);
            changed |= new != *w;
            *w = new;
        }
        if !changed {
            return;
        }
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        self.points.clear();
        for (i, (&w, &seed)) in self.weights.iter().zip(&self.seeds).enumerate() {
            for j in 0..points_for(w, total) {
                self.points
                    .push((self.hash.point(seed, j as u32), i as u32));
            }
        }
        self.points.sort_unstable();
    }

    /// Index of the first point at or after the key's position `h`.
    #[inline]
    pub fn start(&self, h: u32) -> usize {
        let i = self.points.partition_point(|p| p.0 < h);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// The peer plain consistent hashing gives key position `h`, ignoring
    /// eligibility (the study's mapping).
    pub fn owner(&self, h: u32) -> Option<usize> {
        self.points.get(self.start(h)).map(|p| p.1 as usize)
    }

    /// The peer for key position `h`: from the key's point clockwise, the
    /// first peer with `loads[i].eligible` whose `loads[i].inflight` is
    /// below its bound ([`load_bound`] over the eligible peers; any
    /// eligible peer with `Balance::Off`). `None` when no peer is eligible.
    /// Reads `loads[i].eligible` and `.inflight` only (the weights are the
    /// ring's). No allocation; O(n) for the sums plus the walk, which the
    /// module doc shows ends within one lap.
    pub fn pick(&self, h: u32, loads: &[PeerLoad], balance: Balance) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let mut total_inflight = 0u64;
        let mut total_weight = 0u64;
        for (l, &w) in loads.iter().zip(&self.weights) {
            if l.eligible && w > 0 {
                total_inflight += l.inflight;
                total_weight += u64::from(w);
            }
        }
        if total_weight == 0 {
            return None;
        }
        let start = self.start(h);
        let (after, before) = self.points.split_at(start);
        for &(_, i) in before.iter().chain(after) {
            let i = i as usize;
            let Some(l) = loads.get(i) else { continue };
            if !l.eligible {
                continue;
            }
            match balance {
                Balance::Off => return Some(i),
                Balance::Factor(c) => {
                    if l.inflight < load_bound(c, total_inflight, self.weights[i], total_weight) {
                        return Some(i);
                    }
                }
            }
        }
        // Unreachable by the argument in the module doc; kept so a broken
        // caller still gets the key's first eligible peer, never a loop.
        before
            .iter()
            .chain(after)
            .map(|p| p.1 as usize)
            .find(|&i| loads.get(i).is_some_and(|l| l.eligible))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect()
    }

    fn ring(hash: HashFn, weights: &[u32]) -> Ring {
        let names = names(weights.len());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut r = Ring::new(hash, &refs);
        r.rebuild(|i| weights[i]);
        r
    }

    fn idle(n: usize) -> Vec<PeerLoad> {
        vec![
            PeerLoad {
                eligible: true,
                ..PeerLoad::default()
            };
            n
        ]
    }

    fn key(i: u32) -> Vec<u8> {
        format!("/k/{i}").into_bytes()
    }

    #[test]
    fn points_follow_weights_then_are_capped() {
        assert_eq!(points_for(1, 3), 160);
        assert_eq!(points_for(5, 9), 800);
        assert_eq!(points_for(0, 9), 0);
        // 1,024 peers of weight 1,000: 256 each, 2^18 in all.
        let total = 1024 * 1000;
        assert_eq!(points_for(1000, total), 256);
        // A weight-1 peer among heavy ones keeps one point.
        assert_eq!(points_for(1, total), 1);
        let r = ring(HashFn::Xxh3, &[1000; 1024]);
        assert_eq!(r.len() as u64, MAX_POINTS);
    }

    #[test]
    fn bound_is_the_weighted_mean_times_the_factor() {
        // 3 equal peers, 8 in flight: mean of (8+1)/3 = 3, times 1.25 = 3.75 → 4.
        assert_eq!(load_bound(1250, 8, 1, 3), 4);
        assert_eq!(load_bound(1000, 8, 1, 3), 3);
        // Weighted: a weight-5 peer of 9 holds 5/9 of (T+1).
        assert_eq!(load_bound(1000, 8, 5, 9), 5);
        // Idle upstream: everyone may take the first request.
        assert_eq!(load_bound(1000, 0, 1, 1000), 1);
        assert_eq!(load_bound(u32::MAX, u64::MAX, u32::MAX, 1), u64::MAX);
    }

    #[test]
    fn same_key_same_peer_while_loads_are_even() {
        for h in HashFn::ALL {
            let r = ring(h, &[1, 1, 1, 1]);
            let loads = idle(4);
            for k in 0..1000 {
                let p = h.key(&key(k));
                let a = r.pick(p, &loads, Balance::default()).unwrap();
                assert_eq!(Some(a), r.owner(p), "{h:?}: idle → the owner");
                assert_eq!(r.pick(p, &loads, Balance::default()), Some(a));
            }
        }
    }

    #[test]
    fn ineligible_peers_are_skipped_to_the_next_on_the_ring() {
        let r = ring(HashFn::Xxh3, &[1, 1, 1]);
        let mut loads = idle(3);
        loads[1].eligible = false;
        for k in 0..2000 {
            let p = HashFn::Xxh3.key(&key(k));
            let got = r.pick(p, &loads, Balance::Off).unwrap();
            assert_ne!(got, 1);
            if r.owner(p) != Some(1) {
                assert_eq!(Some(got), r.owner(p), "others' keys stay");
            }
        }
        let none = vec![PeerLoad::default(); 3];
        assert_eq!(r.pick(1, &none, Balance::default()), None);
        assert_eq!(
            ring(HashFn::Xxh3, &[0, 0]).pick(1, &idle(2), Balance::Off),
            None
        );
    }

    /// Fraction of 10,000 keys whose owner differs between two rings.
    fn moved(a: &Ring, b: &Ring, map_b: impl Fn(usize) -> usize) -> f64 {
        let h = a.hash();
        let n = (0..10_000)
            .filter(|&k| {
                let p = h.key(&key(k));
                a.owner(p) != b.owner(p).map(&map_b)
            })
            .count();
        n as f64 / 10_000.0
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for h in HashFn::ALL {
            for n in 2..=8usize {
                let all = names(n);
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                let mut full = Ring::new(h, &refs);
                full.rebuild(|_| 1);
                for gone in 0..n {
                    let rest: Vec<&str> = refs
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != gone)
                        .map(|(_, s)| *s)
                        .collect();
                    let mut less = Ring::new(h, &rest);
                    less.rebuild(|_| 1);
                    let back = |i: usize| if i >= gone { i + 1 } else { i };
                    let m = moved(&full, &less, back);
                    // Only the removed peer's keys move: its share, about
                    // 1/n, with 160 points a few points of percent off.
                    let own = (0..10_000)
                        .filter(|&k| full.owner(h.key(&key(k))) == Some(gone))
                        .count() as f64
                        / 10_000.0;
                    assert!((m - own).abs() < 1e-9, "{h:?} n={n}: {m} vs own {own}");
                    assert!(m < 1.0 / n as f64 * 1.5 + 0.02, "{h:?} n={n}: moved {m}");
                }
            }
        }
    }

    #[test]
    fn weights_change_the_shares() {
        let r = ring(HashFn::Xxh3, &[1, 3, 5]);
        let mut count = [0u32; 3];
        for k in 0..30_000 {
            count[r.owner(HashFn::Xxh3.key(&key(k))).unwrap()] += 1;
        }
        let share: Vec<f64> = count.iter().map(|&c| c as f64 / 30_000.0).collect();
        for (s, want) in share.iter().zip([1.0 / 9.0, 3.0 / 9.0, 5.0 / 9.0]) {
            assert!((s - want).abs() < 0.05, "{share:?}");
        }
        // A weight raised keeps the peer's old points (a prefix): keys move
        // only towards it.
        let more = ring(HashFn::Xxh3, &[1, 3, 8]);
        for k in 0..10_000 {
            let p = HashFn::Xxh3.key(&key(k));
            let (a, b) = (r.owner(p).unwrap(), more.owner(p).unwrap());
            assert!(a == b || b == 2, "key {k} moved {a} → {b}");
        }
    }

    #[test]
    fn rebuild_reuses_its_buffer() {
        let mut r = ring(HashFn::Xxh3, &[5, 5, 5]);
        let cap = r.points.capacity();
        let ptr = r.points.as_ptr();
        r.rebuild(|i| [1, 3, 5][i]);
        assert_eq!(r.points.capacity(), cap);
        assert_eq!(r.points.as_ptr(), ptr);
        assert_eq!(r.len(), 9 * 160);
        assert_eq!(r.points_of(2), 800);
    }

    #[test]
    fn same_weights_keep_the_ring() {
        let mut r = ring(HashFn::Xxh3, &[2, 1]);
        let before = r.points.clone();
        r.points[0].0 ^= 1; // a mark a rebuild would erase
        r.rebuild(|i| [2, 1][i]);
        assert_ne!(r.points, before, "not rebuilt");
        r.rebuild(|i| [1, 1][i]);
        assert_eq!(r.len(), 320);
        r.rebuild(|i| [2, 1][i]);
        assert_eq!(r.points, before);
    }

    #[test]
    fn duplicate_names_get_their_own_points() {
        let mut r = Ring::new(HashFn::Xxh3, &["a:1", "a:1"]);
        r.rebuild(|_| 1);
        let mut count = [0u32; 2];
        for k in 0..10_000 {
            count[r.owner(HashFn::Xxh3.key(&key(k))).unwrap()] += 1;
        }
        assert!(count.iter().all(|&c| c > 3000), "{count:?}");
    }

    #[test]
    fn hot_key_spreads_over_the_ring_within_the_bound() {
        // One key, many requests in flight at once: each placed request
        // stays in flight. The owner fills to its bound, then the next
        // peers on the ring take over.
        let r = ring(HashFn::Xxh3, &[1; 5]);
        let mut loads = idle(5);
        let p = HashFn::Xxh3.key(b"/hot");
        let owner = r.owner(p).unwrap();
        for _ in 0..100 {
            let i = r.pick(p, &loads, Balance::Factor(1250)).unwrap();
            loads[i].inflight += 1;
        }
        let max = loads.iter().map(|l| l.inflight).max().unwrap();
        assert!(max <= 25, "{loads:?}"); // ⌈1.25 · 100 / 5⌉
        assert!(loads[owner].inflight >= 20);
        // Plain consistent hashing sends them all to the owner.
        let mut plain = idle(5);
        for _ in 0..100 {
            let i = r.pick(p, &plain, Balance::Off).unwrap();
            plain[i].inflight += 1;
        }
        assert_eq!(plain[owner].inflight, 100);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the loads, weights and eligibility, a pick returns an
        /// eligible peer under its bound whenever one is eligible (the
        /// walk's termination argument), and `None` otherwise.
        #[test]
        fn pick_finds_a_peer_under_its_bound(
            peers in prop::collection::vec((1u32..6, 0u64..50, any::<bool>()), 1..12),
            permille in 1000u32..3000,
            h in any::<u32>(),
        ) {
            let weights: Vec<u32> = peers.iter().map(|p| p.0).collect();
            let r = ring(HashFn::Xxh3, &weights);
            let loads: Vec<PeerLoad> = peers
                .iter()
                .map(|&(w, inflight, eligible)| PeerLoad { weight: w, inflight, eligible, ..PeerLoad::default() })
                .collect();
            let t: u64 = loads.iter().filter(|l| l.eligible).map(|l| l.inflight).sum();
            let w: u64 = peers.iter().filter(|p| p.2).map(|p| u64::from(p.0)).sum();
            match r.pick(h, &loads, Balance::Factor(permille)) {
                Some(i) => {
                    prop_assert!(loads[i].eligible);
                    prop_assert!(loads[i].inflight < load_bound(permille, t, weights[i], w));
                }
                None => prop_assert!(loads.iter().all(|l| !l.eligible)),
            }
        }

        /// A hot key range (every request's key from a few positions) with
        /// requests that stay in flight: no peer ever exceeds the bound in
        /// force when its last request was placed.
        #[test]
        fn hot_range_never_exceeds_the_bound(
            n in 2usize..9,
            permille in 1000u32..2000,
            keys in prop::collection::vec(0u32..4, 50..300),
            finish in prop::collection::vec(any::<bool>(), 300),
        ) {
            let r = ring(HashFn::Xxh3, &vec![1; n]);
            let mut loads = idle(n);
            for (step, k) in keys.iter().enumerate() {
                let t: u64 = loads.iter().map(|l| l.inflight).sum();
                let bound = load_bound(permille, t, 1, n as u64);
                let i = r.pick(HashFn::Xxh3.key(&key(*k)), &loads, Balance::Factor(permille)).unwrap();
                loads[i].inflight += 1;
                prop_assert!(loads[i].inflight <= bound, "peer {i}: {} > {bound}", loads[i].inflight);
                // Some requests finish (the busiest peer's first).
                if finish[step] {
                    let busiest = (0..n).max_by_key(|&j| loads[j].inflight).unwrap();
                    loads[busiest].inflight -= 1;
                }
            }
        }

        /// Consistency: with even loads every key stays with its owner
        /// across repeated picks, whatever the weights.
        #[test]
        fn stable_while_loads_are_even(
            weights in prop::collection::vec(1u32..8, 2..8),
            ks in prop::collection::vec(any::<u32>(), 1..50),
        ) {
            let r = ring(HashFn::Xxh3, &weights);
            let loads = idle(weights.len());
            for k in ks {
                prop_assert_eq!(r.pick(k, &loads, Balance::default()), r.owner(k));
            }
        }
    }
}
