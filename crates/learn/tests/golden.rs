//! Golden inputs: a committed sample log (`tests/data/samples.jsonl`, four
//! records as the module writes them) and the vts snapshots
//! (`tests/data/vts.jsonl`) in both of vts's file layouts. The readers'
//! output is checked against an independent parse of the same JSON.

use std::path::PathBuf;

use deep_sched_learn::learn::raw_features;
use deep_sched_learn::reader::{read_samples, read_vts, Observation};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn golden_sample_log_reads_as_written() {
    let path = data("samples.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut obs: Vec<Observation> = Vec::new();
    let (shape, stats) = read_samples(std::slice::from_ref(&path), false, |o| obs.push(o)).unwrap();
    assert_eq!((stats.records, stats.skipped), (docs.len(), 0));
    assert_eq!(obs.len(), docs.len());
    let peers: Vec<&str> = docs[0]["upstreams"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(shape.upstreams[0].peers, peers);
    for (i, (o, doc)) in obs.iter().zip(&docs).enumerate() {
        assert_eq!(o.origin, format!("{}:{}", path.display(), i + 1));
        assert_eq!(o.time_ms, doc["time_ms"].as_u64().unwrap());
        assert_eq!(o.interval_ms, doc["interval_ms"].as_u64().unwrap());
        for (u, up) in doc["upstreams"].as_array().unwrap().iter().enumerate() {
            for (p, peer) in up["peers"].as_array().unwrap().iter().enumerate() {
                let c = &o.deltas[u][p];
                assert_eq!(c.requests, peer["requests"].as_u64().unwrap());
                assert_eq!(c.in_bytes, peer["in_bytes"].as_u64().unwrap());
                assert_eq!(c.out_bytes, peer["out_bytes"].as_u64().unwrap());
                assert_eq!(c.response_msec, peer["response_msec"].as_u64().unwrap());
                assert_eq!(c.failures, peer["failures"].as_u64().unwrap());
                assert_eq!(c.responses.to_vec(), u64s(&peer["responses"]));
                assert_eq!(c.latency_hist.to_vec(), u64s(&peer["latency_hist"]));
                assert_eq!(c.inflight, peer["inflight"].as_u64().unwrap());
                assert_eq!(
                    u64::from(o.weights_in_force[u][p]),
                    peer["weight"].as_u64().unwrap()
                );
            }
        }
        let next: Vec<Vec<u64>> = doc["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(u64s)
            .collect();
        let got: Vec<Vec<u64>> = o
            .next_weights
            .as_ref()
            .unwrap()
            .iter()
            .map(|w| w.iter().map(|x| u64::from(*x)).collect())
            .collect();
        assert_eq!(got, next, "record {}", i + 1);
        // The learner's features are the ones the module logged.
        let logged: Vec<f64> = doc["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let (mine, _) = raw_features(o);
        assert_eq!(mine.len(), logged.len());
        for (a, b) in mine.iter().zip(&logged) {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "record {}: {mine:?} vs {logged:?}",
                i + 1
            );
        }
    }
}

#[test]
fn vts_lines_and_vts_array_read_the_same() {
    let lines = data("vts.jsonl");
    let docs: Vec<Value> = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("vts.json");
    std::fs::write(&array, serde_json::to_string_pretty(&docs).unwrap()).unwrap();
    let read = |p: &PathBuf| {
        let mut obs = Vec::new();
        let (shape, stats) = read_vts(std::slice::from_ref(p), false, |o| obs.push(o)).unwrap();
        (shape, stats, obs)
    };
    let (shape_l, stats_l, obs_l) = read(&lines);
    let (shape_a, stats_a, obs_a) = read(&array);
    assert_eq!(shape_l, shape_a);
    assert_eq!(stats_l, stats_a);
    assert_eq!(obs_l.len(), docs.len() - 1);
    for (a, b) in obs_l.iter().zip(&obs_a) {
        assert_eq!(a.deltas, b.deltas);
        assert_eq!(a.weights_in_force, b.weights_in_force);
        assert_eq!(a.next_weights, b.next_weights);
        assert_eq!(a.interval_ms, b.interval_ms);
    }
    // Each interval's requests are the difference of consecutive snapshots.
    for (t, o) in obs_l.iter().enumerate() {
        let peers = |d: &Value| -> Vec<u64> {
            d["upstreamZones"]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["requestCounter"].as_u64().unwrap())
                .collect()
        };
        let (before, after) = (peers(&docs[t]), peers(&docs[t + 1]));
        let got: Vec<u64> = o.deltas[0].iter().map(|c| c.requests).collect();
        let want: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(got, want, "interval {}", t + 1);
    }
}
