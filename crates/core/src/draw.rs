//! The power of two choices in O(1): weighted draws from a table built once
//! per decision, eligibility and load read only for the peers drawn.
//!
//! [`crate::choose::p2c`] scans every peer on every request: fine for three
//! peers, not for a thousand. Here the published weights become a Walker
//! alias table ([`rand_distr::WeightedAliasIndex`], O(1) per draw) once per
//! decision; per request, a peer is drawn from the table and then accepted
//! with probability `accept` — its eligibility (not down, not failed, under
//! `max_conns`, not tried: 0 or 1) times any share multiplier (round
//! robin's back-off `effective_weight / weight`, the slow-start factor).
//! That is rejection sampling: an accepted draw is distributed exactly as a
//! draw by `weight · accept` among the eligible peers, which is what the
//! scan draws from. The second draw also rejects the first peer. After
//! [`DRAW_ATTEMPTS`] rejections (most peers ineligible) the caller falls
//! back to the scan, whose distribution is the same, so the mixture is
//! exact.

use rand::Rng;
use rand_distr::{Distribution, WeightedAliasIndex};

#[cfg(test)]
use crate::choose::p2c_second;
use crate::choose::{cost, PeerLoad};

/// Draws tried for each of the two choices before falling back to a scan.
pub const DRAW_ATTEMPTS: usize = 16;

/// The published weights of one upstream as an alias table.
#[derive(Debug, Clone)]
pub struct DrawTable {
    alias: Option<WeightedAliasIndex<u32>>,
    len: usize,
}

impl DrawTable {
    /// A table drawing peer `i` with probability `weights[i] / Σ weights`
    /// (a weight of 0 is never drawn). Allocates: build it once per
    /// decision, not per request.
    pub fn new(weights: &[u32]) -> DrawTable {
        DrawTable {
            alias: WeightedAliasIndex::new(weights.to_vec()).ok(),
            len: weights.len(),
        }
    }

    /// Number of peers the table was built for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no peer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One weighted draw, O(1); `None` when every weight is 0.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        self.alias.as_ref().map(|a| a.sample(rng))
    }
}

/// What a drawn peer looks like now: its load for the cost, and the
/// probability of keeping the draw (0 when not eligible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    /// Weight, in flight and latency for the cost ([`PeerLoad::eligible`]
    /// is ignored here: `accept` says it).
    pub load: PeerLoad,
    /// Probability of keeping the draw, `0..=1`.
    pub accept: f64,
}

/// The outcome of [`p2c_drawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The chosen peer.
    Peer(usize),
    /// Too many rejections for the first draw: scan all peers with
    /// [`crate::choose::p2c`].
    Scan,
    /// The first draw is this peer, the second kept being rejected: scan
    /// for the second with [`crate::choose::p2c_second`] (a scan from
    /// scratch would not be conditioned on the first draw, and bias it).
    ScanSecond(usize),
}

fn draw_one<R: Rng + ?Sized>(
    table: &DrawTable,
    skip: Option<usize>,
    look: &mut impl FnMut(usize) -> Option<Drawn>,
    rng: &mut R,
) -> Option<(usize, PeerLoad)> {
    for _ in 0..DRAW_ATTEMPTS {
        let i = table.sample(rng)?;
        if Some(i) == skip {
            continue;
        }
        let Some(d) = look(i) else {
            continue;
        };
        if d.accept >= 1.0 || (d.accept > 0.0 && rng.gen::<f64>() < d.accept) {
            return Some((i, d.load));
        }
    }
    None
}

