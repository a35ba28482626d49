//! Hot-path costs: one peer choice (per request) at 3, 64 and 1,024 peers,
//! the free path's counter update, one state classification (per
//! interval), plus loading a policy (per reload).
//!   cargo bench -p deep-sched-core --bench core

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use deep_sched_core::choose::{decayed_latency, p2c, PeerLoad};
use deep_sched_core::counters::latency_bucket;
use deep_sched_core::draw::{p2c_drawn, DrawTable, Drawn};
use deep_sched_core::gmm::{CovarianceKind, Gmm};
use deep_sched_core::hash::{Balance, HashFn, Ring};
use deep_sched_core::policy::Policy;
use deep_sched_core::publish::Publication;
use deep_sched_core::slots::{PeerSlot, TryOutcome};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;

const K: usize = 27;
const D: usize = 27;

/// A random SPD matrix `A Aᵀ + D·I`, row-major.
fn spd(rng: &mut SmallRng) -> Vec<f64> {
    let a: Vec<f64> = (0..D * D).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut m = vec![0.0; D * D];
    for i in 0..D {
        for j in 0..D {
            m[i * D + j] = (0..D).map(|k| a[i * D + k] * a[j * D + k]).sum::<f64>();
        }
        m[i * D + i] += D as f64;
    }
    m
}

fn mixture(rng: &mut SmallRng) -> (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let weights = vec![1.0 / K as f64; K];
    let means = (0..K)
        .map(|_| (0..D).map(|_| rng.gen_range(-3.0..3.0)).collect())
        .collect();
    let covs = (0..K).map(|_| spd(rng)).collect();
    (weights, means, covs)
}

fn bench_choose(c: &mut Criterion) {
    let mut g = c.benchmark_group("choose");
    let weights = [5u32, 3, 1];
    let loads: Vec<PeerLoad> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| PeerLoad {
            weight: w,
            draw_weight: w,
            inflight: i as u64,
            latency_ewma_ms: 10.0,
            eligible: true,
        })
        .collect();
    let mut rng = SmallRng::seed_from_u64(1);
    g.bench_function("p2c_3_peers", |b| {
        b.iter(|| p2c(black_box(&loads), &mut rng))
    });
    g.bench_function("latency_bucket", |b| {
        b.iter(|| latency_bucket(black_box(137)))
    });
    g.bench_function("decayed_latency", |b| {
        b.iter(|| decayed_latency(black_box(37.5), black_box(420)))
    });
    g.finish();
}

/// Peer slots with latencies and in-flight counts, as the zone holds them.
fn slots(n: usize, rng: &mut SmallRng) -> Vec<PeerSlot> {
    (0..n)
        .map(|_| {
            let s = PeerSlot::default();
            s.latency_ewma
                .store(rng.gen_range(2.0f64..50.0).to_bits(), Ordering::Relaxed);
            s.latency_stamp_ms.store(1_000, Ordering::Relaxed);
            s.inflight.store(rng.gen_range(0..8), Ordering::Relaxed);
            s
        })
        .collect()
}

/// One p2c pick as the module makes it: from the decision's alias table,
/// reading only the two drawn peers' slots (`table`), against the full scan
/// over every peer's slot (`scan`, the fallback and the old path).
fn bench_pick_at_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    let mut rng = SmallRng::seed_from_u64(3);
    for n in [3usize, 64, 1024] {
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i % 5) as u32).collect();
        let zone = slots(n, &mut rng);
        let table = DrawTable::new(&weights);
        let now = 1_050;
        let load = |i: usize| PeerLoad {
            weight: weights[i] * 64,
            draw_weight: weights[i] * 64,
            inflight: zone[i].inflight(),
            latency_ewma_ms: zone[i].latency_ms(now),
            eligible: true,
        };
        g.bench_function(format!("p2c_table_{n}"), |b| {
            b.iter(|| {
                let pick = p2c_drawn(
                    &table,
                    |i| {
                        Some(Drawn {
                            load: load(i),
                            accept: 1.0,
                        })
                    },
                    &mut rng,
                );
                // A rare ScanSecond (16 redraws of the first peer) costs the
                // module a scan; it is left out here.
                pick
            })
        });
        let mut loads = vec![PeerLoad::default(); n];
        g.bench_function(format!("p2c_scan_{n}"), |b| {
            b.iter(|| {
                for (i, l) in loads.iter_mut().enumerate() {
                    *l = load(i);
                }
                p2c(black_box(&loads), &mut rng)
            })
        });
        // choose=wrr: what the module adds to round robin's own pick: the
        // decision check (one load), the address → index look-up, and the
        // in-flight count (gauge and the worker's shard).
        let publication = Publication::new();
        let index: FxHashMap<usize, usize> = (0..n).map(|i| (0x7f00_0000 + i * 256, i)).collect();
        let shard: Vec<AtomicI64> = (0..n).map(|_| AtomicI64::new(0)).collect();
        let mut k = 0usize;
        g.bench_function(format!("wrr_overhead_{n}"), |b| {
            b.iter(|| {
                k = (k + 7) % n;
                let epoch = publication.epoch();
                let i = index[&black_box(0x7f00_0000 + k * 256)];
                zone[i].inflight.fetch_add(1, Ordering::Relaxed);
                shard[i].fetch_add(1, Ordering::Relaxed);
                (epoch, i)
            })
        });
    }
    g.finish();
}

