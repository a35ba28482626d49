//! Per-peer counters and the statistics of one decision interval.
//!
//! The module keeps [`PeerCounters`] cumulatively in shared memory; two
//! snapshots one interval apart give the interval's deltas, and
//! [`PeerInterval::from_delta`] turns those into rates and percentiles.

use serde::{Deserialize, Serialize};

/// Number of latency histogram buckets.
pub const LATENCY_BUCKETS: usize = 30;

/// Upper bounds (ms, inclusive) of the first `LATENCY_BUCKETS - 1` buckets;
/// the last bucket is open.
pub const LATENCY_BOUNDS_MS: [u64; LATENCY_BUCKETS - 1] = [
    1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 125, 150, 200, 250, 300, 400, 500, 750,
    1000, 1500, 2000, 3000, 5000, 10000,
];

/// The bucket of a response time: bucket `i` holds `(bound[i-1], bound[i]]`.
/// Called per request: a binary search over 29 constants, no allocation.
#[inline]
pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|&b| b < ms)
}

/// The `q`-quantile (0..=1) of a latency histogram, ms, interpolating
/// linearly inside the bucket that holds it. The open last bucket is taken
/// as twice its lower bound wide. An empty histogram gives 0.
pub fn percentile(hist: &[u64; LATENCY_BUCKETS], q: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lo = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1] as f64
            };
            let hi = if i < LATENCY_BOUNDS_MS.len() {
                LATENCY_BOUNDS_MS[i] as f64
            } else {
                2.0 * lo
            };
            let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            return lo + within * (hi - lo);
        }
        seen += n;
    }
    // Unreachable for q <= 1, but keep a sane answer.
    *LATENCY_BOUNDS_MS.last().unwrap_or(&0) as f64
}

/// Counters of one peer: cumulative in the zone, per interval in the sample
/// log. Field names are those of the sample log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerCounters {
    /// Tries that finished at this peer.
    pub requests: u64,
    /// Bytes received from the peer.
    pub in_bytes: u64,
    /// Bytes sent to the peer.
    pub out_bytes: u64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// Tries nginx counted as failures of the peer.
    pub failures: u64,
    /// Sum of response times, ms.
    pub response_msec: u64,
    /// Response times by [`LATENCY_BOUNDS_MS`] bucket.
    pub latency_hist: [u64; LATENCY_BUCKETS],
    /// Requests at the peer when the snapshot was taken (a gauge).
    pub inflight: u64,
}

impl PeerCounters {
    /// The counts added since `prev` (the gauge `inflight` is taken from
    /// `self`). If any counter went backwards the zone was re-created (a
    /// reload with a new layout, a restart): everything counted so far
    /// belongs to this interval, so `self` is returned as is.
    pub fn since(&self, prev: &PeerCounters) -> PeerCounters {
        let backwards = self.requests < prev.requests
            || self.in_bytes < prev.in_bytes
            || self.out_bytes < prev.out_bytes
            || self.failures < prev.failures
            || self.response_msec < prev.response_msec
            || self
                .responses
                .iter()
                .zip(&prev.responses)
                .any(|(a, b)| a < b)
            || self
                .latency_hist
                .iter()
                .zip(&prev.latency_hist)
                .any(|(a, b)| a < b);
        if backwards {
            return *self;
        }
        let mut d = PeerCounters {
            requests: self.requests - prev.requests,
            in_bytes: self.in_bytes - prev.in_bytes,
            out_bytes: self.out_bytes - prev.out_bytes,
            failures: self.failures - prev.failures,
            response_msec: self.response_msec - prev.response_msec,
            inflight: self.inflight,
            ..PeerCounters::default()
        };
        for (o, (a, b)) in d
            .responses
            .iter_mut()
            .zip(self.responses.iter().zip(&prev.responses))
        {
            *o = a - b;
        }
        for (o, (a, b)) in d
            .latency_hist
            .iter_mut()
            .zip(self.latency_hist.iter().zip(&prev.latency_hist))
        {
            *o = a - b;
        }
        d
    }

    /// Adds `other` into `self` (saturating), gauges included.
    pub fn merge(&mut self, other: &PeerCounters) {
        self.requests = self.requests.saturating_add(other.requests);
        self.in_bytes = self.in_bytes.saturating_add(other.in_bytes);
        self.out_bytes = self.out_bytes.saturating_add(other.out_bytes);
        self.failures = self.failures.saturating_add(other.failures);
        self.response_msec = self.response_msec.saturating_add(other.response_msec);
        self.inflight = self.inflight.saturating_add(other.inflight);
        for (a, b) in self.responses.iter_mut().zip(&other.responses) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.latency_hist.iter_mut().zip(&other.latency_hist) {
            *a = a.saturating_add(*b);
        }
    }
}

