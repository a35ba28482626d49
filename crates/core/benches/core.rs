//! Hot-path costs: one peer choice (per request) and one state
//! classification (per interval), plus loading a policy (per reload).
//!   cargo bench -p deep-sched-core --bench core

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use deep_sched_core::choose::{decayed_latency, p2c, PeerLoad};
use deep_sched_core::counters::latency_bucket;
use deep_sched_core::gmm::{CovarianceKind, Gmm};
use deep_sched_core::policy::Policy;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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

criterion_group!(benches, bench_choose, bench_classify, bench_policy_load);
criterion_main!(benches);