/// The free path: one try recorded in the peer's slot (counters, histogram,
/// latency estimate, failure run) and the in-flight count released.
/// `choose=hash`: one pick (ring lookup, the sums of the bound over every
/// peer, the bounded walk) at 64 peers x 160 points and at the capped ring
/// of 1,024 peers of weight 1,000; hashing one key; one rebuild.
fn bench_hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    let mut rng = SmallRng::seed_from_u64(4);
    let keys: Vec<u32> = (0..1024)
        .map(|i| HashFn::Xxh3.key(format!("/wrk2-api/user-timeline/read?user={i}").as_bytes()))
        .collect();
    for (n, w, id) in [
        (64usize, 1u32, "pick_64x160"),
        (1024, 1000, "pick_1024x1000"),
    ] {
        let names: Vec<String> = (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut ring = Ring::new(HashFn::Xxh3, &refs);
        ring.rebuild(|_| w);
        // Busy but even: 0-7 in flight each, all eligible.
        let loads: Vec<PeerLoad> = (0..n)
            .map(|_| PeerLoad {
                weight: w,
                inflight: rng.gen_range(0..8),
                eligible: true,
                ..PeerLoad::default()
            })
            .collect();
        let mut k = 0usize;
        g.bench_function(id, |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                ring.pick(black_box(keys[k]), black_box(&loads), Balance::Factor(1250))
            })
        });
    }
    g.bench_function("key_xxh3", |b| {
        b.iter(|| HashFn::Xxh3.key(black_box(b"/wrk2-api/user-timeline/read?user=12345")))
    });
    let names: Vec<String> = (0..64).map(|i| format!("10.0.0.{i}:80")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut ring = Ring::new(HashFn::Xxh3, &refs);
    let mut flip = 0u32;
    g.bench_function("rebuild_64x160", |b| {
        b.iter(|| {
            flip ^= 1;
            ring.rebuild(|i| 1 + (i as u32 + flip) % 2);
        })
    });
    let names: Vec<String> = (0..1024)
        .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut ring = Ring::new(HashFn::Xxh3, &refs);
    g.sample_size(10);
    g.bench_function("rebuild_1024x1000", |b| {
        b.iter(|| {
            flip ^= 1;
            ring.rebuild(|i| 999 + (i as u32 + flip) % 2);
        })
    });
    g.finish();
}

fn bench_free(c: &mut Criterion) {
    let slot = PeerSlot::default();
    let shard = AtomicI64::new(0);
    let outcome = TryOutcome {
        status_class: Some(1),
        failed: false,
        response_msec: 37,
        header_msec: Some(12),
        in_bytes: 2_000,
        out_bytes: 300,
    };
    let mut now = 1_000u64;
    c.bench_function("free/record", |b| {
        b.iter(|| {
            now += 1;
            let back = slot.record(black_box(&outcome), now, 1);
            slot.inflight.fetch_sub(1, Ordering::Relaxed);
            shard.fetch_sub(1, Ordering::Relaxed);
            back
        })
    });
    // What the dispatch-interval credit adds to it: the sample log's
    // `dispatched` counts (one epoch load in the module, four atomic adds).
    let epoch = AtomicU64::new(7);
    c.bench_function("free/dispatch", |b| {
        b.iter(|| {
            let e = epoch.load(Ordering::Relaxed);
            slot.record_dispatch(black_box(&outcome), black_box(6), e);
        })
    });
}

fn bench_classify(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(2);
    let (w, m, cov) = mixture(&mut rng);
    let full = Gmm::from_covariances(CovarianceKind::Full, &w, &m, &cov).unwrap();
    let x: Vec<f64> = (0..D).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let mut out = vec![0.0; K];
    let mut scratch = vec![0.0; full.scratch_len()];
    c.bench_function("classify_k27_d27_full", |b| {
        b.iter(|| full.classify_with(black_box(&x), &mut out, &mut scratch))
    });
}

fn bench_policy_load(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(3);
    let (w, m, cov) = mixture(&mut rng);
    let peers: Vec<String> = (0..9).map(|i| format!("10.0.0.{i}:80")).collect();
    let doc = serde_json::json!({
        "format": "deep_sched.policy", "version": 1, "interval_ms": 2000,
        "agent": {"upstreams": [
            {"name": "a", "peers": &peers[0..3]}, {"name": "b", "peers": &peers[3..6]}, {"name": "c", "peers": &peers[6..9]}]},
        "features": (0..D).map(|i| serde_json::json!({"upstream": i % 3, "peer": (i / 3) % 3, "metric": "latency_p95_ms", "transform": "log1p"})).collect::<Vec<_>>(),
        "standardization": {"mean": vec![0.0; D], "std": vec![1.0; D]},
        "gmm": {"covariance": "full", "weights": w,
                "means": m,
                "covariances": cov.iter().map(|c| c.chunks(D).map(|r| r.to_vec()).collect::<Vec<_>>()).collect::<Vec<_>>()},
        "actions": (0..27).map(|a| serde_json::json!({"weights": [[1 + a % 3, 1, 1], [1, 1 + a % 5, 1], [1, 1, 1 + a % 7]]})).collect::<Vec<_>>(),
        "table": (0..K).collect::<Vec<_>>(), "default_action": 0, "ood_log_likelihood": -500.0,
    })
    .to_string();
    c.bench_function("policy_load_k27_d27_full", |b| {
        b.iter(|| Policy::from_json_str(black_box(&doc), "bench").unwrap())
    });
}

criterion_group!(
    benches,
    bench_choose,
    bench_pick_at_scale,
    bench_hash,
    bench_free,
    bench_classify,
    bench_policy_load
);
criterion_main!(benches);