/// The power of two choices by table draws: two different accepted
/// peers, the one with the lower cost wins (the first on a tie), exactly
/// as [`crate::choose::p2c`]. `look(i)` reads peer `i` (called only for
/// drawn peers; `None` = not eligible). With one peer in the table the
/// only accepted peer wins; when the draws keep being rejected the
/// answer is [`Pick::Scan`].
pub fn p2c_drawn<R: Rng + ?Sized>(
    table: &DrawTable,
    mut look: impl FnMut(usize) -> Option<Drawn>,
    rng: &mut R,
) -> Pick {
    let Some((a, la)) = draw_one(table, None, &mut look, rng) else {
        return Pick::Scan;
    };
    if table.len() == 1 {
        return Pick::Peer(a);
    }
    let Some((b, lb)) = draw_one(table, Some(a), &mut look, rng) else {
        return Pick::ScanSecond(a);
    };
    Pick::Peer(if cost(&lb) < cost(&la) { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choose::p2c;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn load(weight: u32, inflight: u64, latency: f64) -> PeerLoad {
        PeerLoad {
            weight,
            draw_weight: weight,
            inflight,
            latency_ewma_ms: latency,
            eligible: true,
        }
    }

    /// Shares of `n` picks by the table path and by the scan, side by side.
    fn shares(
        weights: &[u32],
        accept: &[f64],
        loads: &[PeerLoad],
        n: usize,
        seed: u64,
    ) -> (Vec<f64>, Vec<f64>, usize) {
        let table = DrawTable::new(weights);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut drawn = vec![0usize; weights.len()];
        let mut scans = 0;
        // The scan's equivalent: draw weight = weight · accept (scaled).
        let scan_loads: Vec<PeerLoad> = loads
            .iter()
            .zip(weights.iter().zip(accept))
            .map(|(l, (&w, &a))| PeerLoad {
                draw_weight: ((f64::from(w) * a * 1000.0).round() as u32).max(1),
                eligible: a > 0.0 && w > 0,
                ..*l
            })
            .collect();
        for _ in 0..n {
            let pick = p2c_drawn(
                &table,
                |i| {
                    (accept[i] > 0.0).then_some(Drawn {
                        load: loads[i],
                        accept: accept[i],
                    })
                },
                &mut rng,
            );
            let i = match pick {
                Pick::Peer(i) => i,
                Pick::Scan => {
                    scans += 1;
                    p2c(&scan_loads, &mut rng).unwrap()
                }
                Pick::ScanSecond(a) => {
                    scans += 1;
                    p2c_second(&scan_loads, a, &mut rng)
                }
            };
            drawn[i] += 1;
        }
        let mut scanned = vec![0usize; weights.len()];
        for _ in 0..n {
            scanned[p2c(&scan_loads, &mut rng).unwrap()] += 1;
        }
        let f = |v: Vec<usize>| v.iter().map(|&c| c as f64 / n as f64).collect();
        (f(drawn), f(scanned), scans)
    }

    #[test]
    fn table_draws_match_the_scan() {
        let weights = [5, 3, 1, 1];
        let loads = [
            load(5, 2, 10.0),
            load(3, 0, 12.0),
            load(1, 1, 3.0),
            load(1, 0, 40.0),
        ];
        for accept in [
            [1.0, 1.0, 1.0, 1.0],
            [1.0, 0.0, 1.0, 0.3],
            [0.5, 1.0, 0.0, 1.0],
        ] {
            let (t, s, scans) = shares(&weights, &accept, &loads, 60_000, 3);
            for (x, y) in t.iter().zip(&s) {
                assert!(
                    (x - y).abs() < 0.012,
                    "{accept:?}: table {t:?} vs scan {s:?}"
                );
            }
            assert!(scans < 6000, "{accept:?}: {scans} scans");
            if accept[1] == 0.0 {
                assert_eq!(t[1], 0.0, "an ineligible peer is never chosen");
            }
        }
    }

    #[test]
    fn mostly_ineligible_peers_fall_back_to_the_scan() {
        let weights = vec![1u32; 200];
        let table = DrawTable::new(&weights);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut scans = 0;
        for _ in 0..1000 {
            let pick = p2c_drawn(
                &table,
                |i| {
                    (i == 7 || i == 150).then_some(Drawn {
                        load: load(1, 0, 1.0),
                        accept: 1.0,
                    })
                },
                &mut rng,
            );
            match pick {
                Pick::Peer(i) | Pick::ScanSecond(i) => assert!(i == 7 || i == 150),
                Pick::Scan => scans += 1,
            }
            if let Pick::ScanSecond(_) = pick {
                scans += 1;
            }
        }
        assert!(scans > 500, "two eligible of 200: mostly scans ({scans})");
    }

    #[test]
    fn one_peer_and_no_weight() {
        let mut rng = SmallRng::seed_from_u64(2);
        let one = DrawTable::new(&[4]);
        let look = |_| {
            Some(Drawn {
                load: load(4, 0, 1.0),
                accept: 1.0,
            })
        };
        assert_eq!(p2c_drawn(&one, look, &mut rng), Pick::Peer(0));
        let none = DrawTable::new(&[0, 0]);
        assert_eq!(p2c_drawn(&none, look, &mut rng), Pick::Scan);
        assert!(DrawTable::new(&[]).is_empty());
    }

    #[test]
    fn the_cheaper_of_two_wins() {
        let table = DrawTable::new(&[1, 1]);
        let mut rng = SmallRng::seed_from_u64(5);
        let loads = [load(1, 9, 10.0), load(1, 0, 10.0)];
        for _ in 0..200 {
            let pick = p2c_drawn(
                &table,
                |i| {
                    Some(Drawn {
                        load: loads[i],
                        accept: 1.0,
                    })
                },
                &mut rng,
            );
            assert_eq!(pick, Pick::Peer(1));
        }
    }
}