/// Statistics of one peer (or one whole upstream) over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PeerInterval {
    /// Tries finished in the interval.
    pub requests: u64,
    /// Tries per second.
    pub rps: f64,
    /// Bytes per second received from the peer.
    pub in_bytes_rate: f64,
    /// Bytes per second sent to the peer.
    pub out_bytes_rate: f64,
    /// `(5xx + failures) / max(requests, 1)`.
    pub error_rate: f64,
    /// Mean response time, ms (0 without requests).
    pub latency_mean_ms: f64,
    /// Median response time, ms.
    pub latency_p50_ms: f64,
    /// 95th percentile response time, ms.
    pub latency_p95_ms: f64,
    /// 99th percentile response time, ms.
    pub latency_p99_ms: f64,
    /// Requests at the peer at the end of the interval.
    pub inflight: f64,
    /// This peer's share of its upstream's tries (1 for an upstream).
    pub share: f64,
}

impl PeerInterval {
    /// Interval statistics from one interval's deltas; `upstream_requests`
    /// is the tries of the whole upstream (for `share`), `dt_ms` the
    /// interval's length.
    pub fn from_delta(d: &PeerCounters, upstream_requests: u64, dt_ms: u64) -> PeerInterval {
        let secs = (dt_ms.max(1)) as f64 / 1000.0;
        let n = d.requests;
        PeerInterval {
            requests: n,
            rps: n as f64 / secs,
            in_bytes_rate: d.in_bytes as f64 / secs,
            out_bytes_rate: d.out_bytes as f64 / secs,
            error_rate: (d.responses[4] + d.failures) as f64 / n.max(1) as f64,
            latency_mean_ms: if n == 0 {
                0.0
            } else {
                d.response_msec as f64 / n as f64
            },
            latency_p50_ms: percentile(&d.latency_hist, 0.50),
            latency_p95_ms: percentile(&d.latency_hist, 0.95),
            latency_p99_ms: percentile(&d.latency_hist, 0.99),
            inflight: d.inflight as f64,
            share: if upstream_requests == 0 {
                0.0
            } else {
                n as f64 / upstream_requests as f64
            },
        }
    }
}

/// One interval of a whole agent: per upstream, per peer, and each
/// upstream's aggregate (counts summed, latency from the merged histogram).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentInterval {
    /// `peers[u][p]`.
    pub peers: Vec<Vec<PeerInterval>>,
    /// `upstreams[u]`: the upstream as a whole (`share` = 1).
    pub upstreams: Vec<PeerInterval>,
}

impl AgentInterval {
    /// From per-interval deltas `deltas[u][p]` over `dt_ms`.
    pub fn from_deltas(deltas: &[Vec<PeerCounters>], dt_ms: u64) -> AgentInterval {
        let mut out = AgentInterval::default();
        for peers in deltas {
            let mut total = PeerCounters::default();
            for d in peers {
                total.merge(d);
            }
            out.peers.push(
                peers
                    .iter()
                    .map(|d| PeerInterval::from_delta(d, total.requests, dt_ms))
                    .collect(),
            );
            let mut agg = PeerInterval::from_delta(&total, total.requests, dt_ms);
            agg.share = 1.0;
            out.upstreams.push(agg);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_follow_the_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(4), 3);
        assert_eq!(latency_bucket(5), 3);
        assert_eq!(latency_bucket(10_000), LATENCY_BUCKETS - 2);
        assert_eq!(latency_bucket(10_001), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn percentile_interpolates_inside_a_bucket() {
        let mut h = [0u64; LATENCY_BUCKETS];
        h[latency_bucket(8)] = 100; // (7, 10]
        assert!((percentile(&h, 0.5) - 8.5).abs() < 1e-9);
        assert!((percentile(&h, 1.0) - 10.0).abs() < 1e-9);
        assert_eq!(percentile(&[0; LATENCY_BUCKETS], 0.99), 0.0);
    }

    #[test]
    fn delta_and_interval_statistics() {
        let prev = PeerCounters {
            requests: 10,
            response_msec: 100,
            ..PeerCounters::default()
        };
        let mut cur = prev;
        cur.requests = 30;
        cur.response_msec = 500;
        cur.responses = [0, 18, 0, 0, 2];
        cur.failures = 1;
        cur.inflight = 3;
        cur.latency_hist[latency_bucket(20)] = 20;
        let d = cur.since(&prev);
        assert_eq!(d.requests, 20);
        assert_eq!(d.inflight, 3);
        let i = PeerInterval::from_delta(&d, 40, 2000);
        assert_eq!(i.rps, 10.0);
        assert_eq!(i.latency_mean_ms, 20.0);
        assert!((i.error_rate - 3.0 / 20.0).abs() < 1e-12);
        assert_eq!(i.share, 0.5);
        assert!(i.latency_p95_ms > 15.0 && i.latency_p95_ms <= 20.0);
    }

    #[test]
    fn agent_interval_aggregates_upstreams() {
        let mut a = PeerCounters {
            requests: 30,
            ..PeerCounters::default()
        };
        a.latency_hist[latency_bucket(5)] = 30;
        let mut b = PeerCounters {
            requests: 10,
            ..PeerCounters::default()
        };
        b.latency_hist[latency_bucket(100)] = 10;
        let ai = AgentInterval::from_deltas(&[vec![a, b]], 1000);
        assert_eq!(ai.upstreams[0].requests, 40);
        assert_eq!(ai.peers[0][0].share, 0.75);
        assert!(ai.upstreams[0].latency_p99_ms > 75.0);
    }

    fn counters() -> impl Strategy<Value = PeerCounters> {
        (
            any::<u32>(),
            any::<u32>(),
            prop::array::uniform5(0u64..1000),
            prop::array::uniform30(0u64..1000),
        )
            .prop_map(|(r, m, resp, hist)| PeerCounters {
                requests: r as u64,
                response_msec: m as u64,
                responses: resp,
                latency_hist: hist,
                ..PeerCounters::default()
            })
    }

    /// Every counter of `c` as one list (the gauge `inflight` excluded).
    fn cumulative_fields(c: &PeerCounters) -> Vec<u64> {
        let mut v = vec![
            c.requests,
            c.in_bytes,
            c.out_bytes,
            c.failures,
            c.response_msec,
        ];
        v.extend(c.responses);
        v.extend(c.latency_hist);
        v
    }

    /// `cur` and an earlier snapshot: `cur` minus random amounts, or (a
    /// third of the time) an unrelated snapshot, as after a zone reset.
    fn snapshot_pair() -> impl Strategy<Value = (PeerCounters, PeerCounters)> {
        (counters(), counters(), any::<u64>(), 0u8..3).prop_map(|(cur, other, seed, kind)| {
            if kind == 0 {
                return (cur, other);
            }
            let mut prev = cur;
            // Deterministic per-field decrements from the seed.
            let mut r = seed | 1;
            let mut dec = |x: u64| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                x - r % (x + 1)
            };
            prev.requests = dec(prev.requests);
            prev.in_bytes = dec(prev.in_bytes);
            prev.out_bytes = dec(prev.out_bytes);
            prev.failures = dec(prev.failures);
            prev.response_msec = dec(prev.response_msec);
            prev.responses = prev.responses.map(&mut dec);
            prev.latency_hist = prev.latency_hist.map(&mut dec);
            prev.inflight = 7;
            (cur, prev)
        })
    }

    /// The bounds `[lo, hi]` of the bucket that holds the `q`-quantile:
    /// the first non-empty bucket whose cumulative count reaches `q·total`.
    fn quantile_bucket_bounds(hist: &[u64; LATENCY_BUCKETS], q: f64) -> (f64, f64) {
        let total: u64 = hist.iter().sum();
        let mut seen = 0;
        for (i, &n) in hist.iter().enumerate() {
            seen += n;
            if n > 0 && seen as f64 >= q * total as f64 {
                let lo = if i == 0 { 0 } else { LATENCY_BOUNDS_MS[i - 1] };
                let hi = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(2 * lo);
                return (lo as f64, hi as f64);
            }
        }
        unreachable!("q <= 1 is reached by the last non-empty bucket")
    }

    proptest! {
        #[test]
        fn since_is_the_delta_or_a_restart((cur, prev) in snapshot_pair()) {
            let d = cur.since(&prev);
            let (c, p, got) = (cumulative_fields(&cur), cumulative_fields(&prev), cumulative_fields(&d));
            if c.iter().zip(&p).all(|(c, p)| c >= p) {
                for ((c, p), got) in c.iter().zip(&p).zip(&got) {
                    prop_assert_eq!(*got, c - p);
                }
            } else {
                // A counter went backwards: everything since the restart.
                prop_assert_eq!(got, c);
            }
            prop_assert_eq!(d.inflight, cur.inflight, "the gauge is the current value");
        }

        #[test]
        fn percentiles_are_monotone_and_inside_their_bucket(
            hist in prop::array::uniform30(0u64..50),
            q1 in 0.0f64..=1.0,
            q2 in 0.0f64..=1.0,
        ) {
            let (lo_q, hi_q) = if q1 <= q2 { (q1, q2) } else { (q2, q1) };
            let (a, b) = (percentile(&hist, lo_q), percentile(&hist, hi_q));
            prop_assert!(a <= b + 1e-9, "p({lo_q}) = {a} > p({hi_q}) = {b}");
            if hist.iter().sum::<u64>() == 0 {
                prop_assert_eq!((a, b), (0.0, 0.0));
            } else {
                for (q, v) in [(lo_q, a), (hi_q, b)] {
                    let (lo, hi) = quantile_bucket_bounds(&hist, q);
                    prop_assert!(lo <= v && v <= hi, "p({q}) = {v} outside [{lo}, {hi}]");
                }
            }
        }
    }
}
